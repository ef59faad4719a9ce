// Package pipeline handles the events recorded by intake: it parses each
// event once, updates the room state store, lets the bot manager react to
// membership, routes the event to the skills of every bot in the room, and
// marks it done in the inbox. Events of one room are handled in order, one
// at a time; rooms are spread over a fixed set of workers. One marker
// goroutine writes the "done" marks of all workers in batches, one database
// commit for everything handled since its last write.
package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"opsbot/appservice/store"
)

// Inbox is the durable side of the pipeline (appservice/store implements it).
type Inbox interface {
	PendingEvents(ctx context.Context, limit int) ([]store.InboxEvent, error)
	MarkDoneBatch(ctx context.Context, seqs []int64) error
}

// MaxPendingMarks bounds the events handled but not yet marked done. Workers
// wait when it is reached, so a database that does not take the marks holds
// the pipeline back instead of piling up work that a crash would make run
// again. It is also what a crash can make run again at most (besides one
// event per worker in progress): each such event re-sends only after
// looking for an earlier copy among the bot's last 100 messages in the room
// (outbox.WithRecovery), so the bound must stay well below 100.
const MaxPendingMarks = 64

// Handler does the work for one parsed event. The pipeline calls it after
// the state store has been updated.
type Handler interface {
	HandleEvent(ctx context.Context, evt *event.Event)
}

// Pipeline is a set of per-room-ordered workers fed from the inbox.
type Pipeline struct {
	Inbox      Inbox
	StateStore mautrix.StateStore
	Handler    Handler
	Log        zerolog.Logger
	Workers    int
	// Recover, if set, marks the context of events resumed after a crash
	// (outbox.WithRecovery), so their sends check for an earlier copy.
	Recover func(context.Context) context.Context
	// Observe, if set, is told the type and handling time of each event.
	Observe func(evtType string, took time.Duration)

	shards  []*shard
	gate    chan struct{} // closed by Open
	backlog atomic.Int64
	wg      sync.WaitGroup // the workers
	marker  sync.WaitGroup // the marker, which outlives the workers
	marks   marks
}

// marks are the sequence numbers of handled events waiting to be marked
// done; cond wakes the marker when some arrive, and workers when there is
// room again.
type marks struct {
	mu      sync.Mutex
	cond    *sync.Cond
	pending []int64
	closed  bool // the workers have stopped: write what is left and stop
	halted  bool // ctx is done: workers no longer wait for room
}

type shard struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []store.InboxEvent
	closed bool
}

// Start recovers events left unhandled by an earlier run, then starts the
// workers, which wait for Open before they handle anything. Call it before
// intake starts delivering, so that recovered events go first. Workers stop
// when ctx is cancelled; events not yet handled stay in the inbox for the
// next start.
func (p *Pipeline) Start(ctx context.Context) error {
	if p.Workers <= 0 {
		p.Workers = 8
	}
	p.gate = make(chan struct{})
	p.marks.cond = sync.NewCond(&p.marks.mu)
	p.shards = make([]*shard, p.Workers)
	for i := range p.shards {
		s := &shard{}
		s.cond = sync.NewCond(&s.mu)
		p.shards[i] = s
	}
	pending, err := p.Inbox.PendingEvents(ctx, 1<<30)
	if err != nil {
		return err
	}
	if len(pending) > 0 {
		p.Log.Info().Int("events", len(pending)).Msg("Resuming events that were recorded but not handled before the last stop")
		for i := range pending {
			pending[i].Recovered = true
		}
		p.Deliver(pending)
	}
	for _, s := range p.shards {
		p.wg.Add(1)
		go p.work(ctx, s)
	}
	p.marker.Add(1)
	go p.markLoop(ctx)
	go func() {
		<-ctx.Done()
		for _, s := range p.shards {
			s.mu.Lock()
			s.closed = true
			s.cond.Broadcast()
			s.mu.Unlock()
		}
		p.marks.mu.Lock()
		p.marks.halted = true
		p.marks.cond.Broadcast()
		p.marks.mu.Unlock()
		// The marker writes what the workers handled until the last one
		// stopped, then stops too.
		p.wg.Wait()
		p.marks.mu.Lock()
		p.marks.closed = true
		p.marks.cond.Broadcast()
		p.marks.mu.Unlock()
	}()
	return nil
}

// Wait blocks until every worker has stopped and the marks of the events
// they handled are written (or, with the database unreachable, given up on:
// those events run again after a restart).
func (p *Pipeline) Wait() {
	p.wg.Wait()
	p.marker.Wait()
}

// Backlog is the number of recorded events not yet handled and marked done.
func (p *Pipeline) Backlog() int64 { return p.backlog.Load() }

// Deliver queues recorded events. It never blocks: the events are already
// durable, so memory is the only cost, and intake refuses new transactions
// when the backlog grows too large.
func (p *Pipeline) Deliver(events []store.InboxEvent) {
	p.backlog.Add(int64(len(events)))
	for _, ev := range events {
		s := p.shards[shardOf(ev.RoomID, len(p.shards))]
		s.mu.Lock()
		s.items = append(s.items, ev)
		s.cond.Signal()
		s.mu.Unlock()
	}
}

func shardOf(room string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(room))
	return int(h.Sum32() % uint32(n))
}

// Open lets the workers handle events.
func (p *Pipeline) Open() { close(p.gate) }

func (p *Pipeline) work(ctx context.Context, s *shard) {
	defer p.wg.Done()
	select {
	case <-p.gate:
	case <-ctx.Done():
		return
	}
	for {
		s.mu.Lock()
		for len(s.items) == 0 && !s.closed {
			s.cond.Wait()
		}
		if s.closed {
			s.mu.Unlock()
			return
		}
		item := s.items[0]
		s.items[0] = store.InboxEvent{}
		s.items = s.items[1:]
		s.mu.Unlock()

		p.handle(ctx, item)
		if ctx.Err() != nil {
			return // not marked done: handled again after restart
		}
		p.queueMark(item.Seq)
	}
}

// queueMark hands a handled event to the marker, waiting while
// MaxPendingMarks are queued. Once ctx is done it no longer waits: a mark
// that does not fit is dropped and its event runs again after the restart.
func (p *Pipeline) queueMark(seq int64) {
	m := &p.marks
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.pending) >= MaxPendingMarks && !m.halted {
		m.cond.Wait()
	}
	if len(m.pending) >= MaxPendingMarks {
		return
	}
	m.pending = append(m.pending, seq)
	m.cond.Broadcast()
}

// markLoop writes the queued marks, all of them in one batch, until the
// workers have stopped and nothing is left. Each batch is retried until the
// database takes it: forgetting a mark would only re-run the event after a
// restart (sends are idempotent), but giving up silently would hide a
// database outage. After ctx is done, retries stop at shutdownMarkTimeout.
func (p *Pipeline) markLoop(ctx context.Context) {
	defer p.marker.Done()
	m := &p.marks
	var batch []int64
	for {
		m.mu.Lock()
		for len(m.pending) == 0 && !m.closed {
			m.cond.Wait()
		}
		if len(m.pending) == 0 {
			m.mu.Unlock()
			return
		}
		batch, m.pending = m.pending, batch[:0]
		m.cond.Broadcast() // room for the workers again
		m.mu.Unlock()

		p.writeMarks(ctx, batch)
		p.backlog.Add(-int64(len(batch)))
	}
}

// shutdownMarkTimeout bounds the attempts to write the last marks once the
// pipeline is stopping.
var shutdownMarkTimeout = 5 * time.Second

func (p *Pipeline) writeMarks(ctx context.Context, seqs []int64) {
	// The marks of events already handled are written even while stopping.
	wctx := context.WithoutCancel(ctx)
	stopping := ctx.Done()
	var giveUp <-chan time.Time
	for wait := 100 * time.Millisecond; ; wait = min(wait*2, 10*time.Second) {
		err := p.Inbox.MarkDoneBatch(wctx, seqs)
		if err == nil {
			return
		}
		p.Log.Error().Err(err).Int("events", len(seqs)).Int64("first_seq", seqs[0]).Dur("retry_in", wait).Msg("Could not mark events done")
		if giveUp == nil && ctx.Err() != nil {
			giveUp, stopping = time.After(shutdownMarkTimeout), nil
		}
		select {
		case <-giveUp:
			p.Log.Warn().Int("events", len(seqs)).Msg("Stopping without marking events done: they run again after the restart")
			return
		case <-time.After(wait):
		case <-stopping: // try once more at once, then until giveUp
			giveUp, stopping = time.After(shutdownMarkTimeout), nil
		}
	}
}

func (p *Pipeline) handle(ctx context.Context, item store.InboxEvent) {
	start := time.Now()
	log := p.Log.With().Str("event_id", item.EventID).Str("room_id", item.RoomID).Logger()
	evt, contentErr, err := Parse(item)
	if err != nil {
		log.Warn().Err(err).Msg("Skipping event that could not be parsed")
		return
	}
	if contentErr != nil {
		log.Warn().Err(contentErr).Str("type", evt.Type.Type).Msg("Event content does not fit its type; skills get only the raw content")
	}
	ctx = log.WithContext(ctx)
	if item.Recovered && p.Recover != nil {
		ctx = p.Recover(ctx)
	}
	if evt.StateKey != nil {
		mautrix.UpdateStateStore(ctx, p.StateStore, evt)
	}
	p.Handler.HandleEvent(ctx, evt)
	if p.Observe != nil {
		p.Observe(evt.Type.Type, time.Since(start))
	}
	log.Debug().Str("type", evt.Type.Type).Dur("took", time.Since(start)).Msg("Handled event")
}

// Parse turns an inbox entry into a mautrix event with parsed content. An
// event whose content does not fit its type (a client bug, or an attack)
// keeps its raw content, so handlers can still look at it; contentErr says
// what was wrong.
func Parse(item store.InboxEvent) (evt *event.Event, contentErr, err error) {
	evt = &event.Event{}
	if err := json.Unmarshal(item.Payload, evt); err != nil {
		return nil, nil, err
	}
	switch {
	case item.Kind == store.KindEphemeral:
		evt.Type.Class = event.EphemeralEventType
		evt.Mautrix.EventSource = event.SourceEphemeral
	case item.Kind == store.KindToDevice:
		evt.Type.Class = event.ToDeviceEventType
		evt.Mautrix.EventSource = event.SourceToDevice
	case evt.StateKey != nil:
		evt.Type.Class = event.StateEventType
		evt.Mautrix.EventSource = event.SourceTimeline
	default:
		evt.Type.Class = event.MessageEventType
		evt.Mautrix.EventSource = event.SourceTimeline
	}
	if evt.RoomID == "" && item.RoomID != "" && item.Kind != store.KindToDevice {
		evt.RoomID = id.RoomID(item.RoomID)
	}
	evt.Mautrix.ReceivedAt = time.Now()
	if err := evt.Content.ParseRaw(evt.Type); err != nil && !errors.Is(err, event.ErrUnsupportedContentType) && !errors.Is(err, event.ErrContentAlreadyParsed) {
		evt.Content.Parsed = nil
		return evt, err, nil
	}
	return evt, nil, nil
}
