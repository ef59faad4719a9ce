package stages

import (
	"context"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Describer publishes a bot's command descriptions into a room
// (appservice/describe), in the background: Request does not wait.
type Describer interface {
	Request(room id.RoomID, bot id.UserID)
}

// Describe publishes command descriptions when a bot joins a room, and when
// a room's power levels change (the bot may have been given, or have lost,
// the power to publish them).
type Describe struct {
	describer Describer
}

// NewDescribe returns the describe stage.
func NewDescribe(d Describer) *Describe { return &Describe{describer: d} }

func (*Describe) Name() string { return "describe" }

func (*Describe) Handles() []event.Type {
	return []event.Type{event.StateMember, event.StatePowerLevels}
}

func (d *Describe) Run(ctx context.Context, ev *Event) Result {
	evt := ev.Evt
	for _, bot := range ev.RoomBots {
		if evt.Type == event.StateMember {
			m, ok := evt.Content.Parsed.(*event.MemberEventContent)
			if !ok || evt.StateKey == nil || id.UserID(*evt.StateKey) != bot || m.Membership != event.MembershipJoin {
				continue
			}
		}
		d.describer.Request(evt.RoomID, bot)
	}
	return Next
}
