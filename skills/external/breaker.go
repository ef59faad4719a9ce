package external

import (
	"sync"
	"time"
)

// Ours: no circuit-breaker library among the fixed dependencies; 75 lines.
//
// breaker is a circuit breaker: after threshold consecutive failed calls
// it opens, and calls fail at once for openFor; then it is half-open and
// lets one trial call through, whose outcome closes or re-opens it.
type breaker struct {
	threshold int
	openFor   time.Duration

	mu        sync.Mutex
	failures  int       // consecutive failed calls
	openUntil time.Time // zero when closed
	trial     bool      // a half-open trial call is in flight
}

// circuit states, as allow reports them.
const (
	stateClosed = iota
	stateOpen
	stateTrial // half-open, the caller makes the trial call
	stateBusy  // half-open, another caller's trial call is in flight
)

// allow says whether a call may go ahead; when not, retryIn is how long
// the circuit stays open.
func (b *breaker) allow(now time.Time) (state int, retryIn time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.openUntil.IsZero():
		return stateClosed, 0
	case now.Before(b.openUntil):
		return stateOpen, b.openUntil.Sub(now)
	case b.trial:
		return stateBusy, 0
	default:
		b.trial = true
		return stateTrial, 0
	}
}

// outcome of a call, for record.
const (
	callOK        = iota // the skill answered (even with an error of its own)
	callFailed           // unreachable, timed out, 5xx or 429
	callCancelled        // the caller gave up: says nothing about the skill
)

// record notes a call's outcome; trial says it was the half-open trial
// call. opened is true when this failure opened (or re-opened) the circuit;
// closed when this success closed it.
func (b *breaker) record(now time.Time, outcome int, trial bool) (opened, closed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if trial {
		b.trial = false
	}
	switch outcome {
	case callOK:
		closed = !b.openUntil.IsZero()
		b.failures, b.openUntil = 0, time.Time{}
	case callFailed:
		b.failures++
		if trial || (b.openUntil.IsZero() && b.failures >= b.threshold) {
			b.openUntil = now.Add(b.openFor)
			opened = true
		}
	}
	return opened, closed
}
