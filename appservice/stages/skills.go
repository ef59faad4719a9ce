package stages

import (
	"context"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
)

// Skills hands the event to the skills of every bot in the room. The
// engine is read for each event: a reload swaps it, and events in flight
// finish on the old one.
type Skills struct {
	engine func() *skills.Engine
}

// NewSkills returns the skills stage.
func NewSkills(engine func() *skills.Engine) *Skills { return &Skills{engine: engine} }

func (*Skills) Name() string { return "skills" }

// Handles is nil: skills see every type they registered for.
func (*Skills) Handles() []event.Type { return nil }

func (s *Skills) Run(ctx context.Context, ev *Event) Result {
	s.engine().Handle(ctx, ev.Evt, ev.RoomBots)
	return Next
}

// notify is how stages tell a person something (the skills engine's
// notices, with its rate limits and threading).
func notify(engine func() *skills.Engine, ctx context.Context, bot id.UserID, evt *event.Event, text string) {
	engine().Notify(ctx, bot, evt, text)
}
