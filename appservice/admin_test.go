package appservice

import (
	"strings"
	"testing"

	"github.com/opsbot/opsbot/appservice/config"
)

// A bot that becomes an ordinary account (or stops being one), or whose
// login changes, needs a restart: a reload would keep the old login.
func TestReloadRefusesAccountChanges(t *testing.T) {
	parse := func(account string) *config.Config {
		t.Helper()
		cfg, err := config.Parse([]byte(`
homeserver: {domain: example.org, address: "http://127.0.0.1:8008"}
bots:
  - localpart: helper
    skills: [ping]
` + account))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	a := parse("    account: {password: one}\n")
	// The same bot in the appservice's namespace.
	appservice := *a
	appservice.Bots = []config.Bot{a.Bots[0]}
	appservice.Bots[0].Account = nil
	for _, tc := range []struct {
		name string
		new  *config.Config
		want string
	}{
		{"same", parse("    account: {password: one}\n"), ""},
		{"new password", parse("    account: {password: two}\n"), "bots[0]"},
		{"a token as well", parse("    account: {password: one, access_token: t}\n"), "bots[0]"},
		{"an appservice bot now", &appservice, "bots[0]"},
	} {
		if got := restartNeeded(a, tc.new); !strings.HasPrefix(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("%s: restartNeeded = %q, want %q", tc.name, got, tc.want)
		}
	}
}
