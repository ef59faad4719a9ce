// Package skilltest helps test skills without a homeserver: a Sender that
// records actions, and a Harness that runs a skill's matchers on messages.
// Integration tests in integration/ cover the same skills against Dendrite.
package skilltest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"opsbot/appservice/config"
	"opsbot/skills"
)

// Action is one recorded send.
type Action struct {
	Bot     id.UserID
	Room    id.RoomID
	Type    event.Type
	Content map[string]any
	TxnID   string
}

// Body returns the action's body ("" for actions without one).
func (a Action) Body() string { s, _ := a.Content["body"].(string); return s }

// Sender records actions instead of sending them.
type Sender struct {
	mu      sync.Mutex
	Actions []Action
}

// Send records a message event.
func (f *Sender) Send(ctx context.Context, bot id.UserID, room id.RoomID, t event.Type, content any, txnID string) (id.EventID, error) {
	data, err := json.Marshal(content)
	if err != nil {
		return "", err
	}
	var m map[string]any
	_ = json.Unmarshal(data, &m)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Actions = append(f.Actions, Action{bot, room, t, m, txnID})
	return id.EventID(fmt.Sprintf("$sent%d", len(f.Actions))), nil
}

// Redact records a redaction.
func (f *Sender) Redact(ctx context.Context, bot id.UserID, room id.RoomID, target id.EventID, reason, txnID string) (id.EventID, error) {
	return f.Send(ctx, bot, room, event.EventRedaction, map[string]any{"redacts": target, "reason": reason}, txnID)
}

// Bodies returns "bot: body" for each recorded action.
func (f *Sender) Bodies() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.Actions))
	for i, a := range f.Actions {
		out[i] = string(a.Bot) + ": " + a.Body()
	}
	return out
}

// Bot is the bot user a Harness runs as.
const Bot = id.UserID("@opsbot:example.org")

// Harness runs skills for one bot with prefix "!".
type Harness struct {
	Engine *skills.Engine
	Sender *Sender
	n      int
}

// New sets up the skills, with optional YAML config sections by skill name.
func New(t testing.TB, available []skills.Skill, sections map[string]string) *Harness {
	t.Helper()
	nodes := map[string]yaml.Node{}
	for name, text := range sections {
		var root yaml.Node
		if err := yaml.Unmarshal([]byte(text), &root); err != nil {
			t.Fatal(err)
		}
		nodes[name] = *root.Content[0]
	}
	var names []string
	for _, s := range available {
		names = append(names, s.Name())
	}
	h := &Harness{Sender: &Sender{}}
	var err error
	h.Engine, err = skills.NewEngine(skills.Options{Sender: h.Sender, Log: zerolog.Nop(), Decode: config.DecodeStrict},
		available, nodes, []skills.BotSpec{{ID: Bot, Prefix: "!", Skills: names, ConfigKey: "bots[0]"}})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Say handles a text message from @alice and returns the bodies the bot sent in reply.
func (h *Harness) Say(body string) []string {
	h.n++
	before := len(h.Sender.Bodies())
	evt := &event.Event{
		Type: event.EventMessage, ID: id.EventID(fmt.Sprintf("$msg%d", h.n)), RoomID: "!room:example.org", Sender: "@alice:example.org",
		Content: event.Content{Parsed: &event.MessageEventContent{MsgType: event.MsgText, Body: body}},
	}
	h.Engine.Handle(context.Background(), evt, []id.UserID{Bot})
	var out []string
	for _, a := range h.Sender.Actions[before:] {
		out = append(out, a.Body())
	}
	return out
}
