// Package ping is the smallest useful skill: "!ping" answers "pong", so a
// person can check that a bot is alive and can talk in the room.
package ping

import (
	"context"

	"github.com/opsbot/opsbot/skills"
)

// Skill answers !ping.
type Skill struct{}

// New returns the ping skill.
func New() skills.Skill { return Skill{} }

// Name is the skill's config name.
func (Skill) Name() string { return "ping" }

// Setup registers !ping.
func (Skill) Setup(r *skills.Router, cfg skills.Config) error {
	var settings struct{}
	if err := cfg.Decode(&settings); err != nil {
		return err
	}
	r.Command("ping", pong, skills.Help("check that the bot is alive"))
	return nil
}

func pong(ctx context.Context, ev *skills.Event) error {
	_, err := ev.Reply(ctx, "pong")
	return err
}
