package ping_test

import (
	"strings"
	"testing"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/ping"
	"github.com/opsbot/opsbot/skills/skilltest"
)

func TestPing(t *testing.T) {
	h := skilltest.New(t, []skills.Skill{ping.New()}, nil)
	if got := h.Say("!ping"); strings.Join(got, "|") != "pong" {
		t.Fatalf("!ping answered %q", got)
	}
	if got := h.Say("ping"); len(got) != 0 {
		t.Fatalf("plain 'ping' must not trigger, got %q", got)
	}
}
