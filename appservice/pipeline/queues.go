package pipeline

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/opsbot/opsbot/appservice/store"
)

// queue holds the events of one room, or of one bot device's to-device
// stream, in order. Its first event is handled (running), waits (parked),
// or waits for a worker (in a ready list).
type queue struct {
	key      string
	toDevice bool
	items    []*Item
	running  bool
	ready    bool // in a ready list
	parked   *Park
	since    time.Time // when the first item started waiting (parked)
}

// readyLists are the queues whose first event can be handled, to-device
// queues first.
type readyLists struct {
	toDevice, rooms []*queue
}

func (r *readyLists) push(q *queue) {
	if q.toDevice {
		r.toDevice = append(r.toDevice, q)
	} else {
		r.rooms = append(r.rooms, q)
	}
}

func (r *readyLists) pop() *queue {
	for _, list := range []*[]*queue{&r.toDevice, &r.rooms} {
		if len(*list) > 0 {
			q := (*list)[0]
			(*list)[0] = nil
			*list = (*list)[1:]
			return q
		}
	}
	return nil
}

// queueKey is the queue an event belongs to: its room, or for to-device
// events the device (intake files them under "to-device:user|device").
func queueKey(ev store.InboxEvent) (string, bool) {
	return ev.RoomID, ev.Kind == store.KindToDevice || strings.HasPrefix(ev.RoomID, "to-device:")
}

// enqueueLocked adds an item to its queue, in sequence order (events picked
// up from the inbox may be older than some delivered directly), never
// before the first item while that one is running or parked.
func (p *Pipeline) enqueueLocked(item *Item) {
	key, toDevice := queueKey(item.InboxEvent)
	q := p.queues[key]
	if q == nil {
		q = &queue{key: key, toDevice: toDevice}
		p.queues[key] = q
	}
	first := 0
	if q.running || q.parked != nil {
		first = 1
	}
	i := first + sort.Search(len(q.items)-min(first, len(q.items)), func(i int) bool { return q.items[first+i].Seq > item.Seq })
	q.items = append(q.items, nil)
	copy(q.items[i+1:], q.items[i:])
	q.items[i] = item
	p.readyLocked(q)
}

// readyLocked puts a queue in a ready list if its first item can run.
func (p *Pipeline) readyLocked(q *queue) {
	if q.ready || q.running || q.parked != nil || len(q.items) == 0 {
		return
	}
	q.ready = true
	p.ready.push(q)
}

// next waits for a ready queue and returns it with its first item, or nil
// once the pipeline stops (or the term no longer holds).
func (p *Pipeline) next() (*queue, *Item) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.stopping || (p.term != nil && !p.term.Valid()) {
			return nil, nil
		}
		if q := p.ready.pop(); q != nil {
			q.ready = false
			q.running = true
			p.running++
			return q, q.items[0]
		}
		p.cond.Wait()
	}
}

// park sets a queue waiting; it is ready again when the park's Wake is
// closed, at its Until, or never if ctx ends first (the events stay in the
// inbox).
func (p *Pipeline) park(ctx context.Context, q *queue, park *Park) {
	p.mu.Lock()
	q.running = false
	p.running--
	if q.parked == nil && q.since.IsZero() {
		q.since = time.Now()
	}
	q.parked = park
	p.cond.Broadcast() // Drain may be waiting for running to drop
	p.mu.Unlock()
	go func() {
		timer := time.NewTimer(time.Until(park.Until))
		defer timer.Stop()
		select {
		case <-park.Wake:
		case <-timer.C:
		case <-ctx.Done():
			return
		}
		p.mu.Lock()
		if q.parked == park {
			q.parked = nil
			p.readyLocked(q)
			p.cond.Broadcast()
		}
		p.mu.Unlock()
	}()
}

// finish takes a handled item off its queue and, if done, has it marked.
func (p *Pipeline) finish(q *queue, item *Item, done bool) {
	p.mu.Lock()
	q.running = false
	p.running--
	if done {
		q.items[0] = nil
		q.items = q.items[1:]
		q.since = time.Time{}
	}
	if len(q.items) == 0 {
		delete(p.queues, q.key)
	} else if done {
		p.readyLocked(q)
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	if done {
		p.marks.add(item.Seq)
	}
}

// Drain lets the workers finish the events that are ready or running, but
// takes no parked ones, until none are left or ctx ends.
func (p *Pipeline) Drain(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	for ctx.Err() == nil && (p.running > 0 || len(p.ready.toDevice)+len(p.ready.rooms) > 0) {
		p.cond.Wait()
	}
}

// stop makes the workers stop taking events.
func (p *Pipeline) stop() {
	p.mu.Lock()
	p.stopping = true
	p.cond.Broadcast()
	p.mu.Unlock()
	p.marks.halt()
}

// Wait blocks until the workers have stopped, writes the marks of what they
// finished, and gives the events they did not start back to the inbox
// unclaimed (the next leader runs them without suspecting it acted on them).
func (p *Pipeline) Wait() {
	p.workers.Wait()
	p.claimer.Wait()
	p.marks.close()
	p.mu.Lock()
	var unstarted []int64
	for _, q := range p.queues {
		for i, item := range q.items {
			if i == 0 && q.running {
				continue // cut off while running: it stays claimed
			}
			unstarted = append(unstarted, item.Seq)
		}
	}
	p.mu.Unlock()
	if len(unstarted) == 0 || p.term == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.opts.Inbox.ReleaseClaims(ctx, p.term, unstarted); err != nil {
		p.opts.Log.Warn().Err(err).Int("events", len(unstarted)).Msg("Could not give unstarted events back; the next leader runs them with its recovery checks")
	}
}

// Parked lists the queues that wait, oldest first.
func (p *Pipeline) Parked() []ParkedRoom {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []ParkedRoom
	for _, q := range p.queues {
		if q.parked != nil {
			out = append(out, ParkedRoom{Room: q.key, Reason: q.parked.Reason, Since: q.since})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Since.Before(out[j].Since) })
	return out
}

// ParkedStats says how many queues wait and since when the oldest does.
func (p *Pipeline) ParkedStats() (n int, oldest time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, q := range p.queues {
		if q.parked != nil {
			n++
			oldest = max(oldest, time.Since(q.since))
		}
	}
	return n, oldest
}
