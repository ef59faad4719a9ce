package stages

import (
	"context"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// State keeps the room state store up to date: members, power levels,
// encryption, everything later stages and the outbox ask it.
type State struct {
	Store mautrix.StateStore
}

func (*State) Name() string { return "state" }

// Handles is nil: the store learns every state event.
func (*State) Handles() []event.Type { return nil }

func (s *State) Run(ctx context.Context, ev *Event) Result {
	if ev.Evt.StateKey != nil {
		mautrix.UpdateStateStore(ctx, s.Store, ev.Evt)
	}
	return Next
}
