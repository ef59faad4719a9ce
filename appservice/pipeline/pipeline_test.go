package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"

	"opsbot/appservice/store"
)

// fakeInbox records the marks; mark, if set, runs before each batch is taken
// (to slow it down or fail it).
type fakeInbox struct {
	mu      sync.Mutex
	done    map[int64]int
	batches [][]int64
	mark    func(seqs []int64) error
}

func (f *fakeInbox) PendingEvents(context.Context, int) ([]store.InboxEvent, error) { return nil, nil }

func (f *fakeInbox) MarkDoneBatch(_ context.Context, seqs []int64) error {
	if f.mark != nil {
		if err := f.mark(seqs); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches = append(f.batches, slices.Clone(seqs))
	for _, s := range seqs {
		f.done[s]++
	}
	return nil
}

func (f *fakeInbox) marked() (n int, batches int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.done), len(f.batches)
}

type countHandler struct {
	n     atomic.Int64
	block chan struct{} // if set, each event waits for it
}

func (h *countHandler) HandleEvent(context.Context, *event.Event) {
	if h.block != nil {
		<-h.block
	}
	h.n.Add(1)
}

func inboxEvents(from, n int) []store.InboxEvent {
	out := make([]store.InboxEvent, n)
	for i := range out {
		seq := from + i
		room := fmt.Sprintf("!r%d:x", seq%5)
		out[i] = store.InboxEvent{Seq: int64(seq), EventID: fmt.Sprintf("$%d", seq), RoomID: room, Kind: store.KindPDU,
			Payload: []byte(fmt.Sprintf(`{"type":"m.room.message","event_id":"$%d","room_id":%q,"sender":"@a:x","content":{"msgtype":"m.text","body":"hi"}}`, seq, room))}
	}
	return out
}

func newPipeline(in *fakeInbox, h Handler) *Pipeline {
	in.done = map[int64]int{}
	return &Pipeline{Inbox: in, Handler: h, Log: zerolog.Nop(), Workers: 4}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMarksAreBatchedAndLowerTheBacklog(t *testing.T) {
	in := &fakeInbox{}
	var slow atomic.Bool
	slow.Store(true)
	in.mark = func([]int64) error {
		if slow.Load() {
			time.Sleep(20 * time.Millisecond) // a slow commit: marks queue up meanwhile
		}
		return nil
	}
	h := &countHandler{}
	p := newPipeline(in, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p.Open()
	p.Deliver(inboxEvents(1, 300))
	waitFor(t, "all events handled", func() bool { return h.n.Load() == 300 })
	// Handled is not done: the backlog falls only as marks are written.
	waitFor(t, "backlog 0", func() bool { return p.Backlog() == 0 })
	n, batches := in.marked()
	if n != 300 {
		t.Fatalf("%d events marked, want 300", n)
	}
	if batches >= 300/2 {
		t.Fatalf("%d batches for 300 events: marks were not batched", batches)
	}
	for _, b := range in.batches {
		if len(b) > MaxPendingMarks {
			t.Fatalf("a batch of %d marks, more than MaxPendingMarks", len(b))
		}
	}
	for seq, times := range in.done {
		if times != 1 {
			t.Fatalf("event %d marked %d times", seq, times)
		}
	}
	cancel()
	p.Wait()
}

// A database that does not take the marks holds the workers back once
// MaxPendingMarks events wait for theirs.
func TestMarkBackPressure(t *testing.T) {
	in := &fakeInbox{}
	release := make(chan struct{})
	in.mark = func([]int64) error { <-release; return nil }
	h := &countHandler{}
	p := newPipeline(in, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p.Open()
	p.Deliver(inboxEvents(1, 500))
	// The first mark is taken at once and blocks; then MaxPendingMarks
	// queue, and each worker handles one more event that waits for room.
	limit := int64(2*MaxPendingMarks + p.Workers) // the first batch takes up to MaxPendingMarks
	waitFor(t, "workers to stall", func() bool { return h.n.Load() >= int64(1+MaxPendingMarks) })
	time.Sleep(50 * time.Millisecond)
	if n := h.n.Load(); n > limit {
		t.Fatalf("%d events handled with the marks stuck, want at most %d", n, limit)
	}
	close(release)
	waitFor(t, "backlog 0", func() bool { return p.Backlog() == 0 })
	if n, _ := in.marked(); n != 500 {
		t.Fatalf("%d marked, want 500", n)
	}
	cancel()
	p.Wait()
}

// Stopping writes the marks of everything handled before Wait returns.
func TestStopFlushesMarks(t *testing.T) {
	in := &fakeInbox{}
	in.mark = func([]int64) error { time.Sleep(30 * time.Millisecond); return nil }
	h := &countHandler{}
	p := newPipeline(in, h)
	ctx, cancel := context.WithCancel(context.Background())
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p.Open()
	p.Deliver(inboxEvents(1, 200))
	waitFor(t, "some events handled", func() bool { return h.n.Load() >= 50 })
	cancel()
	p.Wait()
	handled := int(h.n.Load())
	n, _ := in.marked()
	// Every handled event is marked, except ones whose handling ended
	// after the stop (those run again after a restart).
	if n < handled-p.Workers || n > handled {
		t.Fatalf("%d handled, %d marked after Wait", handled, n)
	}
}

// With the database down at shutdown, Wait gives up on the marks after
// shutdownMarkTimeout instead of hanging; the events run again after a
// restart.
func TestStopGivesUpOnMarksWhenTheDatabaseIsDown(t *testing.T) {
	old := shutdownMarkTimeout
	shutdownMarkTimeout = 200 * time.Millisecond
	defer func() { shutdownMarkTimeout = old }()
	in := &fakeInbox{}
	var attempts atomic.Int64
	in.mark = func([]int64) error { attempts.Add(1); return errors.New("database is down") }
	h := &countHandler{}
	p := newPipeline(in, h)
	ctx, cancel := context.WithCancel(context.Background())
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p.Open()
	p.Deliver(inboxEvents(1, 300))
	waitFor(t, "a failed mark", func() bool { return attempts.Load() > 0 })
	cancel()
	done := make(chan struct{})
	go func() { p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait hangs with the database down")
	}
	if n, _ := in.marked(); n != 0 {
		t.Fatalf("%d marked with the database down", n)
	}
	if p.Backlog() == 0 {
		t.Fatal("backlog 0 though nothing was marked")
	}
}
