// Package stages is what happens to an event between the inbox and the
// skills, one named stage per file, in this order:
//
//	state        the room state store learns state events
//	membership   invites, joins and leaves of the bots; which bots are in the room; room upgrades
//	crypto       to-device events to the bots' devices; key rotation on membership changes;
//	             decryption, parking the room while its key is on the way
//	verification in-room verification events go to the verification helper, not the skills
//	skills       the skills of every bot in the room
//
// and then done: the pipeline marks the event handled (appservice/pipeline).
// Path runs them; a stage may stop the event (nothing more to do) or park
// it (wait, then resume at the same stage).
package stages

import (
	"context"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/pipeline"
	"github.com/opsbot/opsbot/appservice/store"
)

// Event is an event on its way through the stages.
type Event struct {
	*pipeline.Item
	// Evt is the event the next stage sees (decrypted once crypto ran).
	Evt *event.Event
	// RoomBots are our bots joined to the room, in config order (set by
	// membership; on a resumed event, looked up again).
	RoomBots []id.UserID
}

// Result is what a stage says about the event.
type Result struct {
	// Stop ends the event's way: later stages do not see it.
	Stop bool
	// Park makes it wait; it resumes at the same stage.
	Park *pipeline.Park
}

var (
	// Next passes the event on.
	Next = Result{}
	// Stop ends it.
	Stop = Result{Stop: true}
)

// Stage is one step of the way.
type Stage interface {
	Name() string
	// Handles lists the event types the stage acts on itself (docs/events.md
	// describes each); nil if it looks at every type (such as skills).
	Handles() []event.Type
	Run(ctx context.Context, ev *Event) Result
}

// RoomBots finds our bots in a room (appservice/bots).
type RoomBots interface {
	RoomBots(ctx context.Context, room id.RoomID) []id.UserID
}

// ToDevice handles to-device events (appservice/e2ee, in appservice key
// delivery; the events of devices with their own /sync are ignored there).
type ToDevice interface {
	HandleToDevice(ctx context.Context, evt *event.Event)
}

// Path is the stages in order; it is the pipeline's Handler.
type Path struct {
	opts PathOptions
}

// PathOptions configure a Path.
type PathOptions struct {
	Stages []Stage
	// ToDevice, if set, takes to-device events, which have no room and go
	// through no stage.
	ToDevice ToDevice
	Bots     RoomBots
	Log      zerolog.Logger
	// Observe, if set, is told the type and handling time of each event
	// HandleSynced runs (the pipeline tells it of the others).
	Observe func(evtType string, took time.Duration)
}

// NewPath returns the path through stages.
func NewPath(opts PathOptions) *Path { return &Path{opts: opts} }

// Handle runs an item through the stages, from where it parked, if it did.
func (p *Path) Handle(ctx context.Context, item *pipeline.Item) pipeline.Outcome {
	log := zerolog.Ctx(ctx)
	if item.Event == nil {
		evt, contentErr, err := pipeline.Parse(item.InboxEvent)
		if err != nil {
			log.Warn().Err(err).Msg("Skipping event that could not be parsed")
			return pipeline.Done
		}
		if contentErr != nil {
			log.Warn().Err(contentErr).Str("type", evt.Type.Type).Msg("Event content does not fit its type; skills get only the raw content")
		}
		item.Event = evt
	}
	if item.Kind == store.KindToDevice {
		if p.opts.ToDevice != nil {
			p.opts.ToDevice.HandleToDevice(ctx, item.Event)
		}
		return pipeline.Done
	}
	ev := &Event{Item: item, Evt: item.Event}
	if item.Stage > 0 {
		ev.RoomBots = p.opts.Bots.RoomBots(ctx, item.Event.RoomID)
	}
	for i := item.Stage; i < len(p.opts.Stages); i++ {
		r := p.opts.Stages[i].Run(ctx, ev)
		if r.Park != nil {
			item.Stage = i
			return pipeline.Outcome{Park: r.Park}
		}
		if r.Stop {
			break
		}
	}
	return pipeline.Done
}

// HandleSynced runs an event that did not come through the inbox (typing
// and receipts from a bot device's /sync, in sync key delivery) through the
// stages after membership. Every bot in a room receives them; only the
// first bot's copy is handled.
func (p *Path) HandleSynced(ctx context.Context, bot id.UserID, evt *event.Event) {
	roomBots := p.opts.Bots.RoomBots(ctx, evt.RoomID)
	if len(roomBots) == 0 || roomBots[0] != bot {
		return
	}
	start := time.Now()
	ev := &Event{Item: &pipeline.Item{}, Evt: evt, RoomBots: roomBots}
	for _, s := range p.opts.Stages {
		if _, ok := s.(*Membership); ok {
			continue // RoomBots is known
		}
		if r := s.Run(ctx, ev); r.Stop || r.Park != nil {
			break
		}
	}
	if p.opts.Observe != nil {
		p.opts.Observe(evt.Type.Type, time.Since(start))
	}
	p.opts.Log.Debug().Stringer("room_id", evt.RoomID).Str("type", evt.Type.Type).Dur("took", time.Since(start)).Msg("Handled ephemeral event from /sync")
}
