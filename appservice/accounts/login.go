package accounts

import (
	"context"
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/skills/retry"
)

// Login logs every client-mode bot in, or resumes its stored login: a bot
// logs in with its password only the first time, or when its stored token
// stopped working, and always asks for the device it had, so its
// encryption keys stay valid and people need not verify it again.
// Homeserver outages are waited out; a refused login is an error that says
// what to change.
func (a *Accounts) Login(ctx context.Context) error {
	for _, bot := range a.order {
		cb := a.clients[bot]
		log := a.opts.Log.With().Stringer("bot", bot).Logger()
		var how string
		err := retry.Do(ctx, retry.Policy{
			Min: time.Second, Max: 30 * time.Second,
			Notify: retry.Every(5, func(attempt int, err error, _ time.Duration) {
				log.Warn().Err(err).Int("attempt", attempt).Msg("Could not log the bot in yet; retrying")
			}),
			Classify: func(err error) (bool, time.Duration) { return isTransient(err), 0 },
		}, func() (err error) {
			how, err = a.login(ctx, cb)
			return err
		})
		if err != nil {
			return fmt.Errorf("bots[%d] (%s, client mode): %w", cb.index, bot, unwrapRetry(err))
		}
		log.Info().Stringer("device_id", cb.client.DeviceID).Str("how", how).Msg("Client-mode bot logged in")
	}
	return nil
}

// login brings one bot's client to a working token and device, and says how.
func (a *Accounts) login(ctx context.Context, cb *clientBot) (string, error) {
	acc, cli := cb.cfg.Account, cb.client
	stored, err := a.opts.Sessions.ClientSession(ctx, cli.UserID)
	if err != nil {
		return "", err
	}
	if acc.AccessToken != "" {
		err := a.useToken(ctx, cb, acc.AccessToken, fmt.Sprintf("the access token (account.access_token, %sACCESS_TOKEN)", cb.cfg.EnvPrefix()), stored)
		switch {
		case err == nil:
			return "the configured access token", nil
		case errors.Is(err, mautrix.MUnknownToken) && acc.Password != "":
			a.opts.Log.Warn().Stringer("bot", cli.UserID).Msg("The configured access token is not valid (any more); logging in with the password")
		case errors.Is(err, mautrix.MUnknownToken):
			return "", fmt.Errorf("%w: the homeserver does not know the configured access token (M_UNKNOWN_TOKEN): give a current one in account.access_token (%sACCESS_TOKEN), or a password", errPermanent, cb.cfg.EnvPrefix())
		default:
			return "", err
		}
	} else if stored != nil && stored.AccessToken != "" {
		token, err := openToken(a.opts.PickleKey, stored.AccessToken)
		if err != nil {
			return "", fmt.Errorf("%w: %w", errPermanent, err)
		}
		err = a.useToken(ctx, cb, token, "its stored login", stored)
		if err == nil {
			return "its stored login", nil
		}
		if !errors.Is(err, mautrix.MUnknownToken) {
			return "", err
		}
		a.opts.Log.Info().Stringer("bot", cli.UserID).Msg("The stored login is not valid any more (logged out, or the device was removed); logging in again")
	}
	var device id.DeviceID
	if stored != nil {
		device = stored.DeviceID
	}
	if err := a.passwordLogin(ctx, cb, device); err != nil {
		return "", err
	}
	if device != "" {
		return "password, same device", nil
	}
	return "password, new device", nil
}

// useToken checks a token (source names it) with tokenDevice and, if it
// is the bot's and names a device, makes it the client's and stores it.
func (a *Accounts) useToken(ctx context.Context, cb *clientBot, token, source string, stored *store.ClientSession) error {
	cli := cb.client
	cli.AccessToken, cli.DeviceID = token, ""
	device, err := tokenDevice(ctx, cli, source)
	if err != nil {
		cli.AccessToken = ""
		return err
	}
	cli.DeviceID = device
	if stored != nil && stored.DeviceID == device {
		if same, err := openToken(a.opts.PickleKey, stored.AccessToken); err == nil && same == token {
			return nil
		}
	}
	return a.saveLogin(ctx, cli.UserID, device, token)
}

// tokenDevice asks /whoami about the token cli holds (source names it):
// it must be the bot's, and name the device opsbot keeps its keys for.
func tokenDevice(ctx context.Context, cli *mautrix.Client, source string) (id.DeviceID, error) {
	who, err := cli.Whoami(ctx)
	switch {
	case err != nil:
		return "", err
	case who.UserID != cli.UserID:
		return "", fmt.Errorf("%w: %s belongs to %s, not to this bot", errPermanent, source, who.UserID)
	case who.DeviceID == "":
		return "", fmt.Errorf("%w: %s has no device (the homeserver's /whoami names none); opsbot needs one for its encryption keys: use a token made by a login", errPermanent, source)
	}
	return who.DeviceID, nil
}

// passwordLogin logs in with the bot's password, asking for device (or a
// new one), and stores the login.
func (a *Accounts) passwordLogin(ctx context.Context, cb *clientBot, device id.DeviceID) error {
	cli := cb.client
	cli.AccessToken, cli.DeviceID = "", ""
	if cb.cfg.Account.Password == "" {
		return fmt.Errorf("%w: the bot has no password to log in with (account.password, %sPASSWORD)", errPermanent, cb.cfg.EnvPrefix())
	}
	if err := offersPassword(ctx, cli, cb.cfg); err != nil {
		return err
	}
	localpart, _, _ := cli.UserID.Parse()
	resp, err := cli.Login(ctx, &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypePassword,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:                 cb.cfg.Account.Password,
		DeviceID:                 device,
		InitialDeviceDisplayName: "opsbot (" + localpart + ")",
		StoreCredentials:         true,
	})
	switch {
	case errors.Is(err, mautrix.MForbidden):
		return fmt.Errorf("%w: the homeserver refused the password (M_FORBIDDEN): check account.password (%sPASSWORD): %w", errPermanent, cb.cfg.EnvPrefix(), err)
	case errors.Is(err, mautrix.MUserDeactivated):
		return fmt.Errorf("%w: the account is deactivated (M_USER_DEACTIVATED); a client-mode bot needs a live account: %w", errPermanent, err)
	case err != nil:
		return fmt.Errorf("password login: %w", err)
	}
	if device != "" && resp.DeviceID != device {
		return fmt.Errorf("%w: asked to log in with device %s and the homeserver gave %s", errPermanent, device, resp.DeviceID)
	}
	return a.saveLogin(ctx, cli.UserID, resp.DeviceID, resp.AccessToken)
}

// saveLogin stores a login, its token sealed with the pickle key.
func (a *Accounts) saveLogin(ctx context.Context, bot id.UserID, device id.DeviceID, token string) error {
	sealed, err := sealToken(a.opts.PickleKey, token)
	if err != nil {
		return err
	}
	return a.opts.Sessions.SaveLogin(ctx, bot, device, sealed)
}

// errPermanent marks a login failure that waiting will not mend.
var errPermanent = errors.New("cannot log in")

// isTransient reports whether a login failure may pass: the homeserver is
// down or busy, not refusing.
func isTransient(err error) bool {
	if errors.Is(err, errPermanent) || errors.Is(err, context.Canceled) {
		return false
	}
	var httpErr mautrix.HTTPError
	if errors.As(err, &httpErr) && httpErr.Response != nil {
		code := httpErr.Response.StatusCode
		return code == 429 || code >= 500
	}
	return true // no answer at all: the network or the homeserver is down
}

func unwrapRetry(err error) error {
	var g *retry.Error
	if errors.As(err, &g) {
		return g.Last
	}
	return err
}

func flowTypes(flows *mautrix.RespLoginFlows) []string {
	out := make([]string, len(flows.Flows))
	for i, f := range flows.Flows {
		out[i] = string(f.Type)
	}
	return out
}
