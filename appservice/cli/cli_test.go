package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Run(Options{Version: "dev"}, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestVersionAndUsage(t *testing.T) {
	if code, out, _ := runCLI(t, "version"); code != 0 || !strings.HasPrefix(out, "opsbot-appservice ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, _, errOut := runCLI(t, "frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: %d %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "check", "extra"); code != 2 || !strings.Contains(errOut, "flags go before the command") {
		t.Fatalf("extra args: %d %q", code, errOut)
	}
}

func TestGenerateConfigThenRegistration(t *testing.T) {
	code, cfg, _ := runCLI(t, "generate-config")
	if code != 0 {
		t.Fatal(code)
	}
	path := filepath.Join(t.TempDir(), "opsbot.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	code, reg, errOut := runCLI(t, "-c", path, "generate-registration")
	if code != 0 {
		t.Fatalf("generate-registration: %d %s", code, errOut)
	}
	for _, want := range []string{"id: opsbot", "sender_localpart: opsbot", `^@opsbot:example\.org$`} {
		if !strings.Contains(reg, want) {
			t.Errorf("registration lacks %q:\n%s", want, reg)
		}
	}
	// The registration carries the config's tokens.
	for _, line := range strings.Split(cfg, "\n") {
		if tok, ok := strings.CutPrefix(strings.TrimSpace(line), "as_token: "); ok && !strings.Contains(reg, "as_token: "+tok) {
			t.Errorf("registration does not carry the config's as_token")
		}
	}
}

// generate-config client writes a config with no appservice section that
// is valid once the bot's password is in the environment, and has no
// registration.
func TestGenerateClientConfig(t *testing.T) {
	code, cfg, _ := runCLI(t, "generate-config", "client")
	if code != 0 || strings.Contains(cfg, "appservice:") || strings.Contains(cfg, "as_token") {
		t.Fatalf("generate-config client: %d\n%s", code, cfg)
	}
	path := filepath.Join(t.TempDir(), "opsbot.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCLI(t, "-c", path, "generate-registration"); code != 1 || !strings.Contains(errOut, "OPSBOT_BOT_OPSBOT_PASSWORD") {
		t.Fatalf("without its password the config must be refused, naming the variable: %d %s", code, errOut)
	}
	t.Setenv("OPSBOT_BOT_OPSBOT_PASSWORD", "correct horse battery staple")
	if code, _, errOut := runCLI(t, "-c", path, "generate-registration"); code != 1 || !strings.Contains(errOut, "no registration") {
		t.Fatalf("generate-registration of a client-only config: %d %s", code, errOut)
	}
	if code, _, errOut := runCLI(t, "generate-config", "sideways"); code != 2 || !strings.Contains(errOut, "appservice (the default) or client") {
		t.Fatalf("unknown generate-config mode: %d %s", code, errOut)
	}
}

func TestBadConfigIsNamed(t *testing.T) {
	dir := t.TempDir()
	code, _, errOut := runCLI(t, "-c", filepath.Join(dir, "missing.yaml"))
	if code != 1 || !strings.Contains(errOut, "generate-config >") {
		t.Fatalf("missing config: %d %q", code, errOut)
	}
	path := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(path, []byte("homeserver:\n  domian: x\n"), 0o600)
	code, _, errOut = runCLI(t, "-c", path, "check")
	if code != 1 || !strings.Contains(errOut, "homeserver.domian: unknown key (line 2)") {
		t.Fatalf("bad key: %d %q", code, errOut)
	}
}

// The trust commands on a fresh database: arguments checked and named, an
// empty list, no key yet, a decision on nothing refused, no device to
// replace.
func TestTrustCommands(t *testing.T) {
	_, cfg, _ := runCLI(t, "generate-config")
	dir := t.TempDir()
	cfg = strings.Replace(cfg, "uri: opsbot.db", "uri: "+filepath.Join(dir, "opsbot.db"), 1)
	path := filepath.Join(dir, "opsbot.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args      []string
		code      int
		out, errs string
	}{
		{[]string{"recovery-key"}, 2, "", "recovery-key show"},
		{[]string{"recovery-key", "frob"}, 2, "", `unknown recovery-key command "frob"`},
		{[]string{"recovery-key", "show", "@nobody:example.org"}, 2, "", "@nobody:example.org is not a configured bot"},
		{[]string{"recovery-key", "reset"}, 2, "", "exactly one bot"},
		{[]string{"recovery-key", "show"}, 0, "@opsbot:example.org\t(none yet", ""},
		{[]string{"verification"}, 2, "", "verification list"},
		{[]string{"verification", "confirm"}, 2, "", "verification confirm TRANSACTION_ID"},
		{[]string{"verification", "list"}, 0, "No verification waits", ""},
		{[]string{"verification", "confirm", "abc"}, 1, "", "no pending verification with that transaction ID: abc"},
		{[]string{"device"}, 2, "", "device new @bot:server"},
		{[]string{"device", "new"}, 2, "", "device new @bot:server"},
		{[]string{"device", "new", "@nobody:example.org"}, 2, "", "@nobody:example.org is not a configured bot"},
		{[]string{"device", "new", "@opsbot:example.org"}, 0, "@opsbot:example.org has no device yet", ""},
	} {
		code, out, errOut := runCLI(t, append([]string{"-c", path}, c.args...)...)
		if code != c.code || !strings.Contains(out, c.out) || !strings.Contains(errOut, c.errs) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %d, %q, %q", c.args, code, out, errOut, c.code, c.out, c.errs)
		}
	}
}
