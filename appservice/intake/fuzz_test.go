package intake

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/store"
)

// memRecorder records in memory, for fuzzing the handler without a database.
type memRecorder struct {
	txns   map[string]bool
	events []store.InboxEvent
}

func (m *memRecorder) RecordTransaction(ctx context.Context, txnID string, evs []store.InboxEvent) ([]store.InboxEvent, bool, bool, error) {
	dup := m.txns[txnID]
	m.txns[txnID] = true
	m.events = append(m.events, evs...)
	return evs, true, dup, nil
}

// FuzzTransaction feeds arbitrary bodies to the transaction endpoint: it
// never panics, answers only 200 or 400, and records only well-formed events.
func FuzzTransaction(f *testing.F) {
	seeds := []string{
		`{"events":[{"type":"m.room.message","event_id":"$a","room_id":"!r:x","content":{"body":"hi"}}]}`,
		`{"events":[],"ephemeral":[{"type":"m.typing","room_id":"!r:x"}]}`,
		`{"de.sorunome.msc2409.to_device":[{"type":"m.room_key","to_user_id":"@b:x","to_device_id":"D"}]}`,
		`{"org.matrix.msc3202.device_lists":{"changed":["@a:x"]},"org.matrix.msc3202.device_one_time_keys_count":{"@b:x":{"D":{"signed_curve25519":3}}}}`,
		`{"events":[42,null,"x",{"type":7}]}`, `[]`, `null`, `{`, ``,
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		rec := &memRecorder{txns: map[string]bool{}}
		h := New(Options{HSToken: "tok", MaxBodyBytes: 1 << 20, Store: rec, Log: zerolog.Nop(),
			Deliver: func([]store.InboxEvent) {}, IsOurUser: func(id.UserID) bool { return false },
			DeviceInfo: func(*mautrix.DeviceLists, map[id.UserID]map[id.DeviceID]mautrix.OTKCount) {}})
		mux := http.NewServeMux()
		h.Register(mux)
		req := httptest.NewRequest(http.MethodPut, "/_matrix/app/v1/transactions/t1", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer tok")
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		if w.Code != 200 && w.Code != 400 {
			t.Fatalf("HTTP %d for %q", w.Code, body)
		}
		for _, ev := range rec.events {
			if ev.Kind == store.KindPDU && (ev.EventID == "" || ev.RoomID == "") {
				t.Fatalf("recorded a room event without IDs: %+v", ev)
			}
		}
	})
}
