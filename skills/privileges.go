package skills

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Privileges are what a skill may do beyond its own messages; the host
// grants them per skill (permissions.skills.<skill> in opsbot's config).
// A bot with the power to redact could otherwise redact anyone's message
// because a skill — perhaps an external one — asked it to.
type Privileges struct {
	// RedactOthers lets the skill redact events the bot did not send.
	RedactOthers bool
	// RoomMentions lets the skill's messages ping the whole room
	// (m.mentions.room).
	RoomMentions bool
}

func (ev *Event) privileges() Privileges {
	if ev.engine == nil || ev.engine.opts.Privileges == nil {
		return Privileges{}
	}
	return ev.engine.opts.Privileges(ev.Skill)
}

// checkTarget refuses to edit an event the bot did not send (clients
// ignore such edits anyway), and to redact one unless the skill may.
func (ev *Event) checkTarget(ctx context.Context, room id.RoomID, target id.EventID, redact bool) error {
	if (redact && ev.privileges().RedactOthers) || (ev.engine != nil && ev.engine.own.has(ev.Bot, target)) {
		return nil
	}
	rooms, err := ev.roomsOrErr()
	if err != nil {
		return fmt.Errorf("cannot check who sent %s: %w", target, err)
	}
	sender, err := rooms.EventSender(ctx, ev.Bot, room, target)
	if err != nil {
		return fmt.Errorf("cannot check who sent %s: %w", target, err)
	}
	if sender == ev.Bot {
		return nil
	}
	if !redact {
		return fmt.Errorf("%s was sent by %s: a bot edits only its own messages", target, sender)
	}
	return fmt.Errorf("%s was sent by %s: skill %s may redact only the bot's own events (permissions.skills.%s.redact_others)", target, sender, ev.Skill, ev.Skill)
}

// checkMentions refuses a message that pings the whole room unless the
// skill may.
func (ev *Event) checkMentions(t event.Type, content any) error {
	if t != event.EventMessage || ev.privileges().RoomMentions {
		return nil
	}
	var room bool
	switch c := content.(type) {
	case *event.MessageEventContent:
		room = c.Mentions != nil && c.Mentions.Room
	default:
		data, err := json.Marshal(content)
		if err != nil {
			return err
		}
		var m struct {
			Mentions *event.Mentions `json:"m.mentions"`
		}
		_ = json.Unmarshal(data, &m)
		room = m.Mentions != nil && m.Mentions.Room
	}
	if room {
		return fmt.Errorf("skill %s may not mention the whole room (permissions.skills.%s.room_mentions)", ev.Skill, ev.Skill)
	}
	return nil
}

// recentEvents remembers the last events the bots sent, by bot.
type recentEvents struct {
	mu   sync.Mutex
	ids  map[sentEvent]bool
	ring []sentEvent
	next int
}

type sentEvent struct {
	bot id.UserID
	evt id.EventID
}

const rememberedEvents = 4096

func (r *recentEvents) add(bot id.UserID, evt id.EventID) {
	if evt == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = map[sentEvent]bool{}
		r.ring = make([]sentEvent, rememberedEvents)
	}
	delete(r.ids, r.ring[r.next])
	r.ring[r.next] = sentEvent{bot, evt}
	r.ids[sentEvent{bot, evt}] = true
	r.next = (r.next + 1) % rememberedEvents
}

func (r *recentEvents) has(bot id.UserID, evt id.EventID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[sentEvent{bot, evt}]
}
