package stages

import (
	"context"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Bots is what membership needs of the bot manager (appservice/bots).
type Bots interface {
	RoomBots
	// HandleMember accepts or declines invites of our bots and leaves rooms
	// nobody else is in.
	HandleMember(ctx context.Context, evt *event.Event)
	// HandleTombstone follows a room upgrade.
	HandleTombstone(ctx context.Context, evt *event.Event, roomBots []id.UserID)
}

// Membership acts on the bots' own membership (an invite makes a bot join),
// finds which bots are in the room, and follows room upgrades. An event of
// a room none of our bots is in goes no further.
type Membership struct {
	bots Bots
}

// NewMembership returns the membership stage.
func NewMembership(bots Bots) *Membership { return &Membership{bots: bots} }

func (*Membership) Name() string { return "membership" }

func (*Membership) Handles() []event.Type {
	return []event.Type{event.StateMember, event.StateTombstone}
}

func (m *Membership) Run(ctx context.Context, ev *Event) Result {
	if ev.Evt.Type == event.StateMember {
		m.bots.HandleMember(ctx, ev.Evt) // before RoomBots: an invite makes a bot join
	}
	ev.RoomBots = m.bots.RoomBots(ctx, ev.Evt.RoomID)
	if len(ev.RoomBots) == 0 {
		return Stop
	}
	if ev.Evt.Type == event.StateTombstone {
		m.bots.HandleTombstone(ctx, ev.Evt, ev.RoomBots)
	}
	return Next
}
