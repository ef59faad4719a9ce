package config_test

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opsbot/opsbot/appservice/config"
)

// Placeholder tokens used in registration.example.yaml at the repo root.
const (
	exampleAS = "REPLACE_WITH_as_token_FROM_opsbot.yaml"
	exampleHS = "REPLACE_WITH_hs_token_FROM_opsbot.yaml"
)

func mustParse(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(text))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return cfg
}

func TestExampleIsValid(t *testing.T) {
	cfg := mustParse(t, config.Example())
	if cfg.Homeserver.Domain != "example.org" || len(cfg.Bots) != 1 || cfg.Bots[0].CommandPrefix != "!" {
		t.Fatalf("unexpected example: %+v", cfg)
	}
	if cfg.Database.Type != "sqlite" || cfg.Database.URI != "opsbot.db" {
		t.Fatalf("example database: %+v", cfg.Database)
	}
	a, b := mustParse(t, config.Example()), mustParse(t, config.Example())
	if a.AppService.ASToken == b.AppService.ASToken || a.AppService.ASToken == a.AppService.HSToken {
		t.Fatal("generate-config must make fresh, distinct tokens each time")
	}
}

// The registration example at the repo root must be exactly what
// generate-registration writes for the example config, tokens aside.
func TestRegistrationExampleMatches(t *testing.T) {
	cfg := mustParse(t, config.ExampleWithTokens(exampleAS, exampleHS))
	got, err := cfg.RegistrationYAML()
	if err != nil {
		t.Fatal(err)
	}
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "..", "registration.example.yaml")
	if os.Getenv("OPSBOT_UPDATE_EXAMPLES") == "1" {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != got {
		t.Fatalf("registration.example.yaml is out of date; run OPSBOT_UPDATE_EXAMPLES=1 go test ./appservice/config/\n--- file\n%s\n--- generated\n%s", want, got)
	}
	for _, want := range []string{`regex: ^@opsbot:example\.org$`, "exclusive: true", "receive_ephemeral: true", "de.sorunome.msc2409.push_ephemeral: true", "url: http://127.0.0.1:29333"} {
		if !strings.Contains(got, want) {
			t.Errorf("registration lacks %q", want)
		}
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	base := config.ExampleWithTokens(exampleAS, exampleHS)
	cases := []struct {
		name, old, new, want string
	}{
		{"unknown top-level key", "logging:", "loging:", "loging: unknown key"},
		{"unknown nested key", "  domain: example.org", "  domian: example.org", "homeserver.domian: unknown key"},
		{"unknown bot key", "    displayname: Ops Bot", "    display_name: Ops Bot", "bots[0].display_name: unknown key"},
		{"wrong type", "  max_body_bytes: 16777216", "  max_body_bytes: lots", "appservice.max_body_bytes:"},
		{"bad database type", "  type: sqlite", "  type: mysql", `database.type: "mysql" is not one of sqlite, postgres`},
		{"bad address", "  address: http://127.0.0.1:8008", "  address: 127.0.0.1:8008", "homeserver.address:"},
		{"missing domain", "  domain: example.org", "  domain: \"\"", "homeserver.domain: required"},
		{"bad localpart", "  - localpart: opsbot", "  - localpart: Ops Bot", "bots[0].localpart:"},
		{"bad listen", "  listen: 127.0.0.1:29333", "  listen: nowhere", "appservice.listen:"},
		{"short token", "  as_token: " + exampleAS, "  as_token: short", "appservice.as_token:"},
		{"bad level", "  level: info", "  level: loud", "logging.level:"},
		{"bots not a list", "bots:\n  - localpart: opsbot", "bots: opsbot\nx:\n  - localpart: opsbot", "bots: expected a list"},
		{"duplicate skill", "skills: [ping, help, echo]", "skills: [ping, ping]", `bots[0].skills[1]: skill "ping" listed twice`},
		{"bad inviter", "    users: []", "    users: [alice]", "permissions.invite.users[0]:"},
		{"backup without cross-signing", "  cross_signing: true", "  cross_signing: false", "encryption.key_backup: needs encryption.cross_signing"},
		{"bad verifier", "    allowed_users: []", "    allowed_users: [alice]", "encryption.verification.allowed_users[0]:"},
		{"bad verifier pattern", "    allowed_users: []", `    allowed_users: ["@[:x"]`, "encryption.verification.allowed_users[0]:"},
		{"bad command trust", "  command_trust: all", "  command_trust: x", `encryption.command_trust: "x" must be all, cross-signed or verified`},
		{"bad plain rooms", "  command_trust_plain_rooms: refuse", "  command_trust_plain_rooms: maybe", `encryption.command_trust_plain_rooms: "maybe" must be obey or refuse`},
		{"bad skill command trust", "  skills: {}", "  skills: {ping: {command_trust: sometimes}}", `permissions.skills.ping.command_trust: "sometimes" must be all, cross-signed or verified`},
		{"short verification timeout", "    timeout: 5m", "    timeout: 1s", "encryption.verification.timeout: must be between 10s and 9m"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(base, c.old) {
				t.Fatalf("example lacks %q", c.old)
			}
			_, err := config.Parse([]byte(strings.Replace(base, c.old, c.new, 1)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want error containing %q, got %v", c.want, err)
			}
		})
	}
}

func TestNotYAML(t *testing.T) {
	if _, err := config.Parse([]byte("homeserver: [unclosed")); err == nil || !strings.Contains(err.Error(), "not valid YAML") {
		t.Fatalf("got %v", err)
	}
}

func TestEnvironmentOverridesSecrets(t *testing.T) {
	text := strings.NewReplacer("  as_token: "+exampleAS+"\n", "", "  hs_token: "+exampleHS+"\n", "").Replace(config.ExampleWithTokens(exampleAS, exampleHS))
	if _, err := config.Parse([]byte(text)); err == nil || !strings.Contains(err.Error(), "OPSBOT_AS_TOKEN") {
		t.Fatalf("missing tokens must be reported with the env name, got %v", err)
	}
	t.Setenv("OPSBOT_AS_TOKEN", "as-from-the-environment-123")
	t.Setenv("OPSBOT_HS_TOKEN", "hs-from-the-environment-123")
	t.Setenv("OPSBOT_DATABASE_URI", "/data/opsbot.db")
	cfg := mustParse(t, text)
	if cfg.AppService.ASToken != "as-from-the-environment-123" || cfg.AppService.HSToken != "hs-from-the-environment-123" || cfg.Database.URI != "/data/opsbot.db" {
		t.Fatalf("env not applied: %+v %+v", cfg.AppService, cfg.Database)
	}
}

// Cross-signing and key backup are on by default with encryption; MSC4190
// reaches the registration only when asked for.
func TestTrustDefaults(t *testing.T) {
	cfg := mustParse(t, `
homeserver: {domain: example.org, address: "https://matrix.example.org"}
appservice: {as_token: aaaaaaaaaaaaaaaaaaaa, hs_token: bbbbbbbbbbbbbbbbbbbb}
encryption: {enabled: true, pickle_key: cccccccccccccccccccc}
bots: [{localpart: helper}]
`)
	e := cfg.Encryption
	if e.CommandTrust != "all" || e.CommandTrustPlainRooms != "refuse" {
		t.Fatalf("command trust defaults: %q, %q", e.CommandTrust, e.CommandTrustPlainRooms)
	}
	example := config.ExampleWithTokens(exampleAS, exampleHS)
	_, err := config.Parse([]byte(strings.NewReplacer("  enabled: true", "  enabled: false", "  command_trust: all", "  command_trust: verified").Replace(example)))
	if err == nil || !strings.Contains(err.Error(), `encryption.command_trust: "verified" needs encryption.enabled`) {
		t.Fatalf("command_trust without encryption: %v", err)
	}
	if !*e.CrossSigning || !*e.KeyBackup || len(e.Verification.AllowedUsers) != 0 || time.Duration(e.Verification.Timeout) != 5*time.Minute || e.MSC4190 {
		t.Fatalf("trust defaults: %+v", e)
	}
	if text, _ := cfg.RegistrationYAML(); strings.Contains(text, "msc4190") {
		t.Fatalf("registration mentions MSC4190 without being asked:\n%s", text)
	}
	cfg.Encryption.MSC4190 = true
	if text, _ := cfg.RegistrationYAML(); !strings.Contains(text, "io.element.msc4190: true") {
		t.Fatalf("registration lacks io.element.msc4190:\n%s", text)
	}
	off := mustParse(t, strings.NewReplacer("  cross_signing: true", "  cross_signing: false", "  key_backup: true\n", "").Replace(example))
	if *off.Encryption.KeyBackup {
		t.Fatal("key_backup must follow cross_signing when unset")
	}
	_, err = config.Parse([]byte(strings.NewReplacer("  mode: auto", "  mode: sync", "  msc4190: false", "  msc4190: true").Replace(example)))
	if err == nil || !strings.Contains(err.Error(), "encryption.msc4190: needs encryption.mode appservice") {
		t.Fatalf("msc4190 with sync mode: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	cfg := mustParse(t, `
homeserver: {domain: example.org, address: "https://matrix.example.org"}
appservice: {as_token: aaaaaaaaaaaaaaaaaaaa, hs_token: bbbbbbbbbbbbbbbbbbbb}
bots: [{localpart: helper, skills: [ping]}, {localpart: second}]
`)
	if cfg.AppService.Listen != config.DefaultListen || cfg.AppService.PublicURL != "http://"+config.DefaultListen {
		t.Errorf("listen defaults: %+v", cfg.AppService)
	}
	if cfg.AppService.SenderLocalpart != "helper" || cfg.Database.Type != "sqlite" || cfg.Logging.Level != "info" {
		t.Errorf("defaults: %+v", cfg)
	}
	reg := cfg.Registration()
	if len(reg.Namespaces.UserIDs) != 2 || reg.Namespaces.UserIDs[1].Regex != `^@second:example\.org$` {
		t.Errorf("namespaces: %+v", reg.Namespaces.UserIDs)
	}
	if ids := cfg.BotIDs(); ids[1] != "@second:example.org" {
		t.Errorf("BotIDs: %v", ids)
	}
}

// An external skill's secret comes from the environment like the host's
// own secrets; the list of names --help prints stays the host's fixed ones.
func TestEnvironmentOverridesExternalSecret(t *testing.T) {
	t.Setenv("OPSBOT_SKILL_WEATHER_JS_SECRET", "secret-from-the-environment")
	cfg := mustParse(t, `
homeserver: {domain: example.org, address: "https://matrix.example.org"}
appservice: {as_token: aaaaaaaaaaaaaaaaaaaa, hs_token: bbbbbbbbbbbbbbbbbbbb}
bots: [{localpart: helper, skills: [weather-js]}]
external_skills: [{name: weather-js, url: "http://127.0.0.1:8082", commands: [{pattern: weather}]}]
`)
	if cfg.ExternalSkills[0].Secret != "secret-from-the-environment" {
		t.Fatalf("secret not taken from the environment: %+v", cfg.ExternalSkills[0])
	}
	want := []string{"OPSBOT_AS_TOKEN", "OPSBOT_HS_TOKEN", "OPSBOT_DATABASE_URI", "OPSBOT_PICKLE_KEY", "OPSBOT_HOMESERVER_ADDRESS", "OPSBOT_DENDRITE_ADMIN_TOKEN"}
	if got := config.EnvNames(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("EnvNames() = %v, want %v", got, want)
	}
}
