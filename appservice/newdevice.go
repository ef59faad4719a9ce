package appservice

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/accounts"
	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/e2ee"
	"github.com/opsbot/opsbot/appservice/store"
)

// A bot gets a new encryption device when the operator asks (`device
// new`): for clients that keep a removed device as gone for good
// (matrix-nio), or after the device's keys leaked. The command records the
// request; the next start, before any device is opened, signs the old
// device out on the homeserver (which deletes it and its keys there) and
// forgets what the database holds of it, so that the start makes a new
// device, which the bot's unchanged identity signs.

// RequestNewDevices records the request for each bot (the command).
func RequestNewDevices(ctx context.Context, cfg *config.Config, bots []id.UserID, stdout io.Writer) error {
	if !cfg.Encryption.Enabled {
		return errors.New("the bots have no encryption devices: encryption.enabled is off")
	}
	st, err := store.Open(cfg.Database, zerolog.Nop())
	if err != nil {
		return err
	}
	defer st.Close()
	for _, bot := range bots {
		device, err := e2ee.RequestNewDevice(ctx, st.DB, bot, []byte(cfg.Encryption.PickleKey))
		switch {
		case err != nil:
			return err
		case device == "":
			fmt.Fprintf(stdout, "%s has no device yet: its first start makes one.\n", bot)
		default:
			fmt.Fprintf(stdout, "%s: at its next start opsbot signs device %s out and gives the bot a new device, signed by the bot's identity "+
				"(people who verified the bot need not verify it again). Restart opsbot to apply it.\n", bot, device)
		}
	}
	return nil
}

// replaceRequestedDevices carries out the requests, at start under the
// term, before the client-mode bots log in and the devices open. A device
// that cannot be signed out stops the start (the request stays, for the
// next one): left on the account, it would keep its keys with nobody
// holding them.
func (s *Service) replaceRequestedDevices(ctx context.Context) error {
	requested, err := e2ee.NewDevicesRequested(ctx, s.Store.DB)
	if err != nil {
		return err
	}
	for _, b := range s.Cfg.Bots {
		bot := s.BotID(b.Localpart)
		if !requested[bot] {
			continue
		}
		log := s.Log.With().Str("component", "e2ee").Stringer("bot", bot).Logger()
		device, gone, why, err := replaceDevice(ctx, s.Cfg, s.Store, s.Cfg.Homeserver.Address, b, bot)
		if err != nil {
			return fmt.Errorf("giving %s a new device as asked (device new): %w", bot, err)
		}
		if gone {
			log.Info().Stringer("device_id", device).Msg("Signed the bot's old device out and forgot it, as asked: the bot gets a new device")
		} else {
			log.Warn().Stringer("device_id", device).Str("why_not_signed_out", why).Msg("Forgot the bot's old device, as asked, without signing it out: the bot gets a new device")
		}
	}
	return nil
}

// replaceDevice signs a bot's device out and forgets it, and says which
// device that was and whether (or why not) it is gone from the homeserver.
func replaceDevice(ctx context.Context, cfg *config.Config, st *store.Store, hsURL string, b config.Bot, bot id.UserID) (device id.DeviceID, gone bool, why string, err error) {
	pickleKey := []byte(cfg.Encryption.PickleKey)
	// A token the pickle key cannot open (the key was lost) cannot sign
	// the device out, but the device can still be forgotten.
	device, token, err := e2ee.StoredDevice(ctx, st.DB, bot, pickleKey)
	unreadable := errors.Is(err, e2ee.ErrTokenUnreadable)
	if err != nil && !unreadable {
		return "", false, "", err
	}
	if b.IsClient() {
		login, err := st.ClientSession(ctx, bot)
		if err != nil {
			return "", false, "", err
		}
		token, unreadable = "", false
		if login != nil {
			device = login.DeviceID
			token, err = accounts.StoredToken(login, pickleKey)
			unreadable = err != nil
		}
	}
	switch {
	case device == "":
		why = "there was none"
	case unreadable:
		why = "its stored access token cannot be read with this pickle key: remove it from the account's sessions yourself"
	default:
		gone, why, err = signOut(ctx, cfg, hsURL, bot, b, device, token)
		if err != nil {
			return device, false, "", fmt.Errorf("signing out device %s: %w", device, err)
		}
	}
	err = st.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := e2ee.ForgetDevice(ctx, st.DB, bot); err != nil {
			return err
		}
		return st.ForgetLogin(ctx, bot)
	})
	return device, gone, why, err
}

// signOut ends the device on the homeserver, which deletes it with its
// keys, or says why it did not. A device the homeserver no longer knows is
// gone already.
func signOut(ctx context.Context, cfg *config.Config, hsURL string, bot id.UserID, b config.Bot, device id.DeviceID, token string) (gone bool, why string, err error) {
	switch {
	case b.IsClient() && b.Account.AccessToken != "":
		return false, "it is the configured access token's: give the bot a token of a new login, and sign the old one out from another session", nil
	case !b.IsClient() && cfg.Encryption.MSC4190:
		cli, err := mautrix.NewClient(hsURL, bot, cfg.AppService.ASToken)
		if err != nil {
			return false, "", err
		}
		cli.SetAppServiceUserID = true
		// (Synapse wants a JSON object as the body, if an empty one.)
		if err := cli.DeleteDevice(ctx, device, &mautrix.ReqDeleteDevice[any]{}); err != nil && !errors.Is(err, mautrix.MNotFound) {
			return false, "", fmt.Errorf("DELETE /devices/%s as the appservice (MSC4190): %w", device, err)
		}
		return true, "", nil
	case token == "":
		return false, "no access token of it is stored: remove it from the account's sessions yourself", nil
	}
	cli, err := mautrix.NewClient(hsURL, bot, token)
	if err != nil {
		return false, "", err
	}
	if _, err := cli.Logout(ctx); err != nil && !errors.Is(err, mautrix.MUnknownToken) {
		return false, "", fmt.Errorf("POST /logout with the device's token: %w", err)
	}
	return true, "", nil
}
