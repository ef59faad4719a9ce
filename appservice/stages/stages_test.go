package stages

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/e2ee"
	"github.com/opsbot/opsbot/appservice/pipeline"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/skills"
)

// allStages is one of each stage, as appservice.Service lines them up.
var allStages = []Stage{NewState(nil), NewMembership(nil), NewCrypto(CryptoOptions{}), NewVerification(nil), NewSkills(nil)}

// Every event type a stage acts on itself is described in docs/events.md
// (generated from skills.Events) as something opsbot handles.
func TestHandledEventTypesAreDocumented(t *testing.T) {
	for _, s := range allStages {
		for _, typ := range s.Handles() {
			info, ok := skills.Catalog(typ.Type)
			if !ok {
				t.Errorf("stage %s handles %s, but docs/events.md (skills.Events) does not describe it", s.Name(), typ.Type)
				continue
			}
			if info.Opsbot == "none" {
				t.Errorf("%s: the catalog says opsbot does nothing with it, but stage %s handles it", typ.Type, s.Name())
			}
		}
	}
}

// fakeBots is the bot manager for membership and the path.
type fakeBots struct {
	in      map[id.RoomID][]id.UserID
	members []string // the order of calls
	stones  int
}

func (f *fakeBots) RoomBots(_ context.Context, room id.RoomID) []id.UserID {
	f.members = append(f.members, "roombots")
	return f.in[room]
}

func (f *fakeBots) HandleMember(context.Context, *event.Event) {
	f.members = append(f.members, "member")
}

func (f *fakeBots) HandleTombstone(context.Context, *event.Event, []id.UserID) { f.stones++ }

func stateEvent(t event.Type, key string, content event.Content) *event.Event {
	t.Class = event.StateEventType
	return &event.Event{Type: t, StateKey: &key, RoomID: "!r:x", Sender: "@alice:x", Content: content}
}

func TestStateStageRecordsStateEvents(t *testing.T) {
	store := mautrix.NewMemoryStateStore()
	s := NewState(store)
	ctx := context.Background()
	member := stateEvent(event.StateMember, "@alice:x", event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipJoin}})
	if r := s.Run(ctx, &Event{Evt: member}); r != Next {
		t.Fatalf("state: %+v", r)
	}
	if !store.IsInRoom(ctx, "!r:x", "@alice:x") {
		t.Fatal("the state store did not learn the join")
	}
	msg := &event.Event{Type: event.EventMessage, RoomID: "!r:x", Content: event.Content{Parsed: &event.MessageEventContent{Body: "hi"}}}
	if r := s.Run(ctx, &Event{Evt: msg}); r != Next {
		t.Fatalf("message: %+v", r)
	}
}

func TestMembershipStage(t *testing.T) {
	bots := &fakeBots{in: map[id.RoomID][]id.UserID{"!r:x": {"@bot:x"}}}
	m := NewMembership(bots)
	ctx := context.Background()
	// An invite is handled before the room's bots are looked up: it makes
	// a bot join.
	ev := &Event{Evt: stateEvent(event.StateMember, "@bot:x", event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipInvite}})}
	if r := m.Run(ctx, ev); r != Next || !slices.Equal(bots.members, []string{"member", "roombots"}) || len(ev.RoomBots) != 1 {
		t.Fatalf("invite: %+v calls %v bots %v", r, bots.members, ev.RoomBots)
	}
	// A room none of our bots is in: nothing more to do.
	other := &Event{Evt: &event.Event{Type: event.EventMessage, RoomID: "!elsewhere:x"}}
	if r := m.Run(ctx, other); r != Stop {
		t.Fatalf("room without bots: %+v", r)
	}
	stone := &Event{Evt: stateEvent(event.StateTombstone, "", event.Content{Parsed: &event.TombstoneEventContent{}})}
	if m.Run(ctx, stone); bots.stones != 1 {
		t.Fatal("the tombstone was not followed")
	}
}

// fakeCrypto is the bots' encryption for the crypto stage.
type fakeCrypto struct {
	reason    string // what TryDecrypt says
	requested int
	states    int
}

func (f *fakeCrypto) HandleState(context.Context, *event.Event, []id.UserID) { f.states++ }

func (f *fakeCrypto) TryDecrypt(_ context.Context, evt *event.Event, _ []id.UserID) (*event.Event, string, error) {
	if f.reason == "ok" {
		return &event.Event{Type: event.EventMessage, RoomID: evt.RoomID, Content: event.Content{Parsed: &event.MessageEventContent{Body: "plain"}}}, "ok", nil
	}
	return nil, f.reason, errors.New(f.reason)
}

func (f *fakeCrypto) WaitForKey(context.Context, *event.Event, []id.UserID, time.Time) <-chan struct{} {
	return make(chan struct{})
}

func (f *fakeCrypto) RequestKey(context.Context, *event.Event, []id.UserID) { f.requested++ }

func encrypted(since time.Time) *Event {
	return &Event{Item: &pipeline.Item{Since: since}, RoomBots: []id.UserID{"@bot:x"},
		Evt: &event.Event{Type: event.EventEncrypted, RoomID: "!r:x", Sender: "@alice:x",
			Content: event.Content{Parsed: &event.EncryptedEventContent{SessionID: "S"}}}}
}

func TestCryptoStage(t *testing.T) {
	ctx := context.Background()
	var outcomes []string
	isBot := func(u id.UserID) bool { return u == "@bot:x" }
	newStage := func(f *fakeCrypto) *Crypto {
		return NewCrypto(CryptoOptions{E2EE: f, IsBot: isBot, DecryptWait: 30 * time.Second,
			Observe: func(_ id.UserID, o string) { outcomes = append(outcomes, o) }})
	}

	// Decrypted: the next stages see the plaintext.
	ev := encrypted(time.Now())
	if r := newStage(&fakeCrypto{reason: "ok"}).Run(ctx, ev); r != Next || ev.Evt.Type != event.EventMessage {
		t.Fatalf("decryptable: %+v, event %s", r, ev.Evt.Type)
	}

	// No key yet: the room parks until RequestKeyAfter, then asks for the
	// key and parks until decrypt_wait is over.
	f := &fakeCrypto{reason: "no_session"}
	c := newStage(f)
	ev = encrypted(time.Now())
	r := c.Run(ctx, ev)
	if r.Park == nil || r.Park.Wake == nil || time.Until(r.Park.Until) > e2ee.RequestKeyAfter || f.requested != 0 {
		t.Fatalf("first try: %+v, %d requests", r.Park, f.requested)
	}
	ev.Since = time.Now().Add(-5 * time.Second) // as if RequestKeyAfter passed
	r = c.Run(ctx, ev)
	if r.Park == nil || f.requested != 1 || time.Until(r.Park.Until) < 20*time.Second {
		t.Fatalf("after the request time: %+v, %d requests", r.Park, f.requested)
	}
	// The key came while parked: a late key.
	f.reason = "ok"
	if r := c.Run(ctx, ev); r != Next || outcomes[len(outcomes)-1] != "late_key" {
		t.Fatalf("key arrived: %+v, outcomes %v", r, outcomes)
	}
	// decrypt_wait over: the event is given up.
	f.reason = "no_session"
	ev = encrypted(time.Now().Add(-time.Minute))
	if r := c.Run(ctx, ev); r != Stop || outcomes[len(outcomes)-1] != "no_session" {
		t.Fatalf("past decrypt_wait: %+v, outcomes %v", r, outcomes)
	}
	// No bot can get keys: given up at once, not parked.
	if r := newStage(&fakeCrypto{reason: "no_key_delivery"}).Run(ctx, encrypted(time.Now())); r != Stop {
		t.Fatalf("no key delivery: %+v", r)
	}
	// Our own messages need nothing.
	own := encrypted(time.Now())
	own.Evt.Sender = "@bot:x"
	if r := c.Run(ctx, own); r != Stop {
		t.Fatalf("own message: %+v", r)
	}
	// Encryption off: ignored.
	if r := NewCrypto(CryptoOptions{IsBot: isBot}).Run(ctx, encrypted(time.Now())); r != Stop {
		t.Fatalf("encryption off: %+v", r)
	}
	// Membership and history visibility reach the machines.
	member := &Event{Evt: stateEvent(event.StateMember, "@carol:x", event.Content{}), RoomBots: []id.UserID{"@bot:x"}}
	if r := c.Run(ctx, member); r != Next || f.states != 1 {
		t.Fatalf("member: %+v, %d state calls", r, f.states)
	}
}

type fakeVerifier struct{ takes bool }

func (f fakeVerifier) HandleRoomEvent(context.Context, *event.Event) bool { return f.takes }

func TestVerificationStage(t *testing.T) {
	ev := &Event{Evt: &event.Event{Type: event.InRoomVerificationStart}}
	if r := NewVerification(fakeVerifier{true}).Run(context.Background(), ev); r != Stop {
		t.Fatalf("a verification event went on: %+v", r)
	}
	if r := NewVerification(fakeVerifier{false}).Run(context.Background(), ev); r != Next {
		t.Fatalf("another event stopped: %+v", r)
	}
	if r := NewVerification(nil).Run(context.Background(), ev); r != Next {
		t.Fatalf("without encryption: %+v", r)
	}
}

// recordStage notes that it ran, and parks once if told to.
type recordStage struct {
	name   string
	ran    *[]string
	parkOn string // event ID to park once
	parked bool
}

func (s *recordStage) Name() string          { return s.name }
func (s *recordStage) Handles() []event.Type { return nil }
func (s *recordStage) Run(_ context.Context, ev *Event) Result {
	*s.ran = append(*s.ran, s.name)
	if ev.Evt.ID.String() == s.parkOn && !s.parked {
		s.parked = true
		return Result{Park: &pipeline.Park{Until: time.Now()}}
	}
	return Next
}

type fakeToDevice struct{ n int }

func (f *fakeToDevice) HandleToDevice(context.Context, *event.Event) { f.n++ }

// The path runs the stages in order, resumes a parked event at the stage
// that parked it, and sends to-device events to the devices only.
func TestPathOrderAndResume(t *testing.T) {
	var ran []string
	td := &fakeToDevice{}
	p := NewPath(PathOptions{ToDevice: td, Bots: &fakeBots{in: map[id.RoomID][]id.UserID{"!r:x": {"@bot:x"}}}, Stages: []Stage{
		&recordStage{name: "a", ran: &ran}, &recordStage{name: "b", ran: &ran, parkOn: "$e"}, &recordStage{name: "c", ran: &ran},
	}})
	ctx := context.Background()
	item := &pipeline.Item{InboxEvent: store.InboxEvent{EventID: "$e", RoomID: "!r:x", Kind: store.KindPDU,
		Payload: []byte(`{"type":"m.room.message","event_id":"$e","room_id":"!r:x","sender":"@a:x","content":{"msgtype":"m.text","body":"hi"}}`)}}
	if out := p.Handle(ctx, item); out.Park == nil || item.Stage != 1 {
		t.Fatalf("first run: %+v, stage %d", out, item.Stage)
	}
	if out := p.Handle(ctx, item); out.Park != nil {
		t.Fatalf("resumed run parked again: %+v", out)
	}
	if !slices.Equal(ran, []string{"a", "b", "b", "c"}) {
		t.Fatalf("stages ran %v, want a b, then b c", ran)
	}
	toDevice := &pipeline.Item{InboxEvent: store.InboxEvent{RoomID: "to-device:@bot:x|D", Kind: store.KindToDevice,
		Payload: []byte(`{"type":"m.room.encrypted","sender":"@a:x","content":{}}`)}}
	ran = nil
	p.Handle(ctx, toDevice)
	if td.n != 1 || len(ran) != 0 {
		t.Fatalf("to-device: %d to the devices, stages %v", td.n, ran)
	}
}

// Typing and receipts from a bot device's /sync run the stages (but
// membership: the room's bots are known) for the room's first bot only,
// and are counted like events from the inbox.
func TestHandleSynced(t *testing.T) {
	var ran []string
	var observed []string
	p := NewPath(PathOptions{Bots: &fakeBots{in: map[id.RoomID][]id.UserID{"!r:x": {"@first:x", "@second:x"}}},
		Stages:  []Stage{&recordStage{name: "a", ran: &ran, parkOn: "-"}, NewMembership(nil), &recordStage{name: "b", ran: &ran, parkOn: "-"}},
		Observe: func(typ string, _ time.Duration) { observed = append(observed, typ) }})
	receipt := &event.Event{Type: event.EphemeralEventReceipt, RoomID: "!r:x"}
	p.HandleSynced(context.Background(), "@second:x", receipt)
	if len(ran) != 0 || len(observed) != 0 {
		t.Fatalf("the room's second bot handled it: stages %v, observed %v", ran, observed)
	}
	p.HandleSynced(context.Background(), "@first:x", receipt)
	if !slices.Equal(ran, []string{"a", "b"}) || !slices.Equal(observed, []string{"m.receipt"}) {
		t.Fatalf("stages %v, observed %v", ran, observed)
	}
}
