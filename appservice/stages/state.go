package stages

import (
	"context"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// State keeps the room state store up to date: members, power levels,
// encryption, everything later stages and the outbox ask it.
type State struct {
	store mautrix.StateStore
}

// NewState returns the state stage, updating store.
func NewState(store mautrix.StateStore) *State { return &State{store: store} }

func (*State) Name() string { return "state" }

// Handles is nil: the store learns every state event.
func (*State) Handles() []event.Type { return nil }

func (s *State) Run(ctx context.Context, ev *Event) Result {
	if ev.Evt.StateKey != nil {
		mautrix.UpdateStateStore(ctx, s.store, ev.Evt)
	}
	return Next
}
