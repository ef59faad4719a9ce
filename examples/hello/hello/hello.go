// Package hello is a skill written outside opsbot's repository: "!hello"
// greets whoever asks, "!hello Bob" greets Bob, in the words of the
// skills.hello config section.
package hello

import (
	"context"
	"strings"

	"github.com/opsbot/opsbot/skills"
)

// Settings is the skills.hello config section.
type Settings struct {
	// Greeting comes before the name.
	Greeting string `yaml:"greeting"`
}

// Skill answers !hello.
type Skill struct{ settings Settings }

// New returns the hello skill.
func New() skills.Skill { return &Skill{} }

// Name is the skill's name in bots[].skills and skills.<name>.
func (*Skill) Name() string { return "hello" }

// Setup reads skills.hello and registers !hello.
func (s *Skill) Setup(r *skills.Router, cfg skills.Config) error {
	s.settings = Settings{Greeting: "Hello"}
	if err := cfg.Decode(&s.settings); err != nil {
		return err
	}
	if strings.TrimSpace(s.settings.Greeting) == "" {
		return cfg.Errorf("greeting", "must not be empty")
	}
	r.Command("hello {name...?}", s.hello, skills.Help("say hello to you, or to someone"))
	return nil
}

func (s *Skill) hello(ctx context.Context, ev *skills.Event) error {
	name := ev.Arg("name")
	if name == "" {
		name = ev.Sender.Localpart()
	}
	_, err := ev.Respond(ctx, s.settings.Greeting+", "+name+"!")
	return err
}
