package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/opsbot/opsbot/appservice/store"
)

// fakeInbox records the marks; mark, if set, runs before each batch is taken
// (to slow it down or fail it). pending are unclaimed events ClaimPending
// hands out.
type fakeInbox struct {
	mu       sync.Mutex
	done     map[int64]int
	batches  [][]int64
	mark     func(seqs []int64) error
	pending  []store.InboxEvent
	claims   int
	released []int64
}

func (f *fakeInbox) ClaimPending(_ context.Context, _ store.Fence, limit int) ([]store.InboxEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.claims++
	n := min(limit, len(f.pending))
	out := slices.Clone(f.pending[:n])
	f.pending = f.pending[n:]
	return out, nil
}

func (f *fakeInbox) add(events []store.InboxEvent) {
	f.mu.Lock()
	f.pending = append(f.pending, events...)
	f.mu.Unlock()
}

func (f *fakeInbox) MarkDone(_ context.Context, _ store.Fence, seqs []int64) error {
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

func (f *fakeInbox) ReleaseClaims(_ context.Context, _ store.Fence, seqs []int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, seqs...)
	return nil
}

func (f *fakeInbox) marked() (n int, batches int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.done), len(f.batches)
}

// fakeTerm is a leadership term that holds until ended.
type fakeTerm struct{ over atomic.Bool }

func (*fakeTerm) Epoch() int64 { return 1 }

func (t *fakeTerm) Hold(context.Context) error {
	if t.over.Load() {
		return errors.New("term over")
	}
	return nil
}

func (t *fakeTerm) Valid() bool { return !t.over.Load() }

// handlerFunc adapts a function to Handler.
type handlerFunc func(ctx context.Context, item *Item) Outcome

func (f handlerFunc) Handle(ctx context.Context, item *Item) Outcome { return f(ctx, item) }

type countHandler struct {
	n     atomic.Int64
	block chan struct{} // if set, each event waits for it
}

func (h *countHandler) Handle(context.Context, *Item) Outcome {
	if h.block != nil {
		<-h.block
	}
	h.n.Add(1)
	return Done
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

func newPipeline(in *fakeInbox, h Handler, tweaks ...func(*Options)) *Pipeline {
	in.done = map[int64]int{}
	opts := Options{Inbox: in, Handler: h, Log: zerolog.Nop(), Workers: 4, ClaimEvery: 20 * time.Millisecond}
	for _, tweak := range tweaks {
		tweak(&opts)
	}
	return New(opts)
}

// run starts and opens a pipeline, and stops it at the end of the test.
func run(t *testing.T, p *Pipeline) context.CancelFunc {
	t.Helper()
	return runUnder(t, p, &fakeTerm{})
}

// runUnder is run under a given term.
func runUnder(t *testing.T, p *Pipeline, term Term) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if err := p.Start(ctx, term); err != nil {
		t.Fatal(err)
	}
	p.Open()
	t.Cleanup(func() { cancel(); p.Wait() })
	return cancel
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
	if err := p.Start(ctx, &fakeTerm{}); err != nil {
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
	if err := p.Start(ctx, &fakeTerm{}); err != nil {
		t.Fatal(err)
	}
	p.Open()
	p.Deliver(inboxEvents(1, 500))
	// The first mark is taken at once and blocks; then MaxPendingMarks
	// queue, and each worker handles one more event that waits for room.
	limit := int64(2*MaxPendingMarks + p.opts.Workers) // the first batch takes up to MaxPendingMarks
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
	if err := p.Start(ctx, &fakeTerm{}); err != nil {
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
	if n < handled-p.opts.Workers || n > handled {
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
	if err := p.Start(ctx, &fakeTerm{}); err != nil {
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

// Events of one room run strictly in order, one at a time, while rooms run
// in parallel (run with -race).
func TestPerRoomOrderUnderConcurrency(t *testing.T) {
	in := &fakeInbox{}
	var mu sync.Mutex
	seen := map[string][]int64{}
	active := map[string]int{}
	var overlap atomic.Bool
	p := newPipeline(in, handlerFunc(func(_ context.Context, item *Item) Outcome {
		mu.Lock()
		active[item.RoomID]++
		if active[item.RoomID] > 1 {
			overlap.Store(true)
		}
		mu.Unlock()
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		mu.Lock()
		active[item.RoomID]--
		seen[item.RoomID] = append(seen[item.RoomID], item.Seq)
		mu.Unlock()
		return Done
	}), func(o *Options) { o.Workers = 8 })
	run(t, p)
	for i := 0; i < 20; i++ {
		p.Deliver(inboxEvents(1+i*50, 50))
	}
	waitFor(t, "all 1000 events", func() bool { n, _ := in.marked(); return n == 1000 })
	if overlap.Load() {
		t.Fatal("two events of one room ran at once")
	}
	mu.Lock()
	defer mu.Unlock()
	for room, seqs := range seen {
		if !slices.IsSorted(seqs) || len(seqs) != 200 {
			t.Fatalf("room %s ran %d events, order %v", room, len(seqs), seqs[:min(10, len(seqs))])
		}
	}
}

// An event that parks holds back only its own room: other rooms go on, and
// the room resumes, in order, the moment what it waits for arrives.
func TestParkedRoomHoldsOnlyItself(t *testing.T) {
	in := &fakeInbox{}
	key := make(chan struct{})
	var mu sync.Mutex
	var order []string
	p := newPipeline(in, handlerFunc(func(_ context.Context, item *Item) Outcome {
		if item.EventID == "$slow-1" && item.State == nil {
			item.State = "waited"
			return Outcome{Park: &Park{Wake: key, Until: time.Now().Add(time.Minute), Reason: "waits for a key"}}
		}
		mu.Lock()
		order = append(order, item.EventID)
		mu.Unlock()
		return Done
	}), func(o *Options) { o.Workers = 1 }) // even with one worker
	run(t, p)
	p.Deliver([]store.InboxEvent{
		{Seq: 1, EventID: "$slow-1", RoomID: "!slow:x", Kind: store.KindPDU},
		{Seq: 2, EventID: "$slow-2", RoomID: "!slow:x", Kind: store.KindPDU},
	})
	var others []store.InboxEvent
	for i := 0; i < 12; i++ {
		others = append(others, store.InboxEvent{Seq: int64(10 + i), EventID: fmt.Sprintf("$other-%d", i), RoomID: fmt.Sprintf("!o%d:x", i), Kind: store.KindPDU})
	}
	p.Deliver(others)
	waitFor(t, "the other rooms", func() bool { n, _ := in.marked(); return n == 12 })
	if rooms, _ := p.ParkedStats(); rooms != 1 {
		t.Fatalf("%d parked rooms, want 1", rooms)
	}
	if parked := p.Parked(); len(parked) != 1 || parked[0].Room != "!slow:x" || parked[0].Reason != "waits for a key" {
		t.Fatalf("Parked() = %+v", parked)
	}
	mu.Lock()
	if slices.Contains(order, "$slow-2") {
		t.Fatal("the parked room's second event ran before its first")
	}
	mu.Unlock()
	start := time.Now()
	close(key)
	waitFor(t, "the parked room", func() bool { n, _ := in.marked(); return n == 14 })
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("the room resumed %v after its key came", took)
	}
	mu.Lock()
	defer mu.Unlock()
	if i, j := slices.Index(order, "$slow-1"), slices.Index(order, "$slow-2"); i < 0 || j != i+1 {
		t.Fatalf("order %v: the room's events out of order", order)
	}
}

// Without a wake, a parked event runs again at its Until.
func TestParkUntilDeadline(t *testing.T) {
	in := &fakeInbox{}
	var runs atomic.Int64
	p := newPipeline(in, handlerFunc(func(_ context.Context, item *Item) Outcome {
		if runs.Add(1) == 1 {
			return Outcome{Park: &Park{Until: time.Now().Add(100 * time.Millisecond)}}
		}
		return Done
	}))
	run(t, p)
	start := time.Now()
	p.Deliver(inboxEvents(1, 1))
	waitFor(t, "the second run", func() bool { n, _ := in.marked(); return n == 1 })
	if took := time.Since(start); took < 90*time.Millisecond {
		t.Fatalf("ran again after %v, before its Until", took)
	}
}

// A room's message and the key it needs, in one transaction, the key
// recorded after the message, with a single worker: the message parks,
// the key's to-device queue runs (before any room), and the message then
// decrypts at once, without waiting out its deadline.
func TestKeyNeverQueuesBehindItsMessage(t *testing.T) {
	in := &fakeInbox{}
	keyArrived := make(chan struct{})
	var order []string
	var mu sync.Mutex
	p := newPipeline(in, handlerFunc(func(_ context.Context, item *Item) Outcome {
		mu.Lock()
		defer mu.Unlock()
		switch item.Kind {
		case store.KindToDevice:
			close(keyArrived)
		case store.KindPDU:
			select {
			case <-keyArrived:
			default:
				return Outcome{Park: &Park{Wake: keyArrived, Until: time.Now().Add(30 * time.Second)}}
			}
		}
		order = append(order, item.EventID)
		return Done
	}), func(o *Options) { o.Workers = 1 })
	run(t, p)
	start := time.Now()
	p.Deliver([]store.InboxEvent{
		{Seq: 1, EventID: "$msg", RoomID: "!r:x", Kind: store.KindPDU},
		{Seq: 2, RoomID: "to-device:@bot:x|DEV", Kind: store.KindToDevice},
	})
	waitFor(t, "both", func() bool { n, _ := in.marked(); return n == 2 })
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the message waited %v for a key that was right behind it", took)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 2 || order[1] != "$msg" {
		t.Fatalf("order %v", order)
	}
}

// Events nobody claimed (recorded by another replica, or left by an
// earlier leader) are picked up at start and then continuously.
func TestUnclaimedEventsArePickedUp(t *testing.T) {
	in := &fakeInbox{}
	in.add(inboxEvents(1, 5))
	h := &countHandler{}
	p := newPipeline(in, h)
	run(t, p)
	waitFor(t, "the events there at start", func() bool { return h.n.Load() == 5 })
	in.add(inboxEvents(100, 3))
	waitFor(t, "the events recorded later", func() bool { return h.n.Load() == 8 })
	waitFor(t, "their marks", func() bool { n, _ := in.marked(); return n == 8 })
}

// When marking finds the term over, the pipeline says so, drops its marks
// (the events run again under the new leader) and takes no more events.
func TestFencedMarksStopThePipeline(t *testing.T) {
	in := &fakeInbox{}
	term := &fakeTerm{}
	in.mark = func([]int64) error {
		term.over.Store(true)
		return fmt.Errorf("%w: newer epoch", store.ErrFenced)
	}
	h := &countHandler{}
	var fenced atomic.Bool
	p := newPipeline(in, h, func(o *Options) { o.OnFenced = func(error) { fenced.Store(true) } })
	runUnder(t, p, term)
	p.Deliver(inboxEvents(1, 200))
	waitFor(t, "OnFenced", fenced.Load)
	n := h.n.Load()
	time.Sleep(100 * time.Millisecond)
	if more := h.n.Load() - n; more > int64(p.opts.Workers) {
		t.Fatalf("%d more events handled after the term ended", more)
	}
	if marked, _ := in.marked(); marked != 0 {
		t.Fatalf("%d marks written under an ended term", marked)
	}
}

// Drain finishes what is ready and running but does not wait for parked
// rooms; Wait gives the unstarted events back to the inbox.
func TestDrainAndRelease(t *testing.T) {
	in := &fakeInbox{}
	p := newPipeline(in, handlerFunc(func(_ context.Context, item *Item) Outcome {
		if item.RoomID == "!parked:x" {
			return Outcome{Park: &Park{Until: time.Now().Add(time.Hour)}}
		}
		return Done
	}))
	ctx, cancel := context.WithCancel(context.Background())
	if err := p.Start(ctx, &fakeTerm{}); err != nil {
		t.Fatal(err)
	}
	p.Open()
	p.Deliver([]store.InboxEvent{
		{Seq: 1, RoomID: "!parked:x", Kind: store.KindPDU}, {Seq: 2, RoomID: "!parked:x", Kind: store.KindPDU},
		{Seq: 3, RoomID: "!a:x", Kind: store.KindPDU}, {Seq: 4, RoomID: "!b:x", Kind: store.KindPDU},
	})
	drain, stop := context.WithTimeout(context.Background(), 2*time.Second)
	defer stop()
	waitFor(t, "the parked room", func() bool { n, _ := p.ParkedStats(); return n == 1 })
	p.Drain(drain)
	if drain.Err() != nil {
		t.Fatal("Drain waited for the parked room")
	}
	cancel()
	p.Wait()
	if n, _ := in.marked(); n != 2 {
		t.Fatalf("%d marked, want the two ready events", n)
	}
	slices.Sort(in.released)
	if !slices.Equal(in.released, []int64{1, 2}) {
		t.Fatalf("released %v, want the parked room's events", in.released)
	}
}
