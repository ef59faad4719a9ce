package appservice

import (
	"context"
	"fmt"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/e2ee"
	"github.com/opsbot/opsbot/appservice/identity"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/verification"
)

// newEncryption builds the bots' encryption devices, their identities and
// verification (encryption.enabled).
func (s *Service) newEncryption() {
	cfg, log := s.Cfg, s.Log
	s.Metrics.InitBots(s.Bots.IDs())
	s.E2EE = e2ee.New(e2ee.Options{
		DB:            s.Store.DB,
		StateStore:    s.AS.StateStore.(*store.CachedStateStore),
		HomeserverURL: cfg.Homeserver.Address,
		ASToken:       cfg.AppService.ASToken,
		PickleKey:     []byte(cfg.Encryption.PickleKey),
		Bots:          s.Bots.IDs(),
		ClientBots:    s.Accounts.Clients(),
		Mode:          cfg.Encryption.Mode,
		Sender:        s.BotID(cfg.AppService.SenderLocalpart),
		Features:      s.Store,
		Trust:         cfg.Encryption.Trust,
		MSC4190:       cfg.Encryption.MSC4190,
		DecryptWait:   time.Duration(cfg.Encryption.DecryptWait),
		Log:           log.With().Str("component", "e2ee").Logger(),
		Observe:       s.Metrics.ObserveCrypto,
		OnEphemeral: func(ctx context.Context, bot id.UserID, evt *event.Event) {
			s.Path.HandleSynced(ctx, bot, evt)
		},
		OnOTKCount: func(bot id.UserID, n int) {
			s.Metrics.OneTimeKeys.WithLabelValues(bot.String()).Set(float64(n))
		},
		OnDevice: s.setUpDevice,
		OnKeyDelivery: func(bot id.UserID, ok bool) {
			s.Metrics.KeyDelivery.WithLabelValues(bot.String()).Set(map[bool]float64{true: 1}[ok])
		},
	})
	if *cfg.Encryption.CrossSigning {
		s.Identity = identity.New(identity.Options{
			HomeserverURL:      cfg.Homeserver.Address,
			DendriteAdminToken: cfg.Encryption.DendriteAdminToken,
			Password:           s.Accounts.Password,
			KeyBackup:          *cfg.Encryption.KeyBackup,
			Log:                log.With().Str("component", "identity").Logger(),
			OnBackedUp: func(bot id.UserID, n int) {
				s.Metrics.KeysBackedUp.WithLabelValues(bot.String()).Add(float64(n))
			},
			OnBackupFailed: s.Metrics.ObserveBackupFailure,
		})
	}
	s.Verification = verification.New(verification.Options{
		DB:           s.Store.DB,
		AllowedUsers: cfg.Encryption.Verification.AllowedUsers,
		Timeout:      time.Duration(cfg.Encryption.Verification.Timeout),
		Log:          log.With().Str("component", "verification").Logger(),
		Observe: func(outcome string) {
			s.Metrics.Verifications.WithLabelValues(outcome).Inc()
		},
		OnWaiting: func(n int) { s.Metrics.VerificationsWaiting.Set(float64(n)) },
	})
}

// startEncryption starts the bots' devices and their key delivery.
// setupCtx bounds the start-up; the devices' loops run until runCtx ends.
func (s *Service) startEncryption(setupCtx, runCtx context.Context) error {
	ctx, cancel := context.WithCancel(runCtx)
	stop := context.AfterFunc(setupCtx, cancel) // abandon start-up if asked to stop
	defer stop()
	if err := s.Verification.Init(setupCtx); err != nil {
		return err
	}
	mode, why, err := s.E2EE.Start(ctx, s.versions)
	if err != nil {
		return fmt.Errorf("encryption: %w", err)
	}
	s.Log.Info().Str("mode", mode).Str("why", why).Msg("Encryption key delivery mode")
	go s.Verification.Run(ctx)
	s.Metrics.BotDevices.Set(float64(len(s.E2EE.Bots())))
	return nil
}

// setUpDevice gives a bot device its cross-signed identity and key backup
// and lets people verify it. A bot whose identity cannot be set up keeps
// working unsigned: the log and opsbot_bot_cross_signed say why.
func (s *Service) setUpDevice(ctx context.Context, dev *e2ee.Device) error {
	if s.Identity != nil {
		err := s.Identity.Setup(ctx, dev)
		signed := s.Identity.Status(dev.UserID).CrossSigned
		switch {
		case err != nil && ctx.Err() != nil:
			return ctx.Err() // stopping: the next start finishes the setup
		case err != nil && signed:
			s.Log.Error().Err(err).Stringer("bot", dev.UserID).Msg("The bot's room keys are not backed up")
		case err != nil:
			s.Log.Error().Err(err).Stringer("bot", dev.UserID).Msg("The bot's identity is not cross-signed")
		}
		s.Metrics.CrossSigned.WithLabelValues(dev.UserID.String()).Set(map[bool]float64{true: 1}[signed])
	}
	return s.Verification.Attach(ctx, dev)
}

// deviceInfoHandler routes MSC3202 fields to encryption in appservice mode.
func (s *Service) deviceInfoHandler() func(*mautrix.DeviceLists, map[id.UserID]map[id.DeviceID]mautrix.OTKCount) {
	if s.E2EE == nil {
		return nil
	}
	return func(lists *mautrix.DeviceLists, otks map[id.UserID]map[id.DeviceID]mautrix.OTKCount) {
		// Queued while mode auto is being resolved too: applied for the
		// devices that get their keys in transactions.
		s.E2EE.HandleDeviceInfo(lists, otks)
	}
}

// keysSeen tells encryption what each transaction carried.
func (s *Service) keysSeen() func(toDevice, deviceInfo bool) {
	if s.E2EE == nil {
		return nil
	}
	return s.E2EE.Transactions.Observe
}
