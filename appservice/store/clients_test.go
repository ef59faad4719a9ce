package store_test

import (
	"context"
	"errors"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store"
)

// A client-mode bot's login is kept; a new login of the same device keeps
// its /sync position, a login of another device starts over.
func TestClientSession(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		defer st.Close()
		bot := id.UserID("@helper:example.org")
		if s, err := st.ClientSession(ctx, bot); err != nil || s != nil {
			t.Fatalf("before any login: %+v %v", s, err)
		}
		if err := st.SaveLogin(ctx, bot, "DEV1", "token1"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.RecordSync(ctx, bot, "", "s1", nil, leaderOf(1)); err != nil {
			t.Fatal(err)
		}
		if err := st.SaveLogin(ctx, bot, "DEV1", "token2"); err != nil {
			t.Fatal(err)
		}
		if s, _ := st.ClientSession(ctx, bot); s == nil || s.DeviceID != "DEV1" || s.AccessToken != "token2" || s.NextBatch != "s1" {
			t.Fatalf("a new token for the same device: %+v", s)
		}
		if err := st.SaveLogin(ctx, bot, "DEV2", "token3"); err != nil {
			t.Fatal(err)
		}
		if s, _ := st.ClientSession(ctx, bot); s == nil || s.DeviceID != "DEV2" || s.NextBatch != "" {
			t.Fatalf("another device must sync from the start: %+v", s)
		}
	})
}

// loggedIn opens a store in which a client-mode bot has logged in (device
// DEV1), closed when the test ends.
func loggedIn(t *testing.T, cfg config.Database) (*store.Store, id.UserID) {
	t.Helper()
	st := open(t, cfg)
	t.Cleanup(func() { st.Close() })
	bot := id.UserID("@helper:example.org")
	if err := st.SaveLogin(context.Background(), bot, "DEV1", "token"); err != nil {
		t.Fatal(err)
	}
	return st, bot
}

// A /sync batch and the position after it are recorded together or not at
// all: from a position that moved, under a term that is over, or when an
// event cannot be written, neither changes.
func TestRecordSyncIsOneStep(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st, bot := loggedIn(t, cfg)
		got, err := st.RecordSync(ctx, bot, "", "s1", events("a", 3), leaderOf(1))
		if err != nil || len(got) != 3 || got[0].Seq == 0 {
			t.Fatalf("first batch: %v %v", got, err)
		}
		position := func() string {
			s, err := st.ClientSession(ctx, bot)
			if err != nil || s == nil {
				t.Fatalf("session: %+v %v", s, err)
			}
			return s.NextBatch
		}
		// Another process moved on (or this one's view is stale).
		if _, err := st.RecordSync(ctx, bot, "s0", "s2", events("b", 2), leaderOf(1)); !errors.Is(err, store.ErrSyncMoved) {
			t.Fatalf("from a stale position: %v", err)
		}
		// The term is over.
		if _, err := st.RecordSync(ctx, bot, "s1", "s2", events("b", 2), &fence{epoch: 1, over: true}); !errors.Is(err, store.ErrFenced) {
			t.Fatalf("under a term that is over: %v", err)
		}
		// An event the database refuses (Postgres takes no NUL in text;
		// SQLite takes it, so there the batch goes in).
		if cfg.Type == "postgres" {
			bad := events("c", 2)
			bad[1].Payload = []byte("a\x00b")
			if _, err := st.RecordSync(ctx, bot, "s1", "s2", bad, leaderOf(1)); err == nil {
				t.Fatal("Postgres took a NUL byte in a text column")
			}
		}
		if position() != "s1" {
			t.Fatalf("refused batches moved the position to %q", position())
		}
		pending, err := st.PendingEvents(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range pending {
			if ev.EventID == "$b-0" || ev.EventID == "$c-0" {
				t.Fatalf("an event of a refused batch is in the inbox: %s", ev.EventID)
			}
		}
		// The same events again (two bots in one room): recorded once.
		got, err = st.RecordSync(ctx, bot, position(), "s3", events("a", 3), leaderOf(1))
		if err != nil || len(got) != 0 || position() != "s3" {
			t.Fatalf("events already in the inbox: %v %v at %q", got, err, position())
		}
	})
}

// unsureFence cannot say whether its term holds (its database session was
// ended, say).
type unsureFence struct{}

type unsure struct{}

func (unsure) Error() string     { return "connection terminated" }
func (unsure) Unconfirmed() bool { return true }

func (unsureFence) Epoch() int64               { return 1 }
func (unsureFence) Hold(context.Context) error { return unsure{} }

// A term that cannot be confirmed is not a term that is over: every
// fenced write fails with a plain error, to be tried again (sends wait
// for a confirmed term, so nothing marked done later lost its answer).
func TestUnconfirmedTermIsNotFenced(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st, bot := loggedIn(t, cfg)
		if _, err := st.RecordSync(ctx, bot, "", "s1", events("a", 1), unsureFence{}); err == nil || errors.Is(err, store.ErrFenced) {
			t.Fatalf("RecordSync: %v, want a plain error", err)
		}
		rec, _, _, err := st.RecordTransaction(ctx, "t1", events("b", 1), leaderOf(1))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.ClaimPending(ctx, unsureFence{}, 10); err == nil || errors.Is(err, store.ErrFenced) {
			t.Fatalf("ClaimPending: %v, want a plain error", err)
		}
		if err := st.MarkDone(ctx, unsureFence{}, []int64{rec[0].Seq}); err == nil || errors.Is(err, store.ErrFenced) {
			t.Fatalf("MarkDone: %v, want a plain error", err)
		}
		if left, err := st.ClaimPending(ctx, leaderOf(2), 10); err != nil || len(left) != 1 || !left[0].Recovered {
			t.Fatalf("after a mark under a term in doubt, the next leader gets %v (%v), want the event again", left, err)
		}
	})
}
