package integration

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/opsbot/opsbot/integration/harness"
)

// Skill configuration reloads without a restart: by an admin's !reload and
// by SIGHUP; a change that needs a restart is refused and named.
func TestReloadSkills(t *testing.T) {
	bots := `
  - localpart: opsbot
    skills: [ping, help, echo, admin]
`
	w := newWorld(t, "sqlite", bots, "permissions:\n  admins: ['@alice:localhost']\n")
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)
	edit := func(old, new string) {
		t.Helper()
		data, err := os.ReadFile(w.Bot.CfgPath)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), old) {
			t.Fatalf("config lacks %q", old)
		}
		if err := os.WriteFile(w.Bot.CfgPath, []byte(strings.Replace(string(data), old, new, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if ev := ask(t, alice, room, "!note list", botID); !strings.Contains(ev.Body(), "Unknown command !note") {
		t.Fatalf("before reload: %s", ev)
	}
	edit("skills: [ping, help, echo, admin]", "skills: [ping, help, echo, admin, notes]")
	if ev := ask(t, alice, room, "!reload", botID); !strings.HasPrefix(ev.Body(), "Reloaded:") || !strings.Contains(ev.Body(), "notes") {
		t.Fatalf("!reload: %s", ev)
	}
	if ev := ask(t, alice, room, "!note list", botID); ev.Body() != "No notes in this room." {
		t.Fatalf("after reload: %s", ev)
	}

	// SIGHUP does the same: here it brings a stricter echo setting.
	edit("skills: [ping, help, echo, admin, notes]", "skills: [ping, help, echo, admin, notes]\nskills:\n  echo: {max_length: 3}")
	if err := w.Bot.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	w.Bot.WaitForLog(t, wait, "Reloaded on SIGHUP")
	alice.SendText(t, room, "!echo longer")
	alice.WaitForMessage(t, room, wait, harness.All(harness.From(botID), harness.BodyContains("longer than 3 characters")))

	// A change that needs a restart is refused, and the old skills stay.
	edit("  listen: 127.0.0.1:", "  listen: 0.0.0.0:")
	if ev := ask(t, alice, room, "!reload", botID); !strings.Contains(ev.Body(), "appservice changed: that needs a restart") {
		t.Fatalf("refused reload: %s", ev)
	}
	if ev := ask(t, alice, room, "!ping", botID); ev.Body() != "pong" {
		t.Fatalf("after a refused reload: %s", ev)
	}
}
