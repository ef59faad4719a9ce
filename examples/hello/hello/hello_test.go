package hello_test

import (
	"strings"
	"testing"

	"example.com/opsbot-hello/hello"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/skilltest"
)

func TestHello(t *testing.T) {
	h := skilltest.New(t, []skills.Skill{hello.New()}, nil)
	if got := strings.Join(h.Say("!hello"), "|"); got != "Hello, alice!" {
		t.Fatalf("!hello: %q", got)
	}
	h = skilltest.New(t, []skills.Skill{hello.New()}, map[string]string{"hello": "greeting: Good morning"})
	if got := strings.Join(h.Say("!hello Bob"), "|"); got != "Good morning, Bob!" {
		t.Fatalf("!hello Bob: %q", got)
	}
	if _, err := skilltest.Setup([]skills.Skill{hello.New()}, map[string]string{"hello": "greting: Hi"}); err == nil ||
		!strings.Contains(err.Error(), "skills.hello.greting: unknown key") {
		t.Fatalf("a misspelt key: %v", err)
	}
}
