package leader_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/leader"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/store/storetest"
)

func openDB(t *testing.T, cfg config.Database) *dbutil.Database {
	t.Helper()
	st, err := store.Open(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.DB
}

func elector(db *dbutil.Database, service string, lease time.Duration) *leader.Database {
	return electorPolling(db, service, lease, 100*time.Millisecond)
}

func electorPolling(db *dbutil.Database, service string, lease, poll time.Duration) *leader.Database {
	return leader.New(leader.Options{DB: db, Service: service, Lease: lease, Poll: poll, Log: zerolog.Nop()})
}

func acquire(t *testing.T, e *leader.Database, within time.Duration) *leader.Term {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	term, err := e.Acquire(ctx)
	if err != nil {
		t.Fatalf("no leadership within %v: %v", within, err)
	}
	return term
}

func lost(t *testing.T, term *leader.Term, within time.Duration) error {
	t.Helper()
	select {
	case err := <-term.Lost():
		return err
	case <-time.After(within):
		t.Fatalf("the term did not end within %v", within)
		return nil
	}
}

// One leader at a time; other appservice IDs are independent; a clean
// release lets the standby take over at once.
func TestOneLeaderAtATime(t *testing.T) {
	cfg := storetest.Config(t, "postgres")
	a, b := elector(openDB(t, cfg), "ops", 10*time.Second), elector(openDB(t, cfg), "ops", 10*time.Second)
	ta := acquire(t, a, 5*time.Second)
	if ta.Epoch() != 1 {
		t.Fatalf("first epoch %d, want 1", ta.Epoch())
	}
	short, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := b.Acquire(short); err == nil {
		t.Fatal("two leaders at once")
	}
	other := acquire(t, elector(openDB(t, cfg), "other", 10*time.Second), 2*time.Second)
	other.Release(context.Background())

	start := time.Now()
	ta.Release(context.Background())
	tb := acquire(t, b, 5*time.Second)
	if tb.Epoch() != 2 {
		t.Fatalf("epoch after hand-over %d, want 2", tb.Epoch())
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("hand-over took %v", took)
	}
	if err := ta.Check(context.Background()); err == nil {
		t.Fatal("the released term still passes Check")
	}
}

// The leader's database session is terminated while the process lives on
// (a network blip, a pool reset): the leader stands down within a renewal,
// the standby fences it at once, and the old term fails Check and Hold.
func TestSessionLostFencesAtOnce(t *testing.T) {
	cfg := storetest.Config(t, "postgres")
	db := openDB(t, cfg)
	a, b := elector(db, "ops", 10*time.Second), elector(openDB(t, cfg), "ops", 10*time.Second)
	ta := acquire(t, a, 5*time.Second)
	var pid int
	if err := db.QueryRow(context.Background(), `SELECT pid FROM pg_locks WHERE locktype='advisory' AND granted LIMIT 1`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(context.Background(), `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tb := acquire(t, b, 5*time.Second)
	took := time.Since(start)
	if tb.Epoch() != ta.Epoch()+1 || took > 3*time.Second {
		t.Fatalf("standby took epoch %d after %v", tb.Epoch(), took)
	}
	time.Sleep(300 * time.Millisecond) // past the old term's last confirmation
	if err := ta.Check(context.Background()); err == nil {
		t.Fatal("the old term's Check passes")
	}
	if err := db.DoTxn(context.Background(), nil, func(ctx context.Context) error { return ta.Hold(ctx) }); err == nil {
		t.Fatal("the old term's Hold passes")
	}
	if err := lost(t, ta, 3*time.Second); err == nil {
		t.Fatal("old term ended without a reason")
	}
	if err := tb.Check(context.Background()); err != nil {
		t.Fatalf("new term's Check: %v", err)
	}
}

// The database answers too slowly to confirm the term (here: the leader
// row locked by another session for longer than Check waits): Check and
// Hold fail with an error Unconfirmed reports, the term holds, and both
// pass again once the database answers.
func TestSlowDatabaseLeavesTheTermInDoubt(t *testing.T) {
	cfg := storetest.Config(t, "postgres")
	db := openDB(t, cfg)
	ta := acquire(t, elector(db, "ops", 10*time.Second), 5*time.Second)
	locker, err := openDB(t, cfg).RawDB.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Rollback()
	if _, err := locker.Exec(`LOCK TABLE opsbot_leader IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // past the term's last confirmation
	err = ta.Check(context.Background())
	if err == nil || !leader.Unconfirmed(err) {
		t.Fatalf("Check while the database cannot answer: %v, want an unconfirmed term", err)
	}
	short, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = db.DoTxn(short, nil, func(ctx context.Context) error { return ta.Hold(ctx) })
	if err == nil || !leader.Unconfirmed(err) {
		t.Fatalf("Hold while the database cannot answer: %v, want an unconfirmed term", err)
	}
	if !ta.Valid() {
		t.Fatal("a term in doubt was taken for over")
	}
	if err := locker.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := ta.Check(context.Background()); err != nil {
		t.Fatalf("Check once the database answers: %v", err)
	}
	if err := db.DoTxn(context.Background(), nil, func(ctx context.Context) error { return ta.Hold(ctx) }); err != nil {
		t.Fatalf("Hold once the database answers: %v", err)
	}
}

// A leader that stops renewing (frozen: its session, and so its lock,
// stay) is replaced once its lease runs out, and knows it is over by its
// own clock even before the database tells it.
func TestFrozenLeaderReplacedAfterLease(t *testing.T) {
	cfg := storetest.Config(t, "postgres")
	const lease = 3 * time.Second
	a := electorPolling(openDB(t, cfg), "ops", lease, time.Hour) // never renews: as frozen as a process can be here
	b := elector(openDB(t, cfg), "ops", lease)
	ta := acquire(t, a, 5*time.Second)
	start := time.Now()
	tb := acquire(t, b, 2*lease)
	took := time.Since(start)
	if took < lease-time.Second || took > lease+2*time.Second {
		t.Fatalf("standby took over after %v, want about the lease (%v)", took, lease)
	}
	if ta.Valid() {
		t.Fatal("the frozen leader's term is still valid by its own clock after the lease")
	}
	if err := ta.Check(context.Background()); err == nil {
		t.Fatal("the frozen leader's Check passes")
	}
	if tb.Epoch() != ta.Epoch()+1 {
		t.Fatalf("epochs %d then %d", ta.Epoch(), tb.Epoch())
	}
}

// SQLite is one process: the term is taken at once, and a second process
// on the same file (a mistake) supersedes the first, which notices.
func TestSQLiteTakesAtOnce(t *testing.T) {
	cfg := storetest.Config(t, "sqlite")
	db := openDB(t, cfg)
	ta := acquire(t, elector(db, "ops", 10*time.Second), time.Second)
	tb := acquire(t, elector(db, "ops", 10*time.Second), time.Second)
	if tb.Epoch() != ta.Epoch()+1 {
		t.Fatalf("epochs %d then %d", ta.Epoch(), tb.Epoch())
	}
	if err := lost(t, ta, 2*time.Second); !errors.Is(err, leader.ErrFenced) {
		t.Fatalf("first term ended with %v", err)
	}
	err := db.DoTxn(context.Background(), nil, func(ctx context.Context) error { return tb.Hold(ctx) })
	if err != nil {
		t.Fatalf("Hold of the current term: %v", err)
	}
}
