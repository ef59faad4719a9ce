package pipeline

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/opsbot/opsbot/appservice/store"
)

// MaxPendingMarks bounds the events handled but not yet marked done. Workers
// wait when it is reached, so a database that does not take the marks holds
// the pipeline back instead of piling up work that a crash would make run
// again.
const MaxPendingMarks = 64

// markGather is how long the marker lets marks gather before it writes a
// batch: a mark is a note for the next leader, not something anyone waits
// for, and one commit for many events costs far less than many commits.
const markGather = 2 * time.Millisecond

// shutdownMarkTimeout bounds the attempts to write the last marks once the
// pipeline is stopping.
var shutdownMarkTimeout = 5 * time.Second

// marker writes the done marks of all workers, all that are queued in one
// batch (one database commit), under the pipeline's term.
type marker struct {
	p       *Pipeline
	mu      sync.Mutex
	cond    *sync.Cond
	pending []int64
	closed  bool // the workers have stopped: write what is left and stop
	fenced  bool // the term is over: marks are dropped (the events run again)
	// halted is closed when the pipeline stops: workers no longer wait for
	// room, and retries give up after shutdownMarkTimeout.
	halted chan struct{}
	wg     sync.WaitGroup
}

func (m *marker) start(p *Pipeline) {
	m.p = p
	m.cond = sync.NewCond(&m.mu)
	m.halted = make(chan struct{})
	m.wg.Add(1)
	go m.loop()
}

// halt is called when the pipeline stops.
func (m *marker) halt() {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.halted:
	default:
		close(m.halted)
	}
	m.cond.Broadcast()
}

func (m *marker) isHalted() bool {
	select {
	case <-m.halted:
		return true
	default:
		return false
	}
}

// add queues a mark, waiting while MaxPendingMarks are queued. Once the
// pipeline stops it does not wait: a mark that does not fit is dropped,
// and its event runs again after the restart.
func (m *marker) add(seq int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.pending) >= MaxPendingMarks && !m.closed && !m.fenced && !m.isHalted() {
		m.cond.Wait()
	}
	if m.fenced || len(m.pending) >= MaxPendingMarks {
		return
	}
	m.pending = append(m.pending, seq)
	m.cond.Broadcast()
}

// close writes what is queued and stops the marker.
func (m *marker) close() {
	m.mu.Lock()
	m.closed = true
	m.cond.Broadcast()
	m.mu.Unlock()
	m.wg.Wait()
}

func (m *marker) loop() {
	defer m.wg.Done()
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
		if !m.closed && len(m.pending) < MaxPendingMarks/2 {
			m.mu.Unlock()
			select {
			case <-time.After(markGather):
			case <-m.halted:
			}
			m.mu.Lock()
		}
		batch, m.pending = m.pending, batch[:0]
		closing := m.closed
		m.cond.Broadcast() // room for the workers again
		m.mu.Unlock()

		err := m.write(batch, closing)
		m.p.backlog.Add(-int64(len(batch)))
		if errors.Is(err, store.ErrFenced) {
			m.mu.Lock()
			m.fenced = true
			m.pending = nil
			m.cond.Broadcast()
			m.mu.Unlock()
			m.p.fenced(err)
		}
	}
}

// write writes one batch, retrying until the database takes it: forgetting
// a mark would only re-run the event after a restart (sends check for an
// earlier copy), but giving up silently would hide a database outage. Once
// the pipeline is closing, retries stop after shutdownMarkTimeout. A term
// that is over is final: its marks are dropped.
func (m *marker) write(seqs []int64, closing bool) error {
	var giveUp <-chan time.Time
	stopping := m.halted
	if closing || m.isHalted() {
		giveUp, stopping = time.After(shutdownMarkTimeout), nil
	}
	for wait := 100 * time.Millisecond; ; wait = min(wait*2, 10*time.Second) {
		err := m.p.opts.Inbox.MarkDone(context.Background(), m.p.term, seqs)
		if err == nil || errors.Is(err, store.ErrFenced) {
			return err
		}
		m.p.opts.Log.Error().Err(err).Int("events", len(seqs)).Int64("first_seq", seqs[0]).Dur("retry_in", wait).Msg("Could not mark events done")
		select {
		case <-giveUp:
			m.p.opts.Log.Warn().Int("events", len(seqs)).Msg("Stopping without marking events done: they run again after the restart")
			return err
		case <-time.After(wait):
		case <-stopping: // try once more at once, then until giveUp
			giveUp, stopping = time.After(shutdownMarkTimeout), nil
		}
	}
}
