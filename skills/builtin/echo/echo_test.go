package echo_test

import (
	"strings"
	"testing"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/echo"
	"github.com/opsbot/opsbot/skills/skilltest"
)

func TestEcho(t *testing.T) {
	h := skilltest.New(t, []skills.Skill{echo.New()}, map[string]string{"echo": "max_length: 5"})
	if got := h.Say("!echo hello"); strings.Join(got, "|") != "hello" {
		t.Fatalf("got %q", got)
	}
	if got := h.Say("!echo héllo!"); len(got) != 1 || !strings.Contains(got[0], "longer than 5 characters") {
		t.Fatalf("long text: got %q", got)
	}
	if got := h.Say("!echo"); strings.Join(got, "|") != "Usage: !echo <text...>" {
		t.Fatalf("no text: got %q", got)
	}
}
