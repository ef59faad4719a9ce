package accounts

import (
	"context"
	"errors"
	"fmt"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store"
)

// Check says whether a client-mode bot can log in, without logging in (a
// login would make a device): the configured or stored token is asked
// /whoami, else the homeserver must offer password login. homeserverURL
// is the client-server API; stored is the bot's stored login, or nil,
// its token sealed with pickleKey.
func Check(ctx context.Context, homeserverURL string, bot id.UserID, b config.Bot, stored *store.ClientSession, pickleKey []byte) (string, error) {
	cli, err := mautrix.NewClient(homeserverURL, bot, "")
	if err != nil {
		return "", err
	}
	cli.DefaultHTTPRetries = 0
	token, source := b.Account.AccessToken, "the configured access token"
	if token == "" && stored != nil {
		if token, err = openToken(pickleKey, stored.AccessToken); err != nil {
			return "", err
		}
		source = "its stored login"
	}
	if token != "" {
		cli.AccessToken = token
		device, err := tokenDevice(ctx, cli, source)
		switch {
		case err == nil:
			return fmt.Sprintf("%s works (device %s)", source, device), nil
		case errors.Is(err, errPermanent):
			return "", err
		case !errors.Is(err, mautrix.MUnknownToken):
			return "", fmt.Errorf("checking %s (GET /account/whoami): %w", source, err)
		case b.Account.Password == "":
			return "", fmt.Errorf("the homeserver does not know %s (M_UNKNOWN_TOKEN) and there is no password to log in again with", source)
		}
		cli.AccessToken = ""
	}
	if err := offersPassword(ctx, cli, b); err != nil {
		return "", err
	}
	return "the homeserver offers password login; opsbot logs in at its first start and keeps that device", nil
}

// offersPassword fails, saying what to do instead, if the homeserver does
// not take passwords at /login (next-generation auth without them).
func offersPassword(ctx context.Context, cli *mautrix.Client, b config.Bot) error {
	flows, err := cli.GetLoginFlows(ctx)
	if err != nil {
		return fmt.Errorf("asking the homeserver how to log in (GET /login): %w", err)
	}
	if !flows.HasFlow(mautrix.AuthTypePassword) {
		return fmt.Errorf("%w: the homeserver does not offer password login (it offers %v); with next-generation auth (MAS) password login must be "+
			"enabled in MAS, or give the bot an access token instead (account.access_token, %sACCESS_TOKEN; docs/homeservers.md says how to get one)",
			errPermanent, flowTypes(flows), b.EnvPrefix())
	}
	return nil
}
