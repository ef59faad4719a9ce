// Package appservice wires opsbot together: config, store, the mautrix
// appservice client side, the bot manager, the skills engine, the pipeline,
// intake and health, behind one Service with a Run method.
//
// Data flows one way: intake records a pushed transaction in the inbox and
// acknowledges it; the pipeline takes each event, updates the state store,
// lets the bot manager handle membership, and routes it to the skills of the
// bots in the room; skills act through the outbox.
package appservice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	mas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"opsbot/appservice/bots"
	"opsbot/appservice/config"
	"opsbot/appservice/discovery"
	"opsbot/appservice/e2ee"
	"opsbot/appservice/health"
	"opsbot/appservice/identity"
	"opsbot/appservice/intake"
	"opsbot/appservice/leader"
	"opsbot/appservice/metrics"
	"opsbot/appservice/outbox"
	"opsbot/appservice/pipeline"
	"opsbot/appservice/statememory"
	"opsbot/appservice/store"
	"opsbot/appservice/verification"
	"opsbot/skills"
)

// MaxBacklog is how many recorded-but-unhandled events make intake ask the
// homeserver to slow down.
const MaxBacklog = 50_000

// Service is a running opsbot.
type Service struct {
	Cfg      *config.Config
	Log      zerolog.Logger
	Store    *store.Store
	AS       *mas.AppService
	Bots     *bots.Manager
	Outbox   *outbox.Outbox
	Pipeline *pipeline.Pipeline
	// E2EE is nil when encryption.enabled is false; Identity too, and when
	// encryption.cross_signing is false.
	E2EE         *e2ee.Manager
	Identity     *identity.Manager
	Verification *verification.Manager
	Metrics      *metrics.Metrics

	warnEncrypted sync.Once
	// accepting is set while this process is the leader and records
	// transactions (it is then ready); running once everything is started
	// and events are handled.
	accepting atomic.Bool
	running   atomic.Bool
	started   time.Time
	version   string
	// versions is the homeserver's /versions answer at start-up.
	versions *mautrix.RespVersions

	// engine is swapped by Reload; handlers in flight finish on the old one.
	engine    atomic.Pointer[skills.Engine]
	skillsFor func(*config.Config) []skills.Skill
	memory    skills.MemoryStore
	// ConfigPath is re-read by Reload.
	ConfigPath string
	// stopSchedules stops the cron jobs of the current engine.
	reloadMu      sync.Mutex
	stopSchedules context.CancelFunc
	workCtx       context.Context
}

// New builds a service without touching the network or the database, so
// that every config error (unknown skill, bad regex, bad skill settings)
// refuses start-up before anything happens.
//
// skillsFor returns the skills available for a config (built-in and
// external ones); it is called again on every reload.
func New(cfg *config.Config, log zerolog.Logger, skillsFor func(*config.Config) []skills.Skill, version string) (*Service, error) {
	s := &Service{Cfg: cfg, Log: log, started: time.Now(), version: version}
	s.Metrics = metrics.New(version, func() int64 {
		if s.Pipeline == nil {
			return 0
		}
		return s.Pipeline.Backlog()
	})
	s.Metrics.ReadyFrom(s.accepting.Load)
	var err error
	s.Store, err = store.Open(cfg.Database, log)
	if err != nil {
		return nil, err
	}
	s.AS, err = mas.CreateFull(mas.CreateOpts{
		Registration:     cfg.Registration(),
		HomeserverDomain: cfg.Homeserver.Domain,
		HomeserverURL:    cfg.Homeserver.Address,
		StateStore:       store.NewCachedStateStore(s.Store.DB),
	})
	if err != nil {
		return nil, fmt.Errorf("setting up the appservice client: %w", err)
	}
	s.AS.Log = log.With().Str("component", "mautrix").Logger()
	// The outbox retries with its own policy (retry_after_ms included);
	// mautrix's own retries would multiply with it.
	s.AS.DefaultHTTPRetries = 0
	s.AS.HTTPClient.Timeout = 60 * time.Second
	// Every pipeline worker talks to the homeserver at once: keep a warm
	// connection for each instead of Go's default two (measured: 13-16 new
	// TCP connections per transaction otherwise; docs/performance.md).
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 32
	s.AS.HTTPClient.Transport = transport

	s.Outbox = outbox.New(s.AS, log.With().Str("component", "outbox").Logger())
	s.Outbox.Observe = s.Metrics.ObserveSend
	s.Bots = bots.New(cfg, s.AS, s.Store, log.With().Str("component", "bots").Logger())
	memory := &memoryRouter{db: s.Store, inState: cfg.Memory.InRoomState, state: &statememory.Store{AS: s.AS,
		BotFor: func(ctx context.Context, room id.RoomID) (id.UserID, bool) {
			bots := s.Bots.RoomBots(ctx, room)
			if len(bots) == 0 {
				return "", false
			}
			return bots[0], true
		}}}
	s.Bots.MoveMemory = memory.move
	if cfg.Encryption.Enabled {
		s.Metrics.InitBots(s.Bots.IDs())
		s.E2EE = e2ee.New(e2ee.Options{
			DB:            s.Store.DB,
			StateStore:    s.AS.StateStore.(*store.CachedStateStore),
			HomeserverURL: cfg.Homeserver.Address,
			ASToken:       cfg.AppService.ASToken,
			PickleKey:     []byte(cfg.Encryption.PickleKey),
			Bots:          s.Bots.IDs(),
			Mode:          cfg.Encryption.Mode,
			Sender:        s.BotID(cfg.AppService.SenderLocalpart),
			Features:      s.Store,
			Trust:         cfg.Encryption.Trust,
			MSC4190:       cfg.Encryption.MSC4190,
			DecryptWait:   time.Duration(cfg.Encryption.DecryptWait),
			Log:           log.With().Str("component", "e2ee").Logger(),
			Observe:       s.Metrics.ObserveCrypto,
			OnEphemeral:   s.handleSyncedEphemeral,
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
		s.Outbox.Encryptor = s.E2EE
	}
	s.memory = memory
	s.skillsFor = skillsFor
	engine, err := s.buildEngine(cfg)
	if err != nil {
		s.Store.Close()
		return nil, err
	}
	s.engine.Store(engine)
	s.Pipeline = &pipeline.Pipeline{
		Inbox:      s.Store,
		StateStore: s.AS.StateStore,
		Handler:    s,
		Log:        log.With().Str("component", "pipeline").Logger(),
		Observe:    s.Metrics.ObserveEvent,
		Recover:    outbox.WithRecovery,
	}
	return s, nil
}

// HandleEvent is the pipeline's per-event work after the state store update:
// opsbot's own handling of the types in opsbotHandles, then the skills.
func (s *Service) HandleEvent(ctx context.Context, evt *event.Event) {
	if evt.Type.Class == event.ToDeviceEventType {
		if s.E2EE != nil {
			s.E2EE.HandleToDevice(ctx, evt) // for devices that get their keys in transactions
		}
		return
	}
	if evt.Type == event.StateMember {
		s.Bots.HandleMember(ctx, evt) // before RoomBots: an invite makes a bot join
	}
	s.handleInRoom(ctx, evt, s.Bots.RoomBots(ctx, evt.RoomID))
}

// handleInRoom runs opsbot's own handling, then the skills, for an event of
// a room that roomBots (our bots joined to it) are in.
func (s *Service) handleInRoom(ctx context.Context, evt *event.Event, roomBots []id.UserID) {
	if len(roomBots) == 0 {
		return
	}
	if handle := opsbotHandles[evt.Type]; handle != nil {
		var ok bool
		if evt, ok = handle(s, ctx, evt, roomBots); !ok {
			return
		}
	}
	if s.Verification != nil && s.Verification.HandleRoomEvent(ctx, evt) {
		return // verification protocol, not for the skills
	}
	s.Engine().Handle(ctx, evt, roomBots)
}

// opsbotHandles are the room event types opsbot acts on itself, before the
// skills see them. Each returns the event the skills should get, or false
// to stop. Every type here must be described in docs/events.md (a test
// checks it against skills.Events).
var opsbotHandles = map[event.Type]func(s *Service, ctx context.Context, evt *event.Event, roomBots []id.UserID) (*event.Event, bool){
	event.StateMember:            (*Service).rotateKeysOnChange,
	event.StateHistoryVisibility: (*Service).rotateKeysOnChange,
	event.StateTombstone: func(s *Service, ctx context.Context, evt *event.Event, roomBots []id.UserID) (*event.Event, bool) {
		s.Bots.HandleTombstone(ctx, evt, roomBots)
		return evt, true
	},
	event.EventEncrypted: func(s *Service, ctx context.Context, evt *event.Event, roomBots []id.UserID) (*event.Event, bool) {
		if s.Bots.IsBot(evt.Sender) {
			return nil, false // our own messages: nothing to decrypt or answer
		}
		return s.decrypt(ctx, evt, roomBots)
	},
}

// rotateKeysOnChange tells the bots' encryption machines about membership
// and history visibility changes.
func (s *Service) rotateKeysOnChange(ctx context.Context, evt *event.Event, roomBots []id.UserID) (*event.Event, bool) {
	if s.E2EE != nil {
		s.E2EE.HandleState(ctx, evt, roomBots)
	}
	return evt, true
}

// decrypt decrypts an event for the skills, or logs (and, if configured,
// tells the sender) why it could not.
func (s *Service) decrypt(ctx context.Context, evt *event.Event, roomBots []id.UserID) (*event.Event, bool) {
	log := zerolog.Ctx(ctx)
	if s.E2EE == nil {
		s.warnEncrypted.Do(func() {
			log.Warn().Stringer("room_id", evt.RoomID).Msg("Received an encrypted event, but encryption.enabled is false: bots will not answer in encrypted rooms")
		})
		return nil, false
	}
	decrypted, reason, err := s.E2EE.Decrypt(ctx, evt, roomBots)
	s.Metrics.ObserveDecrypt(roomBots[0], reason)
	if err != nil {
		log.Warn().Err(err).Str("reason", reason).Stringer("sender", evt.Sender).Msg("Could not decrypt event")
		if *s.Cfg.Encryption.ReplyOnFailure {
			switch reason {
			case "no_session":
				s.Engine().Notify(ctx, roomBots[0], evt, "I could not decrypt your message (its key never reached me). Please send it again.")
			case "no_key_delivery":
				s.Engine().Notify(ctx, roomBots[0], evt, "I cannot read encrypted messages on this homeserver yet: it does not deliver my encryption keys. "+
					"Its admin can fix that (opsbot-appservice check says how).")
			}
		}
		return nil, false
	}
	if reason == "late_key" {
		log.Debug().Msg("Decrypted after waiting for the room key")
	}
	return decrypted, true
}

// Run starts opsbot and blocks until ctx is cancelled, then shuts down:
// intake stops first, in-flight handlers get drainTimeout to finish, and
// whatever is left stays in the inbox for the next start.
//
// The listener answers from the start (health, and a retryable 503 for
// transactions), but only the leader handles events: on Postgres several
// replicas may run, and all but one stand by, not ready, until the leader's
// advisory lock is released (see appservice/leader).
func (s *Service) Run(ctx context.Context, drainTimeout time.Duration) error {
	defer s.Store.Close()
	listener, err := net.Listen("tcp", s.Cfg.AppService.Listen)
	if err != nil {
		return fmt.Errorf("appservice.listen: %w", err)
	}
	server := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.Serve(listener) }()
	defer server.Close()
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	if s.Cfg.Metrics.Listen != "" {
		if err := s.Metrics.Serve(workCtx, s.Cfg.Metrics.Listen, s.Log.With().Str("component", "metrics").Logger()); err != nil {
			return fmt.Errorf("metrics.listen: %w", err)
		}
	}

	elector := s.elector()
	lost, err := elector.Acquire(ctx)
	if err != nil {
		if ctx.Err() != nil {
			s.Log.Info().Msg("Stopped while standing by")
			return nil
		}
		return fmt.Errorf("leader election: %w", err)
	}
	defer elector.Release()
	s.Metrics.Leader.Set(1)
	s.Log.Info().Msg("This opsbot is the leader")

	if err := s.start(ctx, workCtx); err != nil {
		if ctx.Err() != nil {
			s.Log.Info().Err(err).Msg("Stopped during start-up")
			return nil
		}
		return err
	}
	s.running.Store(true)
	s.Log.Info().Str("listen", listener.Addr().String()).Str("bots", s.Bots.Describe()).Msg("opsbot is running")

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("HTTP listener: %w", err)
	case err := <-lost:
		// Another replica may already be the leader: stop at once rather than
		// drain, so that two processes never handle events or write crypto
		// state together. Unhandled events stay in the inbox for it.
		s.accepting.Store(false)
		s.running.Store(false)
		s.Metrics.Leader.Set(0)
		s.Log.Error().Err(err).Msg("Lost leadership; stopping")
		stopWork()
		return fmt.Errorf("lost leadership: %w", err)
	}
	s.Log.Info().Msg("Shutting down: no new transactions; finishing events in progress")
	s.accepting.Store(false)
	s.running.Store(false)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = server.Shutdown(shutdownCtx)
	drained := make(chan struct{})
	go func() {
		for s.Pipeline.Backlog() > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
		s.Log.Warn().Int64("left", s.Pipeline.Backlog()).Msg("Drain timeout: unhandled events stay in the inbox for the next start")
	}
	stopWork()
	s.Pipeline.Wait()
	if s.E2EE != nil {
		s.E2EE.Wait()
	}
	s.Log.Info().Msg("Stopped")
	return nil
}

// start brings the leader up: schema, homeserver, bots; then it records
// transactions (and says it is ready) while the encryption devices start,
// and then the pipeline handles events, first what an earlier leader left.
func (s *Service) start(ctx, workCtx context.Context) error {
	if err := s.Store.Upgrade(ctx); err != nil {
		return err
	}
	if err := s.AS.StateStore.(*store.CachedStateStore).Upgrade(ctx); err != nil {
		return fmt.Errorf("migrating the state store: %w", err)
	}
	s.Log.Info().Str("type", s.Cfg.Database.Type).Msg("Database ready")
	if err := s.waitForHomeserver(ctx); err != nil {
		return err
	}
	if err := s.Bots.Start(ctx); err != nil {
		return err
	}
	if err := s.Pipeline.Start(workCtx); err != nil {
		return fmt.Errorf("resuming unhandled events: %w", err)
	}
	// Transactions are recorded from now on, but handled only once the
	// devices are up: key delivery is found out from what they carry.
	s.accepting.Store(true)
	if s.E2EE != nil {
		if err := s.startEncryption(ctx, workCtx); err != nil {
			return err
		}
	}
	s.Pipeline.Open()
	go s.pruneLoop(workCtx)
	s.workCtx = workCtx
	s.reloadMu.Lock()
	s.startSchedules(s.Engine())
	s.reloadMu.Unlock()
	return nil
}

// elector picks leader election for the database: an advisory lock on
// Postgres, none on SQLite (one process).
func (s *Service) elector() leader.Elector {
	if s.Cfg.Database.Type != "postgres" {
		return leader.Always{}
	}
	return &leader.Postgres{DB: s.Store.DB.RawDB, Key: leader.KeyFor(s.Cfg.AppService.ID),
		Log: s.Log.With().Str("component", "leader").Logger()}
}

// Handler returns the HTTP handler of the appservice listener.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	(&intake.Handler{
		HSToken:      s.Cfg.AppService.HSToken,
		MaxBodyBytes: s.Cfg.AppService.MaxBodyBytes,
		Store:        s.Store,
		Deliver:      s.Pipeline.Deliver,
		IsOurUser:    s.Bots.IsBot,
		Overloaded:   func() bool { return s.Pipeline.Backlog() > MaxBacklog },
		Standby:      func() bool { return !s.accepting.Load() },
		DeviceInfo:   s.deviceInfoHandler(),
		KeysSeen:     s.keysSeen(),
		Log:          s.Log.With().Str("component", "intake").Logger(),
		Observe:      func(outcome string, _ int) { s.Metrics.Transactions.WithLabelValues(outcome).Inc() },
	}).Register(mux)
	mux.Handle("/skills/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.Engine().WebhookHandler(s.running.Load).ServeHTTP(w, r)
	}))
	(&health.Checker{
		CacheFor: 5 * time.Second,
		Gate: func() error {
			if !s.accepting.Load() {
				return errors.New("standing by: another opsbot is the leader, or start-up is not finished")
			}
			return nil
		},
		Log: s.Log.With().Str("component", "health").Logger(),
		Checks: []health.Check{
			{Name: "database", Run: s.Store.Ping},
			{Name: "homeserver", Run: func(ctx context.Context) error {
				_, err := s.AS.BotClient().Versions(ctx)
				return err
			}},
		},
	}).Register(mux)
	return mux
}

// waitForHomeserver blocks until /versions answers, logging while it waits,
// so that opsbot can start before its homeserver (as in a Kubernetes pod).
func (s *Service) waitForHomeserver(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		versions, err := s.AS.BotClient().Versions(cctx)
		cancel()
		if err == nil {
			s.versions = versions
			s.Log.Info().Str("homeserver", s.Cfg.Homeserver.Address).Strs("versions", versionStrings(versions)).Msg("Homeserver reachable")
			return nil
		}
		if attempt == 1 || attempt%10 == 0 {
			s.Log.Warn().Err(err).Str("homeserver", s.Cfg.Homeserver.Address).Msg("Homeserver not reachable yet; waiting")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("homeserver %s never became reachable: %w", s.Cfg.Homeserver.Address, errors.Join(err, ctx.Err()))
		case <-time.After(time.Second):
		}
	}
}

// DiscoverHomeserver fills in an empty homeserver.address from
// homeserver.domain's /.well-known/matrix/client. It runs before New, so that
// everything that talks to the homeserver is built with the address found.
// Like waitForHomeserver it keeps trying (the homeserver, or the web server
// with the .well-known document, may start after opsbot) until ctx ends.
func DiscoverHomeserver(ctx context.Context, cfg *config.Config, log zerolog.Logger) error {
	if cfg.Homeserver.Address != "" {
		return nil
	}
	domain := cfg.Homeserver.Domain
	client := &http.Client{}
	delay := time.Second
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := discovery.Resolve(cctx, client, domain)
		cancel()
		if err == nil {
			log.Info().Str("domain", domain).Str("well_known", res.WellKnownURL).Str("base_url", res.BaseURL).
				Strs("versions", res.Versions).Msg("Discovered the homeserver through .well-known")
			cfg.Homeserver.Address = res.BaseURL
			return nil
		}
		err = discoveryError(domain, err)
		if attempt == 1 || attempt%10 == 0 {
			log.Warn().Err(err).Int("attempt", attempt).Msg("Homeserver not found through .well-known yet; retrying")
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
}

// discoveryError adds to a discovery failure how to fix it.
func discoveryError(domain string, err error) error {
	return fmt.Errorf("homeserver.address is not set and it could not be discovered: %w; "+
		`set homeserver.address, or serve {"m.homeserver":{"base_url":"https://<client-server API host>"}} at %s`,
		err, discovery.WellKnownURL(domain))
}

func versionStrings(v *mautrix.RespVersions) []string {
	if v == nil {
		return nil
	}
	out := make([]string, 0, len(v.Versions))
	for _, ver := range v.Versions {
		out = append(out, ver.String())
	}
	return out
}

// pruneLoop forgets handled events and old transaction IDs once an hour.
func (s *Service) pruneLoop(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		events, txns, err := s.Store.Prune(ctx, time.Now().Add(-7*24*time.Hour))
		if err != nil && ctx.Err() == nil {
			s.Log.Warn().Err(err).Msg("Pruning the inbox failed")
		} else if events+txns > 0 {
			s.Log.Debug().Int64("events", events).Int64("transactions", txns).Msg("Pruned the inbox")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// BotID returns the user ID of a configured bot localpart.
func (s *Service) BotID(localpart string) id.UserID {
	return id.NewUserID(localpart, s.Cfg.Homeserver.Domain)
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

// handleSyncedEphemeral takes typing notifications and receipts from a bot
// device's /sync (sync mode). Every bot in a room receives them; only the
// first bot's copy is handled.
func (s *Service) handleSyncedEphemeral(ctx context.Context, bot id.UserID, evt *event.Event) {
	bots := s.Bots.RoomBots(ctx, evt.RoomID)
	if len(bots) == 0 || bots[0] != bot {
		return
	}
	start := time.Now()
	s.handleInRoom(ctx, evt, bots)
	s.Metrics.ObserveEvent(evt.Type.Type, time.Since(start))
	s.Log.Debug().Str("component", "pipeline").Stringer("room_id", evt.RoomID).Str("type", evt.Type.Type).Msg("Handled ephemeral event from /sync")
}
