// Package pipeline moves recorded events from the inbox through a Handler
// (the stages, appservice/stages) and marks them done, under a leadership
// term.
//
// Order is per room and nothing more. Each room (and each bot device's
// to-device stream) has its own queue; a worker takes the first event of a
// queue that is ready, and the next event of that queue only after it.
// An event that has to wait (for its room key) parks its queue: the
// worker goes on with other queues, and the parked queue is ready again
// when what it waits for arrives or its time is up. To-device queues
// (room keys, key requests, verification) are served before room queues,
// so a key never waits behind the message that needs it.
//
// Events come from intake (Deliver, for those it claimed while recording)
// and from the inbox itself: every second the pipeline claims events that
// no leader, or an earlier one, took (ClaimPending), so that nothing a
// replica accepted is left behind. Done marks are written in batches by
// one marker goroutine, fenced by the term (see done.go).
package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/store"
)

// Inbox is the durable side of the pipeline (appservice/store implements it).
type Inbox interface {
	ClaimPending(ctx context.Context, fence store.Fence, limit int) ([]store.InboxEvent, error)
	MarkDone(ctx context.Context, fence store.Fence, seqs []int64) error
	ReleaseClaims(ctx context.Context, fence store.Fence, seqs []int64) error
}

// Term is the leadership term the pipeline works under (leader.Term).
type Term interface {
	store.Fence
	// Valid reports whether the term still holds, without asking the
	// database; workers stop taking events when it does not.
	Valid() bool
}

// Handler does the work for one event.
type Handler interface {
	Handle(ctx context.Context, item *Item) Outcome
}

// Item is an event on its way through the pipeline. Handlers may keep what
// they learned in it across parks.
type Item struct {
	store.InboxEvent
	// Event is the parsed event, set by the handler (or by intake, which
	// parsed it already).
	Event *event.Event
	// Stage is where a parked item resumes (the handler's business).
	Stage int
	// Since is when the item was first handled.
	Since time.Time
	// State is kept for the stage that parked the item.
	State any
}

// Outcome of handling an item: done (Park nil), or parked until Park says.
type Outcome struct {
	Park *Park
}

// Park says what a parked item waits for.
type Park struct {
	// Wake, if not nil, is closed when what the item waits for arrived.
	Wake <-chan struct{}
	// Until is when to try the item again anyway.
	Until time.Time
	// Reason says why, for the log, metrics and !status.
	Reason string
}

// Done is the outcome of a finished item.
var Done = Outcome{}

// ParkedRoom is a queue waiting, as !status shows it.
type ParkedRoom struct {
	Room   string
	Reason string
	Since  time.Time // when its first event started waiting
}

// Options configure a Pipeline. All are required unless noted.
type Options struct {
	Inbox   Inbox
	Handler Handler
	Log     zerolog.Logger
	// Workers is how many events are handled at once (default 8).
	Workers int
	// Recover, if set, prepares the context of an event an earlier leader
	// had claimed (outbox.WithRecovery: its sends first look for an
	// earlier copy).
	Recover func(ctx context.Context, room id.RoomID, eventID id.EventID) context.Context
	// Observe, if set, is told the type and handling time of each event.
	Observe func(evtType string, took time.Duration)
	// OnFenced, if set, is told when the term turned out to be over while
	// marking events done: the process must stop acting.
	OnFenced func(error)
	// ClaimEvery is how often unclaimed events are looked for (default 1 s).
	ClaimEvery time.Duration
}

// Pipeline runs the queues.
type Pipeline struct {
	opts Options
	// term is the leadership the pipeline works under, given to Start.
	term Term

	mu       sync.Mutex
	cond     *sync.Cond
	queues   map[string]*queue
	ready    readyLists
	stopping bool // no more events are taken
	running  int  // items being handled now

	gate    chan struct{} // closed by Open
	backlog atomic.Int64  // delivered and not yet marked done
	workers sync.WaitGroup
	claimer sync.WaitGroup
	marks   marker
}

// New returns a pipeline that does nothing until Start.
func New(opts Options) *Pipeline {
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.ClaimEvery <= 0 {
		opts.ClaimEvery = time.Second
	}
	return &Pipeline{opts: opts}
}

// claimBatch bounds one claim from the inbox; maxInMemory bounds how many
// events the pipeline holds before it leaves the rest in the inbox for later.
const (
	claimBatch  = 1000
	maxInMemory = 20_000
)

// Start, under term, claims what an earlier leader left (or another replica recorded),
// starts the workers, which wait for Open, the claimer and the marker.
// Call it before intake delivers, so that older events go first. Everything
// stops when ctx ends; Drain first lets started work finish.
func (p *Pipeline) Start(ctx context.Context, term Term) error {
	p.term = term
	p.cond = sync.NewCond(&p.mu)
	p.queues = map[string]*queue{}
	p.gate = make(chan struct{})
	p.marks.start(p)
	n, err := p.claim(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		p.opts.Log.Info().Int("events", n).Msg("Picked up events that were recorded but not finished before")
	}
	for range p.opts.Workers {
		p.workers.Add(1)
		go p.work(ctx)
	}
	p.claimer.Add(1)
	go p.claimLoop(ctx)
	go func() {
		<-ctx.Done()
		p.stop()
	}()
	return nil
}

// Open lets the workers handle events.
func (p *Pipeline) Open() { close(p.gate) }

// Backlog is the number of delivered events not yet handled and marked done.
func (p *Pipeline) Backlog() int64 { return p.backlog.Load() }

// Deliver queues events claimed by the term (intake). It never blocks.
func (p *Pipeline) Deliver(events []store.InboxEvent) {
	if len(events) == 0 {
		return
	}
	p.backlog.Add(int64(len(events)))
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ev := range events {
		p.enqueueLocked(&Item{InboxEvent: ev, Event: ev.Decoded})
	}
	p.cond.Broadcast()
}

// claimLoop claims unclaimed events and those of earlier terms, every
// ClaimEvery, while the pipeline is not full.
func (p *Pipeline) claimLoop(ctx context.Context) {
	defer p.claimer.Done()
	t := time.NewTicker(p.opts.ClaimEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n, err := p.claim(ctx); err != nil && ctx.Err() == nil {
			if errors.Is(err, store.ErrFenced) {
				p.fenced(err)
				return
			}
			p.opts.Log.Warn().Err(err).Msg("Could not look for unclaimed events in the inbox")
		} else if n > 0 {
			p.opts.Log.Info().Int("events", n).Msg("Picked up events no leader had taken (recorded by another replica, or left by an earlier leader)")
		}
	}
}

// claim claims events in batches until none are left or the pipeline is
// full, and queues them.
func (p *Pipeline) claim(ctx context.Context) (int, error) {
	total := 0
	for p.backlog.Load() < maxInMemory {
		events, err := p.opts.Inbox.ClaimPending(ctx, p.term, claimBatch)
		if err != nil {
			return total, err
		}
		p.Deliver(events)
		total += len(events)
		if len(events) < claimBatch {
			break
		}
	}
	return total, nil
}

func (p *Pipeline) fenced(err error) {
	p.opts.Log.Error().Err(err).Msg("No longer the leader: stopping")
	if p.opts.OnFenced != nil {
		p.opts.OnFenced(err)
	}
}

func (p *Pipeline) work(ctx context.Context) {
	defer p.workers.Done()
	select {
	case <-p.gate:
	case <-ctx.Done():
		return
	}
	for {
		q, item := p.next()
		if q == nil {
			return
		}
		outcome := p.handle(ctx, item)
		switch {
		case ctx.Err() != nil:
			p.finish(q, item, false) // cut off: it runs again after the restart
		case outcome.Park != nil:
			p.park(ctx, q, outcome.Park)
		default:
			p.finish(q, item, true)
		}
	}
}

func (p *Pipeline) handle(ctx context.Context, item *Item) Outcome {
	start := time.Now()
	if item.Since.IsZero() {
		item.Since = start
	}
	log := p.opts.Log.With().Str("event_id", item.EventID).Str("room_id", item.RoomID).Logger()
	ctx = log.WithContext(ctx)
	if item.Recovered && p.opts.Recover != nil {
		ctx = p.opts.Recover(ctx, id.RoomID(item.RoomID), id.EventID(item.EventID))
	}
	outcome := p.opts.Handler.Handle(ctx, item)
	if outcome.Park == nil {
		typ := item.Type
		if item.Event != nil {
			typ = item.Event.Type.Type
		}
		if p.opts.Observe != nil {
			p.opts.Observe(typ, time.Since(item.Since))
		}
		log.Debug().Str("type", typ).Dur("took", time.Since(start)).Msg("Handled event")
	}
	return outcome
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
