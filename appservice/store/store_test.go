package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/store/storetest"
)

func open(t *testing.T, cfg config.Database) *store.Store {
	t.Helper()
	st, err := store.Open(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Upgrade(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st
}

func events(txn string, n int) []store.InboxEvent {
	out := make([]store.InboxEvent, n)
	for i := range out {
		out[i] = store.InboxEvent{
			EventID: fmt.Sprintf("$%s-%d", txn, i),
			RoomID:  "!room:example.org",
			Kind:    store.KindPDU,
			Payload: []byte(fmt.Sprintf(`{"type":"m.room.message","event_id":"$%s-%d"}`, txn, i)),
		}
	}
	return out
}

func forEachDialect(t *testing.T, fn func(t *testing.T, cfg config.Database)) {
	for _, d := range storetest.Dialects {
		t.Run(d, func(t *testing.T) { fn(t, storetest.Config(t, d)) })
	}
}

func TestTransactionDeduplicationSurvivesRestart(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		rec, _, dup, err := st.RecordTransaction(ctx, "txn1", events("a", 3), leaderOf(1))
		if err != nil || dup || len(rec) != 3 {
			t.Fatalf("first record: rec=%d dup=%v err=%v", len(rec), dup, err)
		}
		if rec[0].Seq >= rec[1].Seq || rec[1].Seq >= rec[2].Seq {
			t.Fatalf("sequence numbers not increasing: %d %d %d", rec[0].Seq, rec[1].Seq, rec[2].Seq)
		}
		rec, _, dup, err = st.RecordTransaction(ctx, "txn1", events("a", 3), leaderOf(1))
		if err != nil || !dup || len(rec) != 0 {
			t.Fatalf("replay: rec=%d dup=%v err=%v", len(rec), dup, err)
		}
		st.Close()

		// A new process sees the same transaction as a duplicate too.
		st = open(t, cfg)
		defer st.Close()
		_, _, dup, err = st.RecordTransaction(ctx, "txn1", events("a", 3), leaderOf(1))
		if err != nil || !dup {
			t.Fatalf("replay after reopen: dup=%v err=%v", dup, err)
		}
		pending, err := st.PendingEvents(ctx, 100)
		if err != nil || len(pending) != 3 {
			t.Fatalf("pending after reopen: %d, %v", len(pending), err)
		}
		if string(pending[1].Payload) != string(events("a", 3)[1].Payload) || pending[1].TxnID != "txn1" {
			t.Fatalf("payload not kept verbatim: %+v", pending[1])
		}
	})
}

func TestEventInTwoTransactionsIsRecordedOnce(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		defer st.Close()
		if _, _, _, err := st.RecordTransaction(ctx, "t1", events("x", 2), leaderOf(1)); err != nil {
			t.Fatal(err)
		}
		both := append(events("x", 2), events("y", 1)...)
		rec, _, dup, err := st.RecordTransaction(ctx, "t2", both, leaderOf(1))
		if err != nil || dup {
			t.Fatal(dup, err)
		}
		if len(rec) != 1 || rec[0].EventID != "$y-0" {
			t.Fatalf("want only the new event recorded, got %+v", rec)
		}
		// Dendrite re-sends a failed transaction under the same ID with newer
		// events appended: the new ones must not be lost.
		grown := append(events("x", 2), events("z", 2)...)
		grown = append(grown, store.InboxEvent{Kind: store.KindEphemeral, RoomID: "!r:x", Payload: []byte(`{"type":"m.typing"}`)})
		rec, _, dup, err = st.RecordTransaction(ctx, "t1", grown, leaderOf(1))
		if err != nil || !dup {
			t.Fatal(dup, err)
		}
		if len(rec) != 2 || rec[0].EventID != "$z-0" || rec[1].EventID != "$z-1" {
			t.Fatalf("grown retry: want the two new room events, got %+v", rec)
		}
		// Ephemeral events have no ID and are never de-duplicated by it.
		eph := []store.InboxEvent{{Kind: store.KindEphemeral, RoomID: "!r:x", Payload: []byte(`{"type":"m.typing"}`)}}
		for _, txn := range []string{"t3", "t4"} {
			rec, _, _, err := st.RecordTransaction(ctx, txn, eph, leaderOf(1))
			if err != nil || len(rec) != 1 {
				t.Fatalf("ephemeral in %s: %d %v", txn, len(rec), err)
			}
		}
	})
}

func TestMarkDoneAndPrune(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		defer st.Close()
		rec, _, _, err := st.RecordTransaction(ctx, "t1", events("a", 3), leaderOf(1))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.MarkDone(ctx, leaderOf(1), []int64{rec[0].Seq}); err != nil {
			t.Fatal(err)
		}
		pending, _ := st.PendingEvents(ctx, 100)
		if len(pending) != 2 || pending[0].Seq != rec[1].Seq {
			t.Fatalf("pending after mark: %+v", pending)
		}
		if n, _ := st.CountPending(ctx); n != 2 {
			t.Fatalf("CountPending = %d", n)
		}
		// Nothing is old enough yet.
		if ev, tx, err := st.Prune(ctx, time.Now().Add(-time.Hour)); err != nil || ev != 0 || tx != 0 {
			t.Fatalf("prune recent: %d %d %v", ev, tx, err)
		}
		ev, tx, err := st.Prune(ctx, time.Now().Add(time.Hour))
		if err != nil || ev != 1 || tx != 1 {
			t.Fatalf("prune: events=%d txns=%d err=%v", ev, tx, err)
		}
		if pending, _ := st.PendingEvents(ctx, 100); len(pending) != 2 {
			t.Fatalf("prune must keep unhandled events, have %d", len(pending))
		}
	})
}

func TestMemory(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		defer st.Close()
		m := st.Memory("remind", "!a:x")
		other := st.Memory("remind", "!b:x")
		type item struct{ N int }
		if found, err := m.Get(ctx, "k", &item{}); found || err != nil {
			t.Fatalf("empty get: %v %v", found, err)
		}
		if err := m.Put(ctx, "k", item{1}); err != nil {
			t.Fatal(err)
		}
		if err := m.Put(ctx, "k", item{2}); err != nil {
			t.Fatal(err)
		}
		var got item
		if found, err := m.Get(ctx, "k", &got); !found || err != nil || got.N != 2 {
			t.Fatalf("get: %v %v %+v", found, err, got)
		}
		if found, _ := other.Get(ctx, "k", &got); found {
			t.Fatal("memory leaked between rooms")
		}
		if found, _ := st.Memory("echo", "!a:x").Get(ctx, "k", &got); found {
			t.Fatal("memory leaked between skills")
		}
		_ = m.Put(ctx, "a", 1)
		keys, err := m.Keys(ctx)
		if err != nil || strings.Join(keys, ",") != "a,k" {
			t.Fatalf("keys: %v %v", keys, err)
		}
		if err := m.Delete(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if found, _ := m.Get(ctx, "k", &got); found {
			t.Fatal("deleted key still there")
		}
		if err := m.Put(ctx, strings.Repeat("k", 256), 1); err == nil {
			t.Fatal("overlong key accepted")
		}
		if err := m.Put(ctx, "big", strings.Repeat("x", store.MaxMemoryValueBytes)); err == nil {
			t.Fatal("oversized value accepted")
		}
	})
}

func TestBotProfile(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		defer st.Close()
		if n, a, err := st.BotProfile(ctx, "@bot:x"); n != "" || a != "" || err != nil {
			t.Fatalf("unset profile: %q %q %v", n, a, err)
		}
		_ = st.SetBotProfile(ctx, "@bot:x", "Bot", "mxc://x/y")
		_ = st.SetBotProfile(ctx, "@bot:x", "Bot 2", "mxc://x/y")
		if n, a, _ := st.BotProfile(ctx, "@bot:x"); n != "Bot 2" || a != "mxc://x/y" {
			t.Fatalf("profile: %q %q", n, a)
		}
	})
}

func TestPublishedDescriptions(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		defer st.Close()
		_ = st.SetPublishedDescription(ctx, "!r:x", "@bot:x", "k1", "d1")
		_ = st.SetPublishedDescription(ctx, "!r:x", "@bot:x", "k2", "d2")
		_ = st.SetPublishedDescription(ctx, "!r:x", "@bot:x", "k1", "d1b")
		_ = st.SetPublishedDescription(ctx, "!r:x", "@other:x", "k3", "d3")
		_ = st.SetPublishedDescription(ctx, "!r:x", "@bot:x", "k2", "")
		got, err := st.PublishedDescriptions(ctx, "!r:x", "@bot:x")
		if err != nil || len(got) != 1 || got["k1"] != "d1b" {
			t.Fatalf("published: %v %v", got, err)
		}
	})
}

func TestVersion(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st, err := store.Open(cfg, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		cur, latest, err := st.Version(ctx)
		if err != nil || cur != 0 || latest < 1 {
			t.Fatalf("before upgrade: %d %d %v", cur, latest, err)
		}
		if err := st.Upgrade(ctx); err != nil {
			t.Fatal(err)
		}
		if cur, latest, _ := st.Version(ctx); cur != latest {
			t.Fatalf("after upgrade: %d of %d", cur, latest)
		}
	})
}

func TestSQLiteDSN(t *testing.T) {
	dsn := store.SQLiteDSN("/var/lib/opsbot/opsbot.db")
	for _, want := range []string{"file:/var/lib/opsbot/opsbot.db?", "journal_mode%28WAL%29", "synchronous%28FULL%29", "_txlock=immediate"} {
		if !strings.Contains(dsn, want) {
			t.Errorf("DSN %q lacks %q", dsn, want)
		}
	}
	// '#' and '%' in a plain path are part of the file name: two paths
	// that differ after a '#' are two databases.
	dir := t.TempDir()
	for _, name := range []string{"a#1", "a#2", "c%41"} {
		path := filepath.Join(dir, name, "opsbot.db")
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		st, err := store.Open(config.Database{Type: "sqlite", URI: path}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Upgrade(context.Background()); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		st.Close()
		if _, err := os.Stat(path); err != nil {
			t.Errorf("no database at %s: %v", path, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); err == nil {
		t.Errorf("a database was created at %s, the path cut at '#'", filepath.Join(dir, "a"))
	}
	// A pragma the admin set is kept, not doubled.
	dsn = store.SQLiteDSN("file:x.db?_pragma=synchronous(NORMAL)")
	if strings.Count(dsn, "synchronous") != 1 || !strings.Contains(dsn, "NORMAL") {
		t.Errorf("admin pragma not respected: %q", dsn)
	}
}

func TestRoomUpgradeBookkeeping(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		defer st.Close()
		_ = st.Memory("notes", "!old:x").Put(ctx, "notes", []string{"a"})
		_ = st.Memory("notes", "!new:x").Put(ctx, "other", 1)
		_ = st.Memory("notes", "!new:x").Put(ctx, "notes", []string{"newer"})
		if err := st.RecordUpgrade(ctx, "!old:x", "!new:x"); err != nil {
			t.Fatal(err)
		}
		if old, err := st.UpgradeOf(ctx, "!new:x"); err != nil || old != "!old:x" {
			t.Fatalf("UpgradeOf: %q %v", old, err)
		}
		_ = st.Memory("remind", "!old:x").Put(ctx, "r", 2)
		moved, err := st.MoveMemory(ctx, "!old:x", "!new:x")
		if err != nil || moved != 1 {
			t.Fatalf("moved %d, %v", moved, err)
		}
		var notes []string
		_, _ = st.Memory("notes", "!new:x").Get(ctx, "notes", &notes)
		if len(notes) != 1 || notes[0] != "newer" {
			t.Fatalf("the new room's own value must win: %v", notes)
		}
		var r int
		if found, _ := st.Memory("remind", "!new:x").Get(ctx, "r", &r); !found || r != 2 {
			t.Fatal("memory did not move")
		}
		if keys, _ := st.Memory("notes", "!old:x").Keys(ctx); len(keys) != 0 {
			t.Fatalf("old room still has %v", keys)
		}
		_ = st.FinishUpgrade(ctx, "!new:x")
		if old, _ := st.UpgradeOf(ctx, "!new:x"); old != "" {
			t.Fatal("upgrade not forgotten")
		}
	})
}

func TestRecordTransactionInBatches(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		defer st.Close()
		if _, _, _, err := st.RecordTransaction(ctx, "t1", events("old", 3), leaderOf(1)); err != nil {
			t.Fatal(err)
		}
		// 1,200 events over three INSERTs: new room events, ephemeral
		// events without an ID, an event already recorded by t1, and an
		// event twice in this transaction, once in the same chunk and once
		// across chunks.
		var in, want []store.InboxEvent
		fresh := events("new", 1200)
		for i := range fresh {
			switch {
			case i%7 == 3:
				ev := store.InboxEvent{Kind: store.KindEphemeral, RoomID: "!r:x", Payload: []byte(fmt.Sprintf(`{"type":"m.typing","n":%d}`, i))}
				in = append(in, ev)
				want = append(want, ev)
			case i == 10:
				in = append(in, events("old", 3)[1])
			case i == 20 || i == 700:
				in = append(in, fresh[5]) // recorded at i == 5
			default:
				in = append(in, fresh[i])
				want = append(want, fresh[i])
			}
		}
		rec, _, dup, err := st.RecordTransaction(ctx, "t2", in, leaderOf(1))
		if err != nil || dup {
			t.Fatal(dup, err)
		}
		if len(rec) != len(want) {
			t.Fatalf("recorded %d events, want %d", len(rec), len(want))
		}
		for i := range rec {
			if rec[i].EventID != want[i].EventID || string(rec[i].Payload) != string(want[i].Payload) || rec[i].TxnID != "t2" {
				t.Fatalf("event %d: got %s %s, want %s %s", i, rec[i].EventID, rec[i].Payload, want[i].EventID, want[i].Payload)
			}
			if i > 0 && rec[i].Seq <= rec[i-1].Seq {
				t.Fatalf("sequence numbers not in event order at %d: %d after %d", i, rec[i].Seq, rec[i-1].Seq)
			}
		}
		// The inbox holds each recorded event under its sequence number.
		pending, err := st.PendingEvents(ctx, 10000)
		if err != nil || len(pending) != 3+len(want) {
			t.Fatalf("pending: %d, %v", len(pending), err)
		}
		for i, p := range pending[3:] {
			if p.Seq != rec[i].Seq || string(p.Payload) != string(rec[i].Payload) || p.EventID != rec[i].EventID {
				t.Fatalf("inbox row %d: %+v, recorded %+v", i, p, rec[i])
			}
		}
		// A retry of t2 with 600 more events appended: only the new room
		// events are recorded, its ephemeral events are not.
		grown := append(append([]store.InboxEvent{}, in...), events("more", 600)...)
		grown = append(grown, store.InboxEvent{Kind: store.KindEphemeral, RoomID: "!r:x", Payload: []byte(`{"type":"m.typing"}`)})
		rec, _, dup, err = st.RecordTransaction(ctx, "t2", grown, leaderOf(1))
		if err != nil || !dup || len(rec) != 600 || rec[0].EventID != "$more-0" || rec[599].EventID != "$more-599" {
			t.Fatalf("grown retry: dup=%v err=%v recorded=%d", dup, err, len(rec))
		}
		// Only ephemeral events: all recorded, in order.
		eph := make([]store.InboxEvent, 3)
		for i := range eph {
			eph[i] = store.InboxEvent{Kind: store.KindEphemeral, RoomID: "!r:x", Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}
		}
		rec, _, _, err = st.RecordTransaction(ctx, "t3", eph, leaderOf(1))
		if err != nil || len(rec) != 3 || string(rec[2].Payload) != `{"n":2}` || rec[1].Seq >= rec[2].Seq {
			t.Fatalf("ephemeral only: %+v %v", rec, err)
		}
		// Nothing new at all.
		rec, _, dup, err = st.RecordTransaction(ctx, "t4", events("old", 3), leaderOf(1))
		if err != nil || dup || len(rec) != 0 {
			t.Fatalf("all known: %d %v %v", len(rec), dup, err)
		}
		if _, _, _, err := st.RecordTransaction(ctx, "t5", nil, leaderOf(1)); err != nil {
			t.Fatal(err)
		}
	})
}

func TestMarkDoneBatch(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		defer st.Close()
		rec, _, _, err := st.RecordTransaction(ctx, "t1", events("a", 1200), leaderOf(1))
		if err != nil {
			t.Fatal(err)
		}
		var seqs []int64
		for i, ev := range rec {
			if i%2 == 0 {
				seqs = append(seqs, ev.Seq)
			}
		}
		if err := st.MarkDone(ctx, leaderOf(1), seqs); err != nil { // 600: two statements
			t.Fatal(err)
		}
		if err := st.MarkDone(ctx, leaderOf(1), nil); err != nil {
			t.Fatal(err)
		}
		if err := st.MarkDone(ctx, leaderOf(1), []int64{rec[1].Seq}); err != nil {
			t.Fatal(err)
		}
		if err := st.MarkDone(ctx, leaderOf(1), []int64{rec[3].Seq, rec[5].Seq, rec[3].Seq}); err != nil {
			t.Fatal(err)
		}
		pending, err := st.PendingEvents(ctx, 10000)
		if err != nil || len(pending) != 600-3 {
			t.Fatalf("pending: %d %v", len(pending), err)
		}
		if pending[0].Seq != rec[7].Seq {
			t.Fatalf("first pending is %d, want %d", pending[0].Seq, rec[7].Seq)
		}
	})
}

func TestSQLiteWriteLock(t *testing.T) {
	ctx := context.Background()
	// A short busy timeout: a writer gives up after it, as SQLite would.
	st := open(t, config.Database{Type: "sqlite", URI: t.TempDir() + "/opsbot.db?_pragma=busy_timeout(300)"})
	defer st.Close()

	// Many writers at once all get through, none sees "database is locked".
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				txn := fmt.Sprintf("w%d-%d", w, i)
				rec, _, _, err := st.RecordTransaction(ctx, txn, events(txn, 2), leaderOf(1))
				if err == nil {
					err = st.MarkDone(ctx, leaderOf(1), []int64{rec[0].Seq, rec[1].Seq})
				}
				if err == nil {
					err = st.Memory("s", id.RoomID(txn)).Put(ctx, "k", i)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Inside a transaction, reads on other connections go on (one shared
	// connection would wait for itself here), and a write outside the
	// transaction fails after the busy timeout instead of hanging.
	err := st.DB.DoTxn(ctx, nil, func(txCtx context.Context) error {
		if _, err := st.DB.Exec(txCtx, `INSERT INTO opsbot_cron (job_key, last_run) VALUES ('a', 1)`); err != nil {
			return err
		}
		if n, err := st.CountPending(ctx); err != nil || n != 0 {
			return fmt.Errorf("read beside the transaction: %d %v", n, err)
		}
		start := time.Now()
		_, err := st.DB.Exec(ctx, `INSERT INTO opsbot_cron (job_key, last_run) VALUES ('b', 1)`)
		if err == nil || time.Since(start) > 5*time.Second {
			return fmt.Errorf("write beside the transaction: %v after %s", err, time.Since(start))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.DB.Exec(ctx, `INSERT INTO opsbot_cron (job_key, last_run) VALUES ('c', 1)`); err != nil {
		t.Fatalf("write after the transaction: %v", err)
	}
}

// fence is a leadership term for the store's fenced writes.
type fence struct {
	epoch int64
	over  bool
}

func leaderOf(epoch int64) *fence { return &fence{epoch: epoch} }

func (f *fence) Epoch() int64 { return f.epoch }

func (f *fence) Hold(context.Context) error {
	if f.over {
		return errors.New("term over")
	}
	return nil
}

// Events are claimed by a leadership term when recorded (if it holds), or
// later by whichever term picks them up; a term marks done only its own
// claims, and a term that is over cannot write at all.
func TestClaimsUnderEpochs(t *testing.T) {
	forEachDialect(t, func(t *testing.T, cfg config.Database) {
		ctx := context.Background()
		st := open(t, cfg)
		defer st.Close()
		one, over := leaderOf(1), &fence{epoch: 1, over: true}
		r1, claimed, _, err := st.RecordTransaction(ctx, "t1", events("a", 2), one)
		if err != nil || !claimed {
			t.Fatalf("recorded under a holding term: claimed=%v err=%v", claimed, err)
		}
		r2, claimed, _, err := st.RecordTransaction(ctx, "t2", events("b", 1), nil)
		if err != nil || claimed {
			t.Fatalf("recorded without a term: claimed=%v err=%v", claimed, err)
		}
		r3, claimed, _, err := st.RecordTransaction(ctx, "t3", events("c", 1), over)
		if err != nil || claimed {
			t.Fatalf("recorded under a term that is over: claimed=%v err=%v (the events must be kept, unclaimed)", claimed, err)
		}
		seqs := func(evs []store.InboxEvent) (out []int64) {
			for _, e := range evs {
				out = append(out, e.Seq)
			}
			return out
		}
		// Term 1 picks up what nobody claimed, not its own.
		got, err := st.ClaimPending(ctx, one, 100)
		if err != nil || !slices.Equal(seqs(got), []int64{r2[0].Seq, r3[0].Seq}) || got[0].Recovered {
			t.Fatalf("term 1 claimed %+v, %v; want the unclaimed events, not recovered", got, err)
		}
		// Term 2 takes everything unfinished; all of it was term 1's.
		two := leaderOf(2)
		got, err = st.ClaimPending(ctx, two, 100)
		if err != nil || len(got) != 4 {
			t.Fatalf("term 2 claimed %d, %v; want 4", len(got), err)
		}
		for _, e := range got {
			if !e.Recovered {
				t.Fatalf("event %d of term 1 not marked recovered", e.Seq)
			}
		}
		// Term 1 can no longer mark them done; term 2 can.
		if err := st.MarkDone(ctx, one, seqs(r1)); err != nil {
			t.Fatal(err)
		}
		if n, _ := st.CountPending(ctx); n != 4 {
			t.Fatalf("term 1 marked term 2's claims done: %d pending", n)
		}
		if err := st.MarkDone(ctx, over, seqs(r1)); !errors.Is(err, store.ErrFenced) {
			t.Fatalf("a term that is over marked events: %v", err)
		}
		if err := st.MarkDone(ctx, two, seqs(r1)); err != nil {
			t.Fatal(err)
		}
		// Released claims come back to the next term as never started.
		if err := st.ReleaseClaims(ctx, two, seqs(r2)); err != nil {
			t.Fatal(err)
		}
		got, err = st.ClaimPending(ctx, leaderOf(3), 100)
		if err != nil || len(got) != 2 || got[0].Seq != r2[0].Seq || got[0].Recovered || !got[1].Recovered {
			t.Fatalf("term 3 claimed %+v, %v; want the released event fresh and the other recovered", got, err)
		}
	})
}
