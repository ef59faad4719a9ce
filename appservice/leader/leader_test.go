package leader_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/rs/zerolog"

	"opsbot/appservice/leader"
	"opsbot/appservice/store/storetest"
)

func open(t *testing.T, uri string) *sql.DB {
	db, err := sql.Open("pgx", uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestOneLeaderAndFailover(t *testing.T) {
	uri := storetest.NewPostgresDB(t)
	key := leader.KeyFor("test-" + t.Name())
	a := &leader.Postgres{DB: open(t, uri), Key: key, Poll: 100 * time.Millisecond, Log: zerolog.Nop()}
	b := &leader.Postgres{DB: open(t, uri), Key: key, Poll: 100 * time.Millisecond, Log: zerolog.Nop()}
	ctx := context.Background()
	lostA, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := b.Acquire(short); err == nil {
		t.Fatal("two leaders at once")
	}
	// Another installation (other appservice ID) is independent.
	c := &leader.Postgres{DB: open(t, uri), Key: leader.KeyFor("other"), Poll: 100 * time.Millisecond, Log: zerolog.Nop()}
	other, cancelOther := context.WithTimeout(ctx, 2*time.Second)
	defer cancelOther()
	if _, err := c.Acquire(other); err != nil {
		t.Fatalf("a different appservice ID must not compete: %v", err)
	}
	c.Release()

	// The leader's connection dies (as when its process is killed): it is
	// told, and the standby takes over.
	var pid int
	admin := open(t, uri)
	if err := admin.QueryRow(`SELECT pid FROM pg_locks WHERE locktype='advisory' AND granted LIMIT 1`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(`SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-lostA:
		if err == nil {
			t.Fatal("lost without a reason")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the old leader was not told it lost leadership")
	}
	start := time.Now()
	takeover, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	if _, err := b.Acquire(takeover); err != nil {
		t.Fatalf("standby did not take over: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("takeover took %v", took)
	}
	b.Release()
	a.Release()
}

func TestReleaseHandsOver(t *testing.T) {
	uri := storetest.NewPostgresDB(t)
	key := leader.KeyFor(t.Name())
	a := &leader.Postgres{DB: open(t, uri), Key: key, Poll: 50 * time.Millisecond, Log: zerolog.Nop()}
	b := &leader.Postgres{DB: open(t, uri), Key: key, Poll: 50 * time.Millisecond, Log: zerolog.Nop()}
	if _, err := a.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { _, err := b.Acquire(context.Background()); got <- err }()
	time.Sleep(200 * time.Millisecond)
	a.Release()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("release did not hand leadership over")
	}
	b.Release()
}
