// Package tour shows every kind of event a skill can send and receive:
// "!tour react", "!tour edit", "!tour poll", ... each perform one action,
// and "!tour seen" lists the kinds of events the bot has received in the
// room. It is a living example for skill authors (docs/events.md points
// here), and what the integration tests use to check each event type in
// and out, in plain and encrypted rooms.
package tour

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"maunium.net/go/mautrix/event"

	"github.com/opsbot/opsbot/skills"
)

// Skill is the tour.
type Skill struct{}

// New returns the tour skill.
func New() skills.Skill { return Skill{} }

// Name is the skill's config name.
func (Skill) Name() string { return "tour" }

const seenKey = "seen"

// watched are the event types the tour records for "!tour seen".
var watched = []event.Type{
	event.EventReaction, event.EventRedaction, event.StateMember, event.StateRoomName, event.StateTopic,
	event.StateRoomAvatar, event.EventSticker, event.EventUnstablePollStart, event.EventUnstablePollResponse,
	event.EventUnstablePollEnd, event.EphemeralEventTyping, event.EphemeralEventReceipt,
}

// Setup registers the tour's commands and watchers.
func (Skill) Setup(r *skills.Router, cfg skills.Config) error {
	var settings struct{}
	if err := cfg.Decode(&settings); err != nil {
		return err
	}
	cmds := []struct {
		pattern, help string
		h             skills.Handler
	}{
		{"tour react", "react to your command", react},
		{"tour edit", "send a message, then edit it", edit},
		{"tour redact", "send a message, then redact it", redact},
		{"tour thread", "answer in a thread on your command", thread},
		{"tour reply", "answer as a reply", reply},
		{"tour html", "answer with formatting", html},
		{"tour typing", "show typing for a moment, then answer", typing},
		{"tour read", "mark your command as read", read},
		{"tour poll", "start a poll", poll},
		{"tour location", "send a location", location},
		{"tour file", "send a small text file", file},
		{"tour topic {text...}", "set the room topic", topic},
		{"tour name {text...}", "rename the room", name},
		{"tour quote", "as a reply to a message: repeat that message", quote},
		{"tour seen", "list the kinds of events seen in this room", seen},
	}
	for _, c := range cmds {
		r.Command(c.pattern, c.h, skills.Help(c.help))
	}
	for _, t := range watched {
		r.Event(t, record)
	}
	r.Event(event.EventMessage, recordMessage)
	return nil
}

func react(ctx context.Context, ev *skills.Event) error {
	_, err := ev.React(ctx, "👍")
	return err
}

func edit(ctx context.Context, ev *skills.Event) error {
	id, err := ev.Respond(ctx, "tour: draft")
	if err != nil {
		return err
	}
	_, err = ev.Edit(ctx, id, "tour: final")
	return err
}

func redact(ctx context.Context, ev *skills.Event) error {
	id, err := ev.Respond(ctx, "tour: this goes away")
	if err != nil {
		return err
	}
	_, err = ev.Redact(ctx, id, "tour")
	return err
}

func thread(ctx context.Context, ev *skills.Event) error {
	_, err := ev.ReplyInThread(ctx, "tour: in a thread")
	return err
}

func reply(ctx context.Context, ev *skills.Event) error {
	_, err := ev.Reply(ctx, "tour: a reply")
	return err
}

func html(ctx context.Context, ev *skills.Event) error {
	_, err := ev.ReplyHTML(ctx, "tour: bold", "tour: <b>bold</b>")
	return err
}

func typing(ctx context.Context, ev *skills.Event) error {
	if err := ev.SetTyping(ctx, true, 5*time.Second); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	if err := ev.SetTyping(ctx, false, 0); err != nil {
		return err
	}
	_, err := ev.Respond(ctx, "tour: done typing")
	return err
}

func read(ctx context.Context, ev *skills.Event) error {
	if err := ev.MarkRead(ctx); err != nil {
		return err
	}
	_, err := ev.Respond(ctx, "tour: marked read")
	return err
}

func poll(ctx context.Context, ev *skills.Event) error {
	_, err := ev.SendPoll(ctx, "tour: tea or coffee?", "tea", "coffee")
	return err
}

func location(ctx context.Context, ev *skills.Event) error {
	_, err := ev.SendLocation(ctx, "tour: Brandenburg Gate", "geo:52.5163,13.3777")
	return err
}

func file(ctx context.Context, ev *skills.Event) error {
	_, err := ev.SendFile(ctx, "tour.txt", "text/plain", []byte("a file from the tour\n"))
	return err
}

func topic(ctx context.Context, ev *skills.Event) error {
	_, err := ev.SetTopic(ctx, ev.Arg("text"))
	return err
}

func name(ctx context.Context, ev *skills.Event) error {
	_, err := ev.SetRoomName(ctx, ev.Arg("text"))
	return err
}

func quote(ctx context.Context, ev *skills.Event) error {
	quoted, err := ev.InReplyTo(ctx)
	if err != nil {
		return err
	}
	if quoted == nil {
		_, err := ev.Reply(ctx, "tour: send !tour quote as a reply to a message")
		return err
	}
	body := ""
	if msg := quoted.Content.AsMessage(); msg != nil {
		body = msg.Body
	}
	_, err = ev.Reply(ctx, fmt.Sprintf("tour: %s said %q", quoted.Sender, body))
	return err
}

// record notes an event type as seen in the room.
func record(ctx context.Context, ev *skills.Event) error {
	return mark(ctx, ev, ev.Raw.Type.Type)
}

// recordMessage notes the kinds of messages that are not plain text.
func recordMessage(ctx context.Context, ev *skills.Event) error {
	msg := ev.Message()
	switch {
	case ev.IsEdit():
		return mark(ctx, ev, "edit")
	case msg == nil:
		return nil
	case msg.RelatesTo != nil && msg.RelatesTo.Type == event.RelThread:
		return mark(ctx, ev, "thread")
	case msg.MsgType != event.MsgText:
		return mark(ctx, ev, string(msg.MsgType))
	}
	return nil
}

// markMu serialises the read-modify-write of the seen list: typing and
// receipts can arrive (from the bots' /sync) while a room event is handled.
var markMu sync.Mutex

func mark(ctx context.Context, ev *skills.Event, kind string) error {
	markMu.Lock()
	defer markMu.Unlock()
	var kinds []string
	if _, err := ev.Memory.Get(ctx, seenKey, &kinds); err != nil {
		return err
	}
	if slices.Contains(kinds, kind) {
		return nil
	}
	kinds = append(kinds, kind)
	slices.Sort(kinds)
	return ev.Memory.Put(ctx, seenKey, kinds)
}

func seen(ctx context.Context, ev *skills.Event) error {
	var kinds []string
	if _, err := ev.Memory.Get(ctx, seenKey, &kinds); err != nil {
		return err
	}
	_, err := ev.Reply(ctx, "tour: seen "+strings.Join(kinds, ", "))
	return err
}
