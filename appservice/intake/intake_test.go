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

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/intake"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/store/storetest"
)

const hsToken = "hs-token-for-tests-0123456789"

type fixture struct {
	srv       *httptest.Server
	st        *store.Store
	mu        sync.Mutex
	delivered []store.InboxEvent
	outcomes  []string
	notLeader atomic.Bool
}

func newFixture(t *testing.T, dbType string) *fixture {
	t.Helper()
	st := storetest.Open(t, dbType)
	f := &fixture{st: st}
	h := intake.New(intake.Options{
		HSToken: hsToken, MaxBodyBytes: 64 << 10, Store: recorder{st, &f.notLeader}, Log: zerolog.Nop(),
		Deliver: func(evs []store.InboxEvent) {
			f.mu.Lock()
			f.delivered = append(f.delivered, evs...)
			f.mu.Unlock()
		},
		IsOurUser: func(u id.UserID) bool { return u == "@opsbot:example.org" },
		Observe: func(outcome string, n int) {
			f.mu.Lock()
			f.outcomes = append(f.outcomes, outcome)
			f.mu.Unlock()
		},
	})
	mux := http.NewServeMux()
	h.Register(mux)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) do(t *testing.T, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func txnBody(ids ...string) string {
	var evs []string
	for _, eid := range ids {
		evs = append(evs, fmt.Sprintf(`{"type":"m.room.message","event_id":%q,"room_id":"!r:example.org","sender":"@alice:example.org","content":{"msgtype":"m.text","body":"!ping"}}`, eid))
	}
	return `{"events":[` + strings.Join(evs, ",") + `]}`
}

func (f *fixture) pending(t *testing.T) int {
	n, err := f.st.CountPending(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestTransactionRecordedThenAcknowledged(t *testing.T) {
	for _, d := range storetest.Dialects {
		t.Run(d, func(t *testing.T) {
			f := newFixture(t, d)
			code, body := f.do(t, "PUT", "/_matrix/app/v1/transactions/1", hsToken, txnBody("$a", "$b"))
			if code != 200 || len(body) != 0 {
				t.Fatalf("got %d %v", code, body)
			}
			if f.pending(t) != 2 || len(f.delivered) != 2 || f.delivered[0].EventID != "$a" {
				t.Fatalf("pending=%d delivered=%+v", f.pending(t), f.delivered)
			}
			// The pipeline gets the event as intake decoded it, content
			// and all, and does not decode it again.
			if evt := f.delivered[1].Decoded; evt == nil || evt.ID != "$b" || evt.Content.AsMessage().Body != "!ping" {
				t.Fatalf("delivered without its decoded event: %+v", evt)
			}
			// A retried transaction is acknowledged and not delivered again.
			code, _ = f.do(t, "PUT", "/_matrix/app/v1/transactions/1", hsToken, txnBody("$a", "$b"))
			if code != 200 || len(f.delivered) != 2 || f.pending(t) != 2 {
				t.Fatalf("replay: code=%d delivered=%d", code, len(f.delivered))
			}
			// The legacy path works the same.
			code, _ = f.do(t, "PUT", "/transactions/2", hsToken, txnBody("$c"))
			if code != 200 || len(f.delivered) != 3 {
				t.Fatalf("legacy path: %d %d", code, len(f.delivered))
			}
			if got := strings.Join(f.outcomes, ","); got != "ok,duplicate,ok" {
				t.Fatalf("outcomes %s", got)
			}
		})
	}
}

func TestBadRequestsRecordNothing(t *testing.T) {
	f := newFixture(t, "sqlite")
	cases := []struct {
		name, token, body string
		code              int
		errcode           string
	}{
		{"no token", "", txnBody("$a"), 401, "M_UNAUTHORIZED"},
		{"wrong token", "nope", txnBody("$a"), 403, "M_FORBIDDEN"},
		{"not JSON", hsToken, `{"events": [`, 400, "M_NOT_JSON"},
		{"JSON but not an object", hsToken, `[1,2]`, 400, "M_NOT_JSON"},
		{"oversized", hsToken, `{"events":[],"pad":"` + strings.Repeat("x", 70<<10) + `"}`, 413, "M_TOO_LARGE"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := f.do(t, "PUT", fmt.Sprintf("/_matrix/app/v1/transactions/bad%d", i), c.token, c.body)
			if code != c.code || body["errcode"] != c.errcode || body["error"] == "" {
				t.Fatalf("got %d %v, want %d %s", code, body, c.code, c.errcode)
			}
		})
	}
	if f.pending(t) != 0 || len(f.delivered) != 0 {
		t.Fatalf("bad requests recorded events: %d", f.pending(t))
	}
	// The transaction IDs were not burnt: a good retry goes through.
	if code, _ := f.do(t, "PUT", "/_matrix/app/v1/transactions/bad2", hsToken, txnBody("$ok")); code != 200 || f.pending(t) != 1 {
		t.Fatalf("retry after bad body: %d pending=%d", code, f.pending(t))
	}
}

func TestMalformedEventsAreDroppedNotFatal(t *testing.T) {
	f := newFixture(t, "sqlite")
	body := `{"events":[42, {"type":"m.room.message"}, {"event_id":"$x","room_id":"!r:x"}, ` +
		`{"type":"m.room.message","event_id":"$bad","room_id":"!r:x","content":"not an object"}, ` +
		`{"type":"m.room.message","event_id":"$good","room_id":"!r:x","content":{"body":"hi"}}],` +
		`"ephemeral":[{"type":"m.typing","room_id":"!r:x","content":{"user_ids":[]}}]}`
	code, _ := f.do(t, "PUT", "/_matrix/app/v1/transactions/m", hsToken, body)
	if code != 200 {
		t.Fatalf("code %d", code)
	}
	if len(f.delivered) != 2 || f.delivered[0].EventID != "$good" || f.delivered[1].Kind != store.KindEphemeral {
		t.Fatalf("delivered %+v", f.delivered)
	}
}

func TestQueries(t *testing.T) {
	f := newFixture(t, "sqlite")
	if code, _ := f.do(t, "GET", "/_matrix/app/v1/users/@opsbot:example.org", hsToken, ""); code != 200 {
		t.Errorf("our user: %d", code)
	}
	if code, body := f.do(t, "GET", "/_matrix/app/v1/users/@someone:example.org", hsToken, ""); code != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Errorf("other user: %d %v", code, body)
	}
	if code, _ := f.do(t, "GET", "/_matrix/app/v1/rooms/%23ops:example.org", hsToken, ""); code != 404 {
		t.Errorf("alias: %d", code)
	}
	if code, _ := f.do(t, "GET", "/_matrix/app/v1/users/@opsbot:example.org", "", ""); code != 401 {
		t.Errorf("user query without token: %d", code)
	}
	if code, _ := f.do(t, "POST", "/_matrix/app/v1/ping", hsToken, `{"transaction_id":"x"}`); code != 200 {
		t.Errorf("ping: %d", code)
	}
	if code, _ := f.do(t, "POST", "/_matrix/app/v1/ping", "wrong", `{}`); code != 403 {
		t.Errorf("ping with wrong token: %d", code)
	}
}

func TestLegacyQueryToken(t *testing.T) {
	f := newFixture(t, "sqlite")
	if code, _ := f.do(t, "PUT", "/transactions/q?access_token="+hsToken, "", txnBody("$q")); code != 200 || f.pending(t) != 1 {
		t.Fatalf("access_token query: %d", code)
	}
}

// Dendrite re-sends a failed transaction under the same ID with newer events
// appended; those must be delivered, the old ones not again.
func TestReusedTransactionIDWithNewEvents(t *testing.T) {
	f := newFixture(t, "sqlite")
	if code, _ := f.do(t, "PUT", "/_matrix/app/v1/transactions/g", hsToken, txnBody("$a")); code != 200 {
		t.Fatal(code)
	}
	if code, _ := f.do(t, "PUT", "/_matrix/app/v1/transactions/g", hsToken, txnBody("$a", "$b")); code != 200 {
		t.Fatal(code)
	}
	if len(f.delivered) != 2 || f.delivered[1].EventID != "$b" {
		t.Fatalf("delivered %+v", f.delivered)
	}
	if got := strings.Join(f.outcomes, ","); got != "ok,duplicate_grown" {
		t.Fatalf("outcomes %s", got)
	}
}

// recorder records under a leadership term that holds until notLeader is
// set, as appservice.Service's does.
type recorder struct {
	st        *store.Store
	notLeader *atomic.Bool
}

func (r recorder) RecordTransaction(ctx context.Context, txnID string, evs []store.InboxEvent) ([]store.InboxEvent, bool, bool, error) {
	return r.st.RecordTransaction(ctx, txnID, evs, term{r.notLeader})
}

type term struct{ over *atomic.Bool }

func (term) Epoch() int64 { return 1 }

func (t term) Hold(context.Context) error {
	if t.over.Load() {
		return errors.New("a newer term exists")
	}
	return nil
}

// A process that is no longer the leader (but does not know yet) still
// records what it is sent, durably, and acknowledges it; it does not
// handle it: the leader picks it up from the inbox.
func TestRecordedButNotClaimedAfterLeadershipEnds(t *testing.T) {
	f := newFixture(t, "sqlite")
	f.notLeader.Store(true)
	body := `{"events":[{"type":"m.room.message","event_id":"$late","room_id":"!r:x","sender":"@a:x","content":{}}]}`
	if code, _ := f.do(t, "PUT", "/_matrix/app/v1/transactions/late", hsToken, body); code != 200 {
		t.Fatalf("HTTP %d", code)
	}
	f.mu.Lock()
	delivered := len(f.delivered)
	f.mu.Unlock()
	if delivered != 0 {
		t.Fatal("delivered an event this process did not claim")
	}
	if n, _ := f.st.CountPending(context.Background()); n != 1 {
		t.Fatalf("%d events waiting in the inbox, want 1", n)
	}
}
