package intake_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/intake"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/store/storetest"
)

const syncBot = id.UserID("@helper:example.org")

// syncServer answers /sync from a script: batch i is answered to since
// "s<i>" ("" for the first), and every request is noted.
type syncServer struct {
	t       *testing.T
	batches []string
	mu      sync.Mutex
	asked   []map[string]string
}

func (s *syncServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/_matrix/client/v3/sync" || r.Header.Get("Authorization") != "Bearer bot-token" {
		http.Error(w, `{"errcode":"M_UNRECOGNIZED"}`, http.StatusNotFound)
		return
	}
	q := map[string]string{"since": r.URL.Query().Get("since"), "timeout": r.URL.Query().Get("timeout"), "filter": r.URL.Query().Get("filter")}
	i := 0
	if q["since"] != "" {
		fmt.Sscanf(q["since"], "s%d", &i)
	}
	s.mu.Lock()
	s.asked = append(s.asked, q)
	batch := ""
	if i < len(s.batches) {
		batch = s.batches[i]
	}
	s.mu.Unlock()
	if batch == "" {
		// Nothing new: hold the poll a moment, as a homeserver does.
		time.Sleep(50 * time.Millisecond)
		fmt.Fprintf(w, `{"next_batch":%q}`, q["since"])
		return
	}
	fmt.Fprintf(w, batch, fmt.Sprintf("s%d", i+1))
}

func (s *syncServer) requests() []map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]string(nil), s.asked...)
}

// loggedIn returns a store (SQLite, closed when the test ends) in which the
// bot has logged in as device DEV1 with token, and the bot's client.
func loggedIn(t *testing.T, homeserverURL, token string) (*store.Store, *mautrix.Client) {
	t.Helper()
	st := storetest.Open(t, "sqlite")
	if err := st.SaveLogin(context.Background(), syncBot, "DEV1", token); err != nil {
		t.Fatal(err)
	}
	client, err := mautrix.NewClient(homeserverURL, syncBot, token)
	if err != nil {
		t.Fatal(err)
	}
	client.DeviceID = "DEV1"
	return st, client
}

// flakyStore fails the first failures RecordSync calls.
type flakyStore struct {
	*store.Store
	failures atomic.Int32
}

func (f *flakyStore) RecordSync(ctx context.Context, bot id.UserID, since, next string, events []store.InboxEvent, fence store.Fence) ([]store.InboxEvent, error) {
	if f.failures.Add(-1) >= 0 {
		return nil, errors.New("database unreachable")
	}
	return f.Store.RecordSync(ctx, bot, since, next, events, fence)
}

// The first batch of a login brings invites and keys but no history;
// later batches bring room events with their room, in order; a batch the
// database did not take is fetched again from the same position; and the
// position survives in the database.
func TestSyncIntake(t *testing.T) {
	srv := &syncServer{t: t, batches: []string{
		// First sync: a joined room's last message (history), an invite
		// (stripped state, no event ID), and a room key.
		`{"next_batch":%q,"rooms":{
			"join":{"!old:example.org":{"timeline":{"events":[{"type":"m.room.message","event_id":"$history","sender":"@alice:example.org","content":{"body":"!ping"}}]}}},
			"invite":{"!new:example.org":{"invite_state":{"events":[
				{"type":"m.room.name","state_key":"","sender":"@alice:example.org","content":{"name":"New"}},
				{"type":"m.room.member","state_key":"@helper:example.org","sender":"@alice:example.org","content":{"membership":"invite"}}]}}}},
		  "to_device":{"events":[{"type":"m.room.encrypted","sender":"@alice:example.org","content":{"algorithm":"m.olm.v1.curve25519-aes-sha2"}}]},
		  "device_one_time_keys_count":{"signed_curve25519":7}}`,
		// Then a command with a state change before it, and typing.
		`{"next_batch":%q,"rooms":{"join":{"!new:example.org":{
			"state":{"events":[{"type":"m.room.topic","state_key":"","event_id":"$topic","sender":"@alice:example.org","content":{"topic":"t"}}]},
			"timeline":{"limited":true,"events":[{"type":"m.room.message","event_id":"$cmd","sender":"@alice:example.org","content":{"msgtype":"m.text","body":"!ping"}}]},
			"ephemeral":{"events":[{"type":"m.typing","content":{"user_ids":["@alice:example.org"]}}]}}}},
		  "device_lists":{"changed":["@bob:example.org"]}}`,
		// Refused once by the database. A room just joined: its history
		// before the bot's join is left out; in the other room a profile
		// change of the bot is not a join.
		`{"next_batch":%q,"rooms":{"join":{
			"!new:example.org":{"timeline":{"events":[{"type":"m.room.message","event_id":"$after","sender":"@alice:example.org","content":{"body":"x"}},
				{"type":"m.room.member","state_key":"@helper:example.org","event_id":"$rename","sender":"@helper:example.org","content":{"membership":"join","displayname":"H"},"unsigned":{"prev_content":{"membership":"join"}}}]}},
			"!joined:example.org":{"timeline":{"limited":true,"events":[
				{"type":"m.room.create","state_key":"","event_id":"$create","sender":"@alice:example.org","content":{}},
				{"type":"m.room.message","event_id":"$old","sender":"@alice:example.org","content":{"body":"!ping"}},
				{"type":"m.room.member","state_key":"@helper:example.org","event_id":"$join","sender":"@helper:example.org","content":{"membership":"join"},"unsigned":{"prev_content":{"membership":"invite"}}},
				{"type":"m.room.message","event_id":"$new","sender":"@alice:example.org","content":{"body":"!ping"}}]}}}}}`,
	}}
	hs := httptest.NewServer(srv)
	defer hs.Close()

	ctx := context.Background()
	st, client := loggedIn(t, hs.URL, "bot-token")

	var mu sync.Mutex
	var got []store.InboxEvent
	var lists []id.UserID
	var otks int
	flaky := &flakyStore{Store: st}
	in := intake.NewSync(intake.SyncOptions{
		Client: client,
		Store:  flaky,
		Deliver: func(evs []store.InboxEvent) {
			mu.Lock()
			got = append(got, evs...)
			mu.Unlock()
			for _, ev := range evs {
				if ev.EventID == "$cmd" {
					flaky.failures.Store(1) // the next batch is refused once
				}
			}
		},
		DeviceInfo: func(_ context.Context, l *mautrix.DeviceLists, o map[id.UserID]map[id.DeviceID]mautrix.OTKCount) {
			mu.Lock()
			defer mu.Unlock()
			if l != nil {
				lists = append(lists, l.Changed...)
			}
			if c, ok := o[syncBot]["DEV1"]; ok {
				otks = c.SignedCurve25519
			}
		},
		PollTimeout: 100 * time.Millisecond,
		Log:         zerolog.Nop(),
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	tm := term{over: &atomic.Bool{}}
	go func() { done <- in.Run(runCtx, tm) }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 9 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}

	// The loop has stopped: what it recorded is read without the lock.
	var ids []string
	for _, ev := range got {
		ids = append(ids, ev.Kind+":"+ev.RoomID+":"+ev.EventID)
	}
	if len(got) != 9 {
		t.Fatalf("recorded %d events, want 9: %v", len(got), ids)
	}
	// The invite: the bot's membership event, in its room, with an ID.
	invite := got[0]
	if invite.Kind != store.KindPDU || invite.RoomID != "!new:example.org" || !strings.HasPrefix(invite.EventID, "$opsbot-invite-") {
		t.Fatalf("invite recorded as %v", ids)
	}
	var member struct {
		Sender   string `json:"sender"`
		StateKey string `json:"state_key"`
		RoomID   string `json:"room_id"`
	}
	if err := json.Unmarshal(invite.Payload, &member); err != nil || member.Sender != "@alice:example.org" || member.StateKey != string(syncBot) || member.RoomID != "!new:example.org" {
		t.Fatalf("invite payload %s (%v)", invite.Payload, err)
	}
	if got[1].Kind != store.KindToDevice || got[1].RoomID != "to-device:@helper:example.org|DEV1" {
		t.Fatalf("room key recorded as %v", ids)
	}
	for i, want := range []string{"pdu:!new:example.org:$topic", "pdu:!new:example.org:$cmd", "ephemeral:!new:example.org:"} {
		if ids[2+i] != want {
			t.Fatalf("event %d is %s, want %s (all: %v)", 2+i, ids[2+i], want, ids)
		}
	}
	// The last batch's rooms come in either order; each in its own.
	last := strings.Join(ids[5:], " ")
	for _, want := range []string{"pdu:!new:example.org:$after pdu:!new:example.org:$rename", "pdu:!joined:example.org:$join pdu:!joined:example.org:$new"} {
		if !strings.Contains(last, want) {
			t.Fatalf("last batch %v lacks %s", ids[5:], want)
		}
	}
	for _, id := range ids {
		if strings.Contains(id, "$history") || strings.Contains(id, "$old") || strings.Contains(id, "$create") {
			t.Fatalf("room history from before the bot's join was recorded: %v", ids)
		}
	}
	if len(lists) != 1 || lists[0] != "@bob:example.org" || otks != 7 {
		t.Fatalf("device info: lists %v, one-time keys %d", lists, otks)
	}

	asked := srv.requests()
	if asked[0]["since"] != "" || asked[0]["timeout"] != "0" || !strings.Contains(asked[0]["filter"], `"limit":1}`) {
		t.Fatalf("first request %v: want no position, no wait, no history", asked[0])
	}
	if !strings.Contains(asked[1]["filter"], `"limit":1000}`) {
		t.Fatalf("later requests take the timeline: %v", asked[1])
	}
	fetched := 0
	for _, q := range asked {
		if q["since"] == "s2" {
			fetched++
		}
	}
	if fetched < 2 {
		t.Fatalf("the refused batch was fetched %d times, want again after the failure", fetched)
	}
	s, err := st.ClientSession(ctx, syncBot)
	if err != nil || s.NextBatch != "s3" {
		t.Fatalf("stored position %+v %v, want s3", s, err)
	}

	// A term that is over stops the loop: only the leader syncs.
	tm.over.Store(true)
	srv.mu.Lock()
	srv.batches = append(srv.batches, `{"next_batch":%q}`)
	srv.mu.Unlock()
	if err := in.Run(ctx, tm); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("Run under a term that is over: %v", err)
	}
}

// A login the homeserver no longer takes stops the intake of a bot that can
// log in again, so that the next start does.
func TestSyncStopsOnLostLogin(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"errcode":"M_UNKNOWN_TOKEN","error":"Unknown access token"}`)
	}))
	defer hs.Close()
	ctx := context.Background()
	st, client := loggedIn(t, hs.URL, "revoked")
	in := intake.NewSync(intake.SyncOptions{Client: client, Store: st, Deliver: func([]store.InboxEvent) {}, StopOnLostLogin: true, Log: zerolog.Nop()})
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := in.Run(rctx, term{over: &atomic.Bool{}}); !errors.Is(err, intake.ErrLoginLost) {
		t.Fatalf("Run: %v, want ErrLoginLost", err)
	}
}
