package help_test

import (
	"strings"
	"testing"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/echo"
	"github.com/opsbot/opsbot/skills/builtin/help"
	"github.com/opsbot/opsbot/skills/builtin/ping"
	"github.com/opsbot/opsbot/skills/skilltest"
)

func TestHelpListsEverySkillsCommands(t *testing.T) {
	h := skilltest.New(t, []skills.Skill{ping.New(), echo.New(), help.New()}, nil)
	got := h.Say("!help")
	want := "Commands:\n!ping — check that the bot is alive\n!echo <text...> — repeat the text back\n!help [command] — list the commands, or explain one"
	if len(got) != 1 || got[0] != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if got := h.Say("!help ping"); strings.Join(got, "") != "!ping — check that the bot is alive" {
		t.Fatalf("got %q", got)
	}
}
