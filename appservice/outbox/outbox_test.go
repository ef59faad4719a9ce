package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	mas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/outbox"
)

const (
	bot  = id.UserID("@opsbot:example.org")
	room = id.RoomID("!room:example.org")
)

// fakeHomeserver answers sends with scripted failures first.
type fakeHomeserver struct {
	mu       sync.Mutex
	failures []func(w http.ResponseWriter)
	txnIDs   []string
	times    []time.Time
	lookups  int
	users    []string
	bodies   []map[string]any
}

func (f *fakeHomeserver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/messages") {
		f.lookups++
		fmt.Fprint(w, `{"chunk":[],"start":"s","end":"e"}`)
		return
	}
	parts := strings.Split(r.URL.Path, "/")
	f.txnIDs = append(f.txnIDs, parts[len(parts)-1])
	f.times = append(f.times, time.Now())
	f.users = append(f.users, r.URL.Query().Get("user_id"))
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	f.bodies = append(f.bodies, body)
	if len(f.failures) > 0 {
		fail := f.failures[0]
		f.failures = f.failures[1:]
		fail(w)
		return
	}
	fmt.Fprintf(w, `{"event_id":"$sent%d"}`, len(f.txnIDs))
}

func setup(t *testing.T, hs *fakeHomeserver) *outbox.Outbox {
	t.Helper()
	return newOutbox(newAS(t, hs))
}

// newOutbox is an outbox with short backoff.
func newOutbox(as *mas.AppService) *outbox.Outbox {
	return outbox.New(outbox.Options{AS: as, Log: zerolog.Nop(), MinBackoff: 10 * time.Millisecond, MaxBackoff: 2 * time.Second})
}

// newAS is an appservice talking to hs, with bot joined to room.
func newAS(t *testing.T, hs *fakeHomeserver) *mas.AppService {
	t.Helper()
	srv := httptest.NewServer(hs)
	t.Cleanup(srv.Close)
	as, err := mas.CreateFull(mas.CreateOpts{
		Registration:     &mas.Registration{AppToken: "as", ServerToken: "hs", SenderLocalpart: "opsbot"},
		HomeserverDomain: "example.org", HomeserverURL: srv.URL,
	})
	if err != nil {
		t.Fatal(err)
	}
	as.DefaultHTTPRetries = 0
	ctx := context.Background()
	_ = as.StateStore.MarkRegistered(ctx, bot)
	_ = as.StateStore.SetMembership(ctx, room, bot, event.MembershipJoin)
	return as
}

func status(code int, body string) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprint(w, body)
	}
}

func TestSendRetriesWithTheSameTxnID(t *testing.T) {
	hs := &fakeHomeserver{failures: []func(http.ResponseWriter){
		status(502, `bad gateway`),
		status(429, `{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":300}`),
		status(500, `{"errcode":"M_UNKNOWN","error":"oops"}`),
	}}
	o := setup(t, hs)
	evtID, err := o.Send(context.Background(), bot, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgNotice, Body: "pong"}, "opsbot.txn1")
	if err != nil {
		t.Fatal(err)
	}
	if evtID != "$sent4" || len(hs.txnIDs) != 4 {
		t.Fatalf("event %s after %d attempts", evtID, len(hs.txnIDs))
	}
	for i, txn := range hs.txnIDs {
		if txn != "opsbot.txn1" {
			t.Errorf("attempt %d used txn ID %q", i, txn)
		}
		if hs.users[i] != string(bot) {
			t.Errorf("attempt %d sent as %q", i, hs.users[i])
		}
	}
	// After each failed attempt the outbox checks the history for a copy.
	if hs.lookups != 3 {
		t.Errorf("%d history lookups, want one after each of the 3 failures", hs.lookups)
	}
	if gap := hs.times[2].Sub(hs.times[1]); gap < 300*time.Millisecond {
		t.Errorf("retry_after_ms 300 not honoured: retried after %v", gap)
	}
}

func TestPermanentErrorsAreNotRetried(t *testing.T) {
	hs := &fakeHomeserver{failures: []func(http.ResponseWriter){
		status(403, `{"errcode":"M_FORBIDDEN","error":"not in room"}`),
	}}
	o := setup(t, hs)
	_, err := o.Send(context.Background(), bot, room, event.EventMessage, map[string]any{"body": "x"}, "t")
	if !errors.Is(err, mautrix.MForbidden) || len(hs.txnIDs) != 1 {
		t.Fatalf("err=%v attempts=%d", err, len(hs.txnIDs))
	}
}

func TestContextBoundsRetries(t *testing.T) {
	hs := &fakeHomeserver{}
	for i := 0; i < 100; i++ {
		hs.failures = append(hs.failures, status(503, `{}`))
	}
	o := setup(t, hs)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := o.Send(ctx, bot, room, event.EventMessage, map[string]any{"body": "x"}, "t")
	if err == nil || !strings.Contains(err.Error(), "gave up") {
		t.Fatalf("err=%v", err)
	}
}

func TestNeverPlaintextIntoEncryptedRoom(t *testing.T) {
	hs := &fakeHomeserver{}
	as := newAS(t, hs)
	o := newOutbox(as)
	_ = as.StateStore.SetEncryptionEvent(context.Background(), room, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1})
	_, err := o.Send(context.Background(), bot, room, event.EventMessage, map[string]any{"body": "secret"}, "t")
	if !errors.Is(err, outbox.ErrEncryptedRoom) || len(hs.txnIDs) != 0 {
		t.Fatalf("err=%v, requests=%d", err, len(hs.txnIDs))
	}
}

func TestRetryAfterClassification(t *testing.T) {
	mk := func(code int, resp *mautrix.RespError) error {
		return mautrix.HTTPError{Response: &http.Response{StatusCode: code, Header: http.Header{}}, RespError: resp}
	}
	cases := []struct {
		err       error
		wait      time.Duration
		retryable bool
	}{
		{mk(429, &mautrix.RespError{ErrCode: "M_LIMIT_EXCEEDED", ExtraData: map[string]any{"retry_after_ms": float64(1500)}}), 1500 * time.Millisecond, true},
		{mk(500, nil), 0, true},
		{mk(400, &mautrix.RespError{ErrCode: "M_BAD_JSON"}), 0, false},
		{mk(404, nil), 0, false},
		{errors.New("connection refused"), 0, true},
		{context.Canceled, 0, false},
		// Without retry_after_ms, the Retry-After header (seconds or a date).
		{withHeader(mk(429, nil), "Retry-After", "7"), 7 * time.Second, true},
		{withHeader(mk(429, nil), "Retry-After", "soon"), 0, true},
		{withHeader(mk(429, nil), "Retry-After", time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)), 0, true},
	}
	for i, c := range cases {
		wait, retryable := outbox.RetryAfter(c.err)
		if wait != c.wait || retryable != c.retryable {
			t.Errorf("case %d: got %v %v, want %v %v", i, wait, retryable, c.wait, c.retryable)
		}
	}
}

func withHeader(err error, key, value string) error {
	err.(mautrix.HTTPError).Response.Header.Set(key, value)
	return err
}

// A send re-done after a crash finds the copy that already reached the
// homeserver (by its transaction marker) and does not send again.
// A re-run send finds an earlier copy however many messages the bot sent
// since the triggering event: it pages forward from that event.
func TestRecoveredSendIsNotRepeated(t *testing.T) {
	var puts, gets int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		q := r.URL.Query()
		switch {
		case r.Method == "GET" && strings.Contains(r.URL.Path, "/event/"):
			if !strings.HasSuffix(r.URL.Path, "/$trigger") {
				http.NotFound(w, r)
				return
			}
			fmt.Fprintf(w, `{"type":"m.room.message","event_id":"$trigger","sender":"@alice:x","room_id":%q,"origin_server_ts":1000,"content":{}}`, room)
		case r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/messages"):
			gets++
			if q.Get("dir") != "b" {
				http.Error(w, "want dir=b", 400)
				return
			}
			// Newest first: 150 other messages of the bot, then the earlier
			// copy, then messages from before the trigger.
			var chunk []string
			msg := func(id, marker string, ts int) {
				chunk = append(chunk, fmt.Sprintf(`{"type":"m.room.message","event_id":%q,"sender":%q,"room_id":%q,"origin_server_ts":%d,"content":{"body":"x",%q:%q}}`, id, bot, room, ts, outbox.TxnMarker, marker))
			}
			switch q.Get("from") {
			case "", "p1":
				for i := 0; i < 75; i++ {
					msg(fmt.Sprintf("$other-%s-%d", q.Get("from"), i), "opsbot.other", 5000)
				}
			case "p2":
				msg("$earlier", "opsbot.done", 2000)
				msg("$before-trigger", "opsbot.new", 500) // an old message that must not count
			}
			next := map[string]string{"": "p1", "p1": "p2", "p2": "p3"}[q.Get("from")]
			fmt.Fprintf(w, `{"chunk":[%s],"start":%q,"end":%q}`, strings.Join(chunk, ","), q.Get("from"), next)
		case r.Method == "PUT":
			puts++
			fmt.Fprint(w, `{"event_id":"$new"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	as, err := mas.CreateFull(mas.CreateOpts{
		Registration:     &mas.Registration{AppToken: "as", ServerToken: "hs", SenderLocalpart: "opsbot"},
		HomeserverDomain: "example.org", HomeserverURL: srv.URL,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_ = as.StateStore.MarkRegistered(ctx, bot)
	_ = as.StateStore.SetMembership(ctx, room, bot, event.MembershipJoin)
	o := outbox.New(outbox.Options{AS: as, Log: zerolog.Nop()})
	rctx := outbox.WithRecovery(ctx, room, "$trigger")
	if got, err := o.Send(rctx, bot, room, event.EventMessage, map[string]any{"body": "pong"}, "opsbot.done"); err != nil || got != "$earlier" {
		t.Fatalf("recovered send of a done action: %s %v", got, err)
	}
	if got, err := o.Send(rctx, bot, room, event.EventMessage, map[string]any{"body": "pong"}, "opsbot.new"); err != nil || got != "$new" {
		t.Fatalf("recovered send of a new action: %s %v", got, err)
	}
	// Outside recovery, no lookup happens.
	if _, err := o.Send(ctx, bot, room, event.EventMessage, map[string]any{"body": "x"}, "opsbot.x"); err != nil {
		t.Fatal(err)
	}
	if puts != 2 || gets != 3+3 {
		t.Fatalf("puts=%d gets=%d, want 2 and 6 (3 pages to find the copy, 3 to reach the trigger's time)", puts, gets)
	}
}

func TestMarkerKeepsContent(t *testing.T) {
	bodies := make(chan map[string]any, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		bodies <- m
		fmt.Fprint(w, `{"event_id":"$x"}`)
	}))
	defer srv.Close()
	as, _ := mas.CreateFull(mas.CreateOpts{Registration: &mas.Registration{AppToken: "as", ServerToken: "hs", SenderLocalpart: "opsbot"},
		HomeserverDomain: "example.org", HomeserverURL: srv.URL})
	ctx := context.Background()
	_ = as.StateStore.MarkRegistered(ctx, bot)
	_ = as.StateStore.SetMembership(ctx, room, bot, event.MembershipJoin)
	o := outbox.New(outbox.Options{AS: as, Log: zerolog.Nop()})
	for _, content := range []any{&event.MessageEventContent{MsgType: event.MsgNotice, Body: "pong"}, map[string]any{}} {
		if _, err := o.Send(ctx, bot, room, event.EventMessage, content, "opsbot.t1"); err != nil {
			t.Fatal(err)
		}
		got := <-bodies
		if got[outbox.TxnMarker] != "opsbot.t1" {
			t.Fatalf("marker missing: %v", got)
		}
		if _, isMsg := content.(*event.MessageEventContent); isMsg && (got["body"] != "pong" || got["msgtype"] != "m.notice") {
			t.Fatalf("content changed: %v", got)
		}
	}
	if _, err := o.Send(ctx, bot, room, event.EventMessage, []int{1}, "t"); err == nil || !strings.Contains(err.Error(), "not a JSON object") {
		t.Fatalf("non-object content: %v", err)
	}
}

// fenceOver is a leadership term that has ended.
type fenceOver struct{}

func (fenceOver) Check(context.Context) error { return errors.New("a newer leader exists") }

// A process that is no longer the leader sends nothing, and does not retry.
func TestFencedOutboxSendsNothing(t *testing.T) {
	var puts int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		puts++
		mu.Unlock()
		fmt.Fprint(w, `{"event_id":"$x"}`)
	}))
	defer srv.Close()
	as, _ := mas.CreateFull(mas.CreateOpts{Registration: &mas.Registration{AppToken: "as", ServerToken: "hs", SenderLocalpart: "opsbot"},
		HomeserverDomain: "example.org", HomeserverURL: srv.URL})
	ctx := context.Background()
	_ = as.StateStore.MarkRegistered(ctx, bot)
	_ = as.StateStore.SetMembership(ctx, room, bot, event.MembershipJoin)
	o := outbox.New(outbox.Options{AS: as, Log: zerolog.Nop(), Fence: fenceOver{}})
	if _, err := o.Send(ctx, bot, room, event.EventMessage, map[string]any{"body": "x"}, "t"); !errors.Is(err, outbox.ErrNotLeader) {
		t.Fatalf("send under an ended term: %v, want ErrNotLeader", err)
	}
	if _, err := o.Redact(ctx, bot, room, "$e", "", "t2"); !errors.Is(err, outbox.ErrNotLeader) {
		t.Fatalf("redact under an ended term: %v, want ErrNotLeader", err)
	}
	if puts != 0 {
		t.Fatalf("%d requests reached the homeserver", puts)
	}
}

// doubtfulFence cannot confirm its term for its first doubts checks, then
// answers with then (nil: confirmed).
type doubtfulFence struct {
	mu     sync.Mutex
	doubts int
	then   error
	checks int
}

type connectionLost struct{}

func (connectionLost) Error() string     { return "cannot confirm leadership: connection terminated" }
func (connectionLost) Unconfirmed() bool { return true }

func (f *doubtfulFence) Check(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks++
	if f.checks <= f.doubts {
		return connectionLost{}
	}
	return f.then
}

// A send whose term the database cannot confirm right now waits and asks
// again, instead of failing: a failed send would let its event be marked
// done without its answer once the database is back. A term found over
// after the doubt still stops it.
func TestSendWaitsWhileTheTermIsInDoubt(t *testing.T) {
	for _, tc := range []struct {
		name  string
		then  error
		sends int
	}{{"confirmed", nil, 1}, {"over", errors.New("a newer leader exists"), 0}} {
		t.Run(tc.name, func(t *testing.T) {
			hs := &fakeHomeserver{}
			fence := &doubtfulFence{doubts: 3, then: tc.then}
			o := outbox.New(outbox.Options{AS: newAS(t, hs), Log: zerolog.Nop(), Fence: fence, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
			_, err := o.Send(context.Background(), bot, room, event.EventMessage, map[string]any{"body": "x"}, "t")
			if tc.then == nil && err != nil {
				t.Fatalf("send after the term was confirmed again: %v", err)
			}
			if tc.then != nil && !errors.Is(err, outbox.ErrNotLeader) {
				t.Fatalf("send under a term found over: %v, want ErrNotLeader", err)
			}
			if fence.checks != 4 || len(hs.txnIDs) != tc.sends {
				t.Fatalf("%d checks, %d sends; want 4 and %d", fence.checks, len(hs.txnIDs), tc.sends)
			}
		})
	}
}

// Whatever HTML a skill writes, the room gets the spec's subset; text
// that says @room pings nobody unless the content says so itself.
func TestSentMessagesAreSafe(t *testing.T) {
	hs := &fakeHomeserver{}
	o := setup(t, hs)
	ctx := context.Background()
	hostile := `<b>deploy</b> @room <script>steal()</script><a href="javascript:alert(1)" onclick="x()">log</a><img src="https://evil.example/t.png" alt="pic">`
	c := &event.MessageEventContent{MsgType: event.MsgNotice, Body: "deploy @room", Format: event.FormatHTML, FormattedBody: hostile}
	c.SetEdit("$old") // moves the content into m.new_content
	c.Body, c.Format, c.FormattedBody = "* deploy @room", event.FormatHTML, "* "+hostile
	if _, err := o.Send(ctx, bot, room, event.EventMessage, c, "opsbot.html1"); err != nil {
		t.Fatal(err)
	}
	// External skills' content arrives as raw JSON, not mautrix structs.
	raw := json.RawMessage(`{"msgtype":"m.notice","body":"x","format":"org.matrix.custom.html","formatted_body":"<iframe src=x></iframe><i>ok</i>","m.mentions":{"user_ids":["@a:example.org"]}}`)
	if _, err := o.Send(ctx, bot, room, event.EventMessage, raw, "opsbot.html2"); err != nil {
		t.Fatal(err)
	}
	const want = `<b>deploy</b> @room <a>log</a>pic`
	first := hs.bodies[0]
	newContent, _ := first["m.new_content"].(map[string]any)
	if first["formatted_body"] != "* "+want || newContent["formatted_body"] != want {
		t.Errorf("sent HTML %q / new content %q, want %q", first["formatted_body"], newContent["formatted_body"], want)
	}
	for name, m := range map[string]any{"message": first["m.mentions"], "m.new_content": newContent["m.mentions"]} {
		if mm, ok := m.(map[string]any); !ok || len(mm) != 0 {
			t.Errorf("%s m.mentions = %v, want {} (nobody pinged)", name, m)
		}
	}
	second := hs.bodies[1]
	if second["formatted_body"] != "<i>ok</i>" {
		t.Errorf("raw content's HTML sent as %q", second["formatted_body"])
	}
	if mm, _ := second["m.mentions"].(map[string]any); fmt.Sprint(mm["user_ids"]) != "[@a:example.org]" {
		t.Errorf("a skill's own m.mentions was changed: %v", second["m.mentions"])
	}
	if second[outbox.TxnMarker] != "opsbot.html2" {
		t.Errorf("marker lost: %v", second)
	}
}
