// Package echo repeats what it is told: "!echo hello" answers "hello". It is
// handy for checking formatting, encryption and permissions end to end.
package echo

import (
	"context"
	"fmt"
	"unicode/utf8"

	"github.com/opsbot/opsbot/skills"
)

// Settings is the skills.echo config section.
type Settings struct {
	// MaxLength caps the echoed text, in characters.
	MaxLength int `yaml:"max_length"`
}

// Skill answers !echo.
type Skill struct{ settings Settings }

// New returns the echo skill.
func New() skills.Skill { return &Skill{} }

// Name is the skill's config name.
func (*Skill) Name() string { return "echo" }

// Setup reads skills.echo and registers !echo.
func (s *Skill) Setup(r *skills.Router, cfg skills.Config) error {
	s.settings = Settings{MaxLength: 1000}
	if err := cfg.Decode(&s.settings); err != nil {
		return err
	}
	if s.settings.MaxLength < 1 {
		return cfg.Errorf("max_length", "must be at least 1, got %d", s.settings.MaxLength)
	}
	r.Command("echo {text...}", s.echo, skills.Help("repeat the text back"), skills.ArgHelp("text", "what to say back"))
	return nil
}

func (s *Skill) echo(ctx context.Context, ev *skills.Event) error {
	text := ev.Arg("text")
	if utf8.RuneCountInString(text) > s.settings.MaxLength {
		_, err := ev.Reply(ctx, fmt.Sprintf("That is longer than %d characters; I will not repeat it.", s.settings.MaxLength))
		return err
	}
	_, err := ev.Respond(ctx, text)
	return err
}
