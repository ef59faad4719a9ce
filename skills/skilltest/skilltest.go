// Package skilltest helps test skills without a homeserver: a Sender that
// records actions, and a Harness that runs a skill's matchers on messages.
// Integration tests in integration/ cover the same skills against Dendrite.
package skilltest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
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

// Sender records actions instead of sending them, and keeps uploaded files
// in memory (it implements skills.Media too).
type Sender struct {
	mu      sync.Mutex
	Actions []Action
	Files   map[id.ContentURIString][]byte
	// Events are earlier events Fetch finds (the bot's own sends it
	// finds by itself): who sent what a skill edits or redacts.
	Events map[id.EventID]*event.Event
}

// Upload keeps the file in memory under a new mxc:// URI.
func (f *Sender) Upload(ctx context.Context, bot id.UserID, room id.RoomID, data []byte, mimetype, name string) (id.ContentURIString, *event.EncryptedFileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Files == nil {
		f.Files = map[id.ContentURIString][]byte{}
	}
	uri := id.ContentURIString(fmt.Sprintf("mxc://example.org/file%d", len(f.Files)+1))
	f.Files[uri] = append([]byte(nil), data...)
	return uri, nil, nil
}

// Download returns a file stored by Upload.
func (f *Sender) Download(ctx context.Context, bot id.UserID, content *event.MessageEventContent, maxBytes int64) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	data, ok := f.Files[content.URL]
	if !ok {
		return nil, fmt.Errorf("no file %s", content.URL)
	}
	if int64(len(data)) > maxBytes {
		return nil, fmt.Errorf("file larger than %d bytes", maxBytes)
	}
	return data, nil
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

// SendState records a state event.
func (f *Sender) SendState(ctx context.Context, bot id.UserID, room id.RoomID, t event.Type, stateKey string, content any) (id.EventID, error) {
	return f.Send(ctx, bot, room, t, content, "state:"+stateKey)
}

// Typing, MarkRead and Membership do nothing here.
func (f *Sender) Typing(context.Context, id.UserID, id.RoomID, bool, time.Duration) error { return nil }
func (f *Sender) MarkRead(context.Context, id.UserID, id.RoomID, id.EventID) error        { return nil }
func (f *Sender) Membership(context.Context, id.UserID, id.RoomID, id.UserID, skills.Membership, string) error {
	return nil
}

// Fetch returns an event this Sender sent ($sentN) or one put in Events.
func (f *Sender) Fetch(ctx context.Context, bot id.UserID, room id.RoomID, eventID id.EventID) (*event.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if evt, ok := f.Events[eventID]; ok {
		return evt, nil
	}
	var n int
	if _, err := fmt.Sscanf(string(eventID), "$sent%d", &n); err == nil && n >= 1 && n <= len(f.Actions) {
		a := f.Actions[n-1]
		return &event.Event{ID: eventID, Sender: a.Bot, RoomID: a.Room, Type: a.Type}, nil
	}
	return nil, fmt.Errorf("no event %s", eventID)
}

// EventSender is who sent an event Fetch finds.
func (f *Sender) EventSender(ctx context.Context, bot id.UserID, room id.RoomID, eventID id.EventID) (id.UserID, error) {
	evt, err := f.Fetch(ctx, bot, room, eventID)
	if err != nil {
		return "", err
	}
	return evt.Sender, nil
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

// Host is a skills.Host for tests: its admins, a fixed status report, and a
// reload that says what it was given.
type Host struct {
	AdminIDs     []id.UserID
	StatusReport string
	ReloadResult string
	ReloadErr    error
}

func (h *Host) Admins() []id.UserID                    { return h.AdminIDs }
func (h *Host) Status(context.Context) string          { return h.StatusReport }
func (h *Host) Reload(context.Context) (string, error) { return h.ReloadResult, h.ReloadErr }

// Bot is the bot user a Harness runs as.
const Bot = id.UserID("@opsbot:example.org")

// Harness runs skills for one bot with prefix "!".
type Harness struct {
	Engine *skills.Engine
	Sender *Sender
	Memory *MemoryStore
	n      int
}

// New sets up the skills, with optional YAML config sections by skill name,
// failing the test if setup fails.
func New(t testing.TB, available []skills.Skill, sections map[string]string) *Harness {
	t.Helper()
	h, err := Setup(available, sections)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Setup is New for tests that expect setup to fail: it returns the error.
func Setup(available []skills.Skill, sections map[string]string) (*Harness, error) {
	return SetupWithHost(nil, available, sections)
}

// SetupWithHost is Setup with a Host for skills that use Router.Host (a
// Host value of this package will do).
func SetupWithHost(host skills.Host, available []skills.Skill, sections map[string]string) (*Harness, error) {
	nodes := map[string]yaml.Node{}
	for name, text := range sections {
		var root yaml.Node
		if err := yaml.Unmarshal([]byte(text), &root); err != nil {
			return nil, err
		}
		nodes[name] = *root.Content[0]
	}
	var names []string
	for _, s := range available {
		names = append(names, s.Name())
	}
	h := &Harness{Sender: &Sender{}, Memory: NewMemory()}
	var err error
	h.Engine, err = skills.NewEngine(skills.Options{Sender: h.Sender, Media: h.Sender, Rooms: h.Sender, Memory: h.Memory, Log: zerolog.Nop(), Host: host},
		available, nodes, []skills.BotSpec{{ID: Bot, Prefix: "!", Skills: names, ConfigKey: "bots[0]"}})
	if err != nil {
		return nil, err
	}
	return h, nil
}

// Say handles a text message from @alice and returns the bodies the bot sent in reply.
func (h *Harness) Say(body string) []string {
	return h.Send(&event.MessageEventContent{MsgType: event.MsgText, Body: body})
}

// SendFile has @alice send a file message (uploaded to the fake media store)
// and returns the bodies the bot sent in reply.
func (h *Harness) SendFile(name, mimetype string, data []byte) []string {
	uri, _, _ := h.Sender.Upload(context.Background(), "@alice:example.org", "!room:example.org", data, mimetype, name)
	return h.Send(&event.MessageEventContent{MsgType: event.MsgFile, Body: name, URL: uri, Info: &event.FileInfo{MimeType: mimetype, Size: len(data)}})
}

// Send handles any message from @alice and returns the bodies the bot sent in reply.
func (h *Harness) Send(content *event.MessageEventContent) []string {
	h.n++
	before := len(h.Sender.Bodies())
	evt := &event.Event{
		Type: event.EventMessage, ID: id.EventID(fmt.Sprintf("$msg%d", h.n)), RoomID: "!room:example.org", Sender: "@alice:example.org",
		Content: event.Content{Parsed: content},
	}
	h.Engine.Handle(context.Background(), evt, []id.UserID{Bot})
	var out []string
	for _, a := range h.Sender.Actions[before:] {
		out = append(out, a.Body())
	}
	return out
}

// MemoryStore keeps skill memory in a map (skills.MemoryStore).
type MemoryStore struct {
	mu     sync.Mutex
	values map[string][]byte
}

// NewMemory returns an empty memory store.
func NewMemory() *MemoryStore { return &MemoryStore{values: map[string][]byte{}} }

// Memory returns the memory of a skill in a room.
func (m *MemoryStore) Memory(skill string, room id.RoomID) skills.Memory {
	return &mapMemory{m: m, prefix: skill + "\x00" + string(room) + "\x00"}
}

type mapMemory struct {
	m      *MemoryStore
	prefix string
}

func (mm *mapMemory) Get(ctx context.Context, key string, v any) (bool, error) {
	mm.m.mu.Lock()
	data, ok := mm.m.values[mm.prefix+key]
	mm.m.mu.Unlock()
	if !ok {
		return false, nil
	}
	return true, json.Unmarshal(data, v)
}

func (mm *mapMemory) Put(ctx context.Context, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	mm.m.mu.Lock()
	defer mm.m.mu.Unlock()
	mm.m.values[mm.prefix+key] = data
	return nil
}

func (mm *mapMemory) Delete(ctx context.Context, key string) error {
	mm.m.mu.Lock()
	defer mm.m.mu.Unlock()
	delete(mm.m.values, mm.prefix+key)
	return nil
}

func (mm *mapMemory) Keys(ctx context.Context) ([]string, error) {
	mm.m.mu.Lock()
	defer mm.m.mu.Unlock()
	var keys []string
	for k := range mm.m.values {
		if rest, ok := strings.CutPrefix(k, mm.prefix); ok {
			keys = append(keys, rest)
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// Post sends a webhook-style POST with headers and returns the HTTP status.
func Post(t testing.TB, url, body string, header map[string]string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
