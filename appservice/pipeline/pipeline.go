// Package pipeline handles the events recorded by intake: it parses each
// event once, updates the room state store, lets the bot manager react to
// membership, routes the event to the skills of every bot in the room, and
// marks it done in the inbox. Events of one room are handled in order, one
// at a time; rooms are spread over a fixed set of workers.
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
	MarkDone(ctx context.Context, seq int64) error
}

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
	backlog atomic.Int64
	wg      sync.WaitGroup
}

type shard struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []store.InboxEvent
	closed bool
}

// Start recovers events left unhandled by an earlier run, then starts the
// workers. Call it before intake starts delivering, so that recovered events
// go first. Workers stop when ctx is cancelled; events not yet handled stay
// in the inbox for the next start.
func (p *Pipeline) Start(ctx context.Context) error {
	if p.Workers <= 0 {
		p.Workers = 8
	}
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
	go func() {
		<-ctx.Done()
		for _, s := range p.shards {
			s.mu.Lock()
			s.closed = true
			s.cond.Broadcast()
			s.mu.Unlock()
		}
	}()
	return nil
}

// Wait blocks until every worker has stopped.
func (p *Pipeline) Wait() { p.wg.Wait() }

// Backlog is the number of recorded events not yet handled.
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

func (p *Pipeline) work(ctx context.Context, s *shard) {
	defer p.wg.Done()
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
		p.markDone(ctx, item.Seq)
		p.backlog.Add(-1)
	}
}

// markDone retries until the database takes it: forgetting to mark would
// only re-run the event after a restart (sends are idempotent), but giving up
// silently would hide a database outage.
func (p *Pipeline) markDone(ctx context.Context, seq int64) {
	for wait := 100 * time.Millisecond; ; wait = min(wait*2, 10*time.Second) {
		err := p.Inbox.MarkDone(ctx, seq)
		if err == nil || ctx.Err() != nil {
			return
		}
		p.Log.Error().Err(err).Int64("seq", seq).Dur("retry_in", wait).Msg("Could not mark event done")
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
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
