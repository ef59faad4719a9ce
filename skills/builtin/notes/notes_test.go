package notes_test

import (
	"strings"
	"testing"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/help"
	"github.com/opsbot/opsbot/skills/builtin/notes"
	"github.com/opsbot/opsbot/skills/skilltest"
)

func TestNotes(t *testing.T) {
	h := skilltest.New(t, []skills.Skill{notes.New(), help.New()}, map[string]string{"notes": "max_notes: 2\nmax_length: 12"})
	steps := []struct{ say, want string }{
		{"!note list", "No notes in this room."},
		{"!note add deploy web", "Noted (1)."},
		{"!note add rotate keys", "Noted (2)."},
		{"!note add third", "This room already has 2 notes; forget some first."},
		{"!note add this one is far too long", "A note can be at most 12 characters."},
		{"!note list", "1. deploy web\n2. rotate keys"},
		{"!note forget 3", `There is no note "3"; !note list shows their numbers.`},
		{"!note forget 1", "Forgot note 1."},
		{"!note list", "1. rotate keys"},
		{"!note", "Usage: !note add <text...> | !note list | !note forget <n:integer> | !note clear"},
		{"!note clear", "Cleared this room's notes."},
		{"!note list", "No notes in this room."},
	}
	for _, s := range steps {
		if got := strings.Join(h.Say(s.say), "|"); got != s.want {
			t.Fatalf("%s: got %q, want %q", s.say, got, s.want)
		}
	}
	if got := h.Say("!help")[0]; !strings.Contains(got, "!note add <text...> — keep a note for this room") || !strings.Contains(got, "!note clear") {
		t.Fatalf("help: %q", got)
	}
}
