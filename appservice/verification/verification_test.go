package verification

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/e2ee"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/store/storetest"
)

func TestStore(t *testing.T) {
	for _, dialect := range storetest.Dialects {
		t.Run(dialect, func(t *testing.T) {
			ctx := context.Background()
			st, err := store.Open(storetest.Config(t, dialect), zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			s := NewStore(st.DB)
			if err := s.Init(ctx); err != nil {
				t.Fatal(err)
			}
			if err := s.Init(ctx); err != nil {
				t.Fatalf("second Init: %v", err)
			}
			now := time.UnixMilli(time.Now().UnixMilli())
			p := Pending{TransactionID: "txn1", Bot: "@bot:x", User: "@alice:x", Device: "DEV",
				Emojis: []Emoji{{"🐶", "Dog"}, {"🔑", "Key"}}, Decimals: []int{1234, 5678, 9012}, Created: now, Expires: now.Add(time.Minute)}
			if err := s.Add(ctx, p); err != nil {
				t.Fatal(err)
			}
			list, err := s.List(ctx)
			if err != nil || len(list) != 1 {
				t.Fatalf("List: %v %+v", err, list)
			}
			got := list[0]
			if got.TransactionID != "txn1" || got.User != "@alice:x" || got.Decision != DecisionNone || !got.Expires.Equal(p.Expires) ||
				got.SAS() != "🐶 Dog, 🔑 Key | 1234 5678 9012" {
				t.Fatalf("stored %+v (SAS %q)", got, got.SAS())
			}
			if err := s.Decide(ctx, "txn1", DecisionConfirm); err != nil {
				t.Fatal(err)
			}
			// A decision is taken once; unknown transactions are named.
			if err := s.Decide(ctx, "txn1", DecisionCancel); !errors.Is(err, ErrNotPending) {
				t.Fatalf("second decision: %v", err)
			}
			if err := s.Decide(ctx, "nope", DecisionConfirm); !errors.Is(err, ErrNotPending) || !strings.Contains(err.Error(), "nope") {
				t.Fatalf("unknown transaction: %v", err)
			}
			if list, _ := s.List(ctx); list[0].Decision != DecisionConfirm {
				t.Fatalf("decision not stored: %+v", list[0])
			}
			if err := s.Delete(ctx, "txn1"); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(ctx, "txn1"); err != nil {
				t.Fatalf("deleting twice: %v", err)
			}
			p.TransactionID = "txn2"
			_ = s.Add(ctx, p)
			if err := s.DeleteAll(ctx); err != nil {
				t.Fatal(err)
			}
			if list, _ := s.List(ctx); len(list) != 0 {
				t.Fatalf("after DeleteAll: %+v", list)
			}
		})
	}
}

func TestAllowed(t *testing.T) {
	m := New(Options{AllowedUsers: []string{"@alice:example.org", "@*:ops.example.org"}})
	for user, want := range map[id.UserID]bool{
		"@alice:example.org":      true,
		"@bob:example.org":        false,
		"@carol:ops.example.org":  true,
		"@alice:example.org.evil": false,
		"@x:evil.org":             false,
	} {
		if got := m.Allowed(user); got != want {
			t.Errorf("Allowed(%s) = %v, want %v", user, got, want)
		}
	}
	if New(Options{}).Allowed("@alice:example.org") {
		t.Error("with no allowed users nobody may verify")
	}
}

// routed builds a manager with one bot whose dispatched events are recorded.
func routed(t *testing.T) (*Manager, *[]*event.Event) {
	st, err := store.Open(storetest.Config(t, "sqlite"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m := New(Options{DB: st.DB})
	if err := m.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	var got []*event.Event
	syncer := mautrix.NewDefaultSyncer()
	syncer.OnEvent(func(_ context.Context, evt *event.Event) { got = append(got, evt) })
	m.bots["@bot:x"] = &botVerifier{m: m, dev: &e2ee.Device{UserID: "@bot:x"}, syncer: syncer, log: zerolog.Nop()}
	return m, &got
}

func roomEvent(t *testing.T, evtID, sender, typ string, content map[string]any) *event.Event {
	return parsed(t, &event.Event{ID: id.EventID(evtID), Sender: id.UserID(sender), RoomID: "!r:x",
		Type: event.Type{Type: typ, Class: event.MessageEventType}}, content)
}

// parsed gives evt the content as it arrives from JSON, parsed.
func parsed(t *testing.T, evt *event.Event, content map[string]any) *event.Event {
	t.Helper()
	data, _ := json.Marshal(content)
	if err := json.Unmarshal(data, &evt.Content); err != nil {
		t.Fatal(err)
	}
	if err := evt.Content.ParseRaw(evt.Type); err != nil {
		t.Fatal(err)
	}
	return evt
}

func TestHandleRoomEventRouting(t *testing.T) {
	ctx := context.Background()
	m, got := routed(t)
	request := func(to string) *event.Event {
		return roomEvent(t, "$req", "@alice:x", "m.room.message", map[string]any{"msgtype": "m.key.verification.request",
			"body": "verify", "to": to, "from_device": "DEV", "methods": []string{"m.sas.v1"}})
	}
	followUp := func(sender, rel string) *event.Event {
		return roomEvent(t, "$own", sender, "m.key.verification.ready", map[string]any{"from_device": "DEV",
			"methods": []string{"m.sas.v1"}, "m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": rel}})
	}
	text := roomEvent(t, "$t", "@alice:x", "m.room.message", map[string]any{"msgtype": "m.text", "body": "!ping"})

	if m.HandleRoomEvent(ctx, text) || len(*got) != 0 {
		t.Fatal("a plain message is not verification")
	}
	if !m.HandleRoomEvent(ctx, request("@other:x")) || len(*got) != 0 {
		t.Fatal("a request for someone else must be taken from the skills but not dispatched")
	}
	if !m.HandleRoomEvent(ctx, request("@bot:x")) || len(*got) != 1 || (*got)[0].ID != "$req" {
		t.Fatalf("a request to the bot goes to it with its own ID: %+v", *got)
	}
	if !m.HandleRoomEvent(ctx, followUp("@alice:x", "$req")) || len(*got) != 1 {
		t.Fatal("a follow-up of a request no bot accepted is not dispatched")
	}
	m.track("$req", "@bot:x")
	if !m.HandleRoomEvent(ctx, followUp("@alice:x", "$req")) || len(*got) != 2 || (*got)[1].ID != "$req" {
		t.Fatalf("a follow-up goes to the bot with the request's ID as its ID: %+v", *got)
	}
	if !m.HandleRoomEvent(ctx, followUp("@bot:x", "$req")) || len(*got) != 2 {
		t.Fatal("the bot's own verification events come back and must not be dispatched")
	}
}

// The other side's MAC waits for the operator; a finished verification
// leaves nothing held.
func TestMACHeldUntilConfirmed(t *testing.T) {
	ctx := context.Background()
	m, got := routed(t)
	bv := m.bots["@bot:x"]
	mac := parsed(t, &event.Event{Sender: "@alice:x", Type: event.ToDeviceVerificationMAC},
		map[string]any{"transaction_id": "t1", "keys": "AAAA", "mac": map[string]any{}})
	bv.dispatch(ctx, mac)
	if len(*got) != 0 || len(bv.held["t1"]) != 1 {
		t.Fatalf("MAC before confirmation: dispatched %d, held %d", len(*got), len(bv.held["t1"]))
	}
	other := parsed(t, &event.Event{Sender: "@alice:x", Type: event.ToDeviceVerificationKey},
		map[string]any{"transaction_id": "t1", "key": "AAAA"})
	bv.dispatch(ctx, other)
	if len(*got) != 1 {
		t.Fatal("events other than the MAC pass at once")
	}
	bv.finish(ctx, "t1")
	if len(bv.held) != 0 {
		t.Fatalf("held after finish: %+v", bv.held)
	}
}

// The operator learns from OnWaiting (opsbot_verifications_waiting) that a
// person waits for them: a comparison without a decision counts while it
// has not expired, and stops counting once decided.
func TestWaitingForTheOperator(t *testing.T) {
	st, err := store.Open(storetest.Config(t, "sqlite"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reports := make(chan int, 100)
	m := New(Options{DB: st.DB, Poll: 10 * time.Millisecond, OnWaiting: func(n int) {
		select {
		case reports <- n:
		default:
		}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Init(ctx); err != nil {
		t.Fatal(err)
	}
	// The next report that is not stale: drain what came before, then wait.
	expect := func(want int, why string) {
		t.Helper()
		for len(reports) > 0 {
			<-reports
		}
		deadline := time.After(5 * time.Second)
		for {
			select {
			case n := <-reports:
				if n == want {
					return
				}
			case <-deadline:
				t.Fatalf("%s: never reported %d waiting", why, want)
			}
		}
	}
	go m.Run(ctx)
	expect(0, "nothing going on")

	// No botVerifier is attached for @bot:x, so Run leaves the rows alone
	// and only counts them.
	now := time.Now()
	m.track("txn1", "@bot:x")
	if err := m.store.Add(ctx, Pending{TransactionID: "txn1", Bot: "@bot:x", User: "@alice:x", Device: "D", Created: now, Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := m.store.Add(ctx, Pending{TransactionID: "txn2", Bot: "@bot:x", User: "@alice:x", Device: "D", Created: now.Add(-time.Hour), Expires: now.Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	expect(1, "one comparison waits, one expired")
	if err := m.store.Decide(ctx, "txn1", DecisionCancel); err != nil {
		t.Fatal(err)
	}
	expect(0, "after the operator's decision")
	m.forget("txn1")
	expect(0, "with no verification going on")
}
