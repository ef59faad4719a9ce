package config_test

import (
	"strings"
	"testing"

	"github.com/opsbot/opsbot/appservice/config"
)

const clientOnly = `
homeserver: {domain: example.org, address: "https://matrix.example.org"}
bots:
  - localpart: ops.bot
    skills: [ping]
    account:
      # password in OPSBOT_BOT_OPS_BOT_PASSWORD
`

// A config whose bots are all ordinary accounts needs no appservice
// section, tokens or registration; an "account:" with nothing under it
// still makes a client-mode bot, which then needs its secret.
func TestClientOnlyConfig(t *testing.T) {
	_, err := config.Parse([]byte(clientOnly))
	if err == nil || !strings.Contains(err.Error(), "bots[0].account") || !strings.Contains(err.Error(), "OPSBOT_BOT_OPS_BOT_PASSWORD") ||
		strings.Contains(err.Error(), "as_token") {
		t.Fatalf("a client-mode bot without its password: %v", err)
	}
	t.Setenv("OPSBOT_BOT_OPS_BOT_PASSWORD", "secret")
	cfg := mustParse(t, clientOnly)
	b := cfg.Bots[0]
	if !b.IsClient() || b.Mode() != "client" || b.Account.Password != "secret" || cfg.HasAppServiceBots() {
		t.Fatalf("parsed %+v (account %+v)", b, b.Account)
	}
	if cfg.AppService.SenderLocalpart != "" {
		t.Errorf("sender_localpart %q with no appservice bot", cfg.AppService.SenderLocalpart)
	}
}

// The bot variables apply to bots the file puts in client mode only; an
// appservice bot next to a client-mode bot stays one, and only it is in
// the registration.
func TestClientAndAppserviceBotsConfig(t *testing.T) {
	base := config.ExampleWithTokens(exampleAS, exampleHS)
	t.Setenv("OPSBOT_BOT_OPSBOT_PASSWORD", "not for an appservice bot")
	t.Setenv("OPSBOT_BOT_HELPER_ACCESS_TOKEN", "syt_token")
	text := strings.Replace(base, "    skills: [ping, help, echo]\n", "    skills: [ping, help, echo]\n  - localpart: helper\n    skills: [echo]\n    account: {}\n", 1)
	cfg := mustParse(t, text)
	if cfg.Bots[0].IsClient() || !cfg.Bots[1].IsClient() || cfg.Bots[1].Account.AccessToken != "syt_token" {
		t.Fatalf("bots: %+v / %+v", cfg.Bots[0], cfg.Bots[1].Account)
	}
	reg, err := cfg.RegistrationYAML()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(reg, "helper") || !strings.Contains(reg, "opsbot") {
		t.Fatalf("the registration must hold the appservice bot only:\n%s", reg)
	}

	// The appservice's own user cannot be an ordinary account.
	bad := strings.Replace(text, "  id: opsbot\n", "  id: opsbot\n  sender_localpart: helper\n", 1)
	if _, err := config.Parse([]byte(bad)); err == nil || !strings.Contains(err.Error(), "sender_localpart") {
		t.Fatalf("client-mode sender: %v", err)
	}
	// Two client-mode bots whose secrets would share variables.
	clash := strings.Replace(text, "    account: {}\n", "    account: {}\n  - localpart: help.er\n    account: {password: x}\n  - localpart: help-er\n    account: {password: y}\n", 1)
	if _, err := config.Parse([]byte(clash)); err == nil || !strings.Contains(err.Error(), "OPSBOT_BOT_HELP_ER_") {
		t.Fatalf("clashing variables: %v", err)
	}
}
