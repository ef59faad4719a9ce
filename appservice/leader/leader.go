// Package leader makes sure exactly one opsbot process handles events,
// sends and writes crypto state, however many replicas run, and that a
// leader that was cut off, paused or frozen can no longer act once another
// one took over.
//
// Leadership is a term with an epoch, a number kept in the database
// (opsbot_leader) that every new leader increments. Everything that matters
// is fenced by it: inbox claims and done marks are written only in a
// database transaction that still finds the term's epoch (Term.Hold), and
// sends check the epoch first (Term.Check). A leader keeps its term by
// renewing a lease in the database (default 10 s) every second; one that
// stops renewing (paused, stuck, cut off) loses the term when the lease
// runs out, and stops acting by itself before then (its own deadline is
// the last renewal plus the lease, less a margin, on its monotonic clock).
//
// On Postgres a session-level advisory lock, held by the leader on a
// connection of its own, tells a standby at once that the leader's process
// (or its session) is gone: the standby then increments the epoch
// immediately, fencing the old leader, and starts acting after a short
// grace, which lets sends the old leader had begun land first. A standby
// that cannot get the lock (a frozen process keeps its session) takes over
// when the lease has run out. SQLite is one process on one machine: its
// elector takes the term at once.
package leader

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"
)

// ErrFenced means a newer leader exists: this process must not act.
var ErrFenced = errors.New("another opsbot took over (a newer leadership epoch exists)")

// Elector waits for leadership.
type Elector interface {
	// Acquire blocks until this process is the leader (or ctx ends).
	Acquire(ctx context.Context) (*Term, error)
}

// Defaults of the timings.
const (
	DefaultLease = 10 * time.Second
	// renewEvery is how often the leader renews its lease and a standby
	// looks for a chance to take over.
	renewEvery = time.Second
	// verifiedFor is how long a check of the epoch in the database counts
	// for Term.Check; a frozen process that wakes up checks again, since
	// its monotonic clock went on.
	verifiedFor = 250 * time.Millisecond
	// handoverGrace is how long a new leader waits after fencing an old one
	// whose lease had not run out, so that sends it had begun land before
	// the new leader looks for them.
	handoverGrace = time.Second
)

// Term is this process's leadership: its epoch, and whether it still holds.
type Term struct {
	epoch int64
	// verify reads the current epoch from the database.
	verify func(ctx context.Context) (int64, error)
	// hold locks the leader row inside a database transaction and returns
	// the current epoch (see Hold).
	hold func(ctx context.Context) (int64, error)
	// release gives the term up.
	release func(ctx context.Context)

	mu       sync.Mutex
	deadline time.Time // monotonic: the term ends here unless renewed
	verified time.Time // last time the database confirmed the epoch
	err      error     // why the term ended, once it has
	lost     chan error
	done     chan struct{} // closed when the term ends
}

func newTerm(epoch int64, lease time.Duration) *Term {
	now := time.Now()
	return &Term{epoch: epoch, deadline: now.Add(lease - leaseMargin(lease)), verified: now,
		lost: make(chan error, 1), done: make(chan struct{})}
}

// leaseMargin is how much earlier than the lease a leader stops acting on
// its own: clocks drift, and a renewal's answer comes after the database
// set the lease.
func leaseMargin(lease time.Duration) time.Duration { return max(lease/5, 500*time.Millisecond) }

// Epoch is the term's number.
func (t *Term) Epoch() int64 { return t.epoch }

// Lost receives once, when the term ends.
func (t *Term) Lost() <-chan error { return t.lost }

// Valid reports whether the term still holds as far as this process knows
// without asking the database: not ended, and renewed recently enough.
func (t *Term) Valid() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.validLocked()
}

func (t *Term) validLocked() bool { return t.err == nil && time.Now().Before(t.deadline) }

// Check is for actions outside the database (sends): the term must be
// valid, and the database must have confirmed its epoch within the last
// verifiedFor. It fails closed: when the database cannot say, the answer
// is no, as an error Unconfirmed reports (wait and ask again: the lease
// decides whether the term is over).
func (t *Term) Check(ctx context.Context) error {
	t.mu.Lock()
	if !t.validLocked() {
		err := t.endErrLocked()
		t.mu.Unlock()
		return err
	}
	fresh := time.Since(t.verified) < verifiedFor
	t.mu.Unlock()
	if fresh || t.verify == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	current, err := t.verify(ctx)
	if err != nil {
		return unconfirmed{err}
	}
	if current != t.epoch {
		t.end(fmt.Errorf("%w (epoch %d, ours %d)", ErrFenced, current, t.epoch))
		return ErrFenced
	}
	t.mu.Lock()
	t.verified = time.Now()
	t.mu.Unlock()
	return nil
}

// Hold is for writes in the database: called inside a database
// transaction, it locks the leader row against a new leader's increment
// until the transaction ends, and fails with ErrFenced if the epoch is no
// longer the term's. A write made after Hold succeeded therefore commits
// before any newer leader begins, or not at all.
func (t *Term) Hold(ctx context.Context) error {
	if !t.Valid() {
		return t.endErr()
	}
	current, err := t.hold(ctx)
	if err != nil {
		return unconfirmed{err}
	}
	if current != t.epoch {
		t.end(fmt.Errorf("%w (epoch %d, ours %d)", ErrFenced, current, t.epoch))
		return ErrFenced
	}
	return nil
}

// unconfirmed is a failure to check the term (the database did not answer,
// its session was ended), not an answer that the term is over: the send or
// write it guards waits and is tried again, and the lease decides about
// the term.
type unconfirmed struct{ err error }

func (u unconfirmed) Error() string     { return "cannot confirm leadership: " + u.err.Error() }
func (u unconfirmed) Unwrap() error     { return u.err }
func (u unconfirmed) Unconfirmed() bool { return true }

// Unconfirmed reports whether err (from Check or Hold, or wrapping theirs)
// says only that the database could not confirm the term right now. Any
// error with an Unconfirmed() method returning true counts, so that fakes
// of a term can say it too.
func Unconfirmed(err error) bool {
	var unsure interface{ Unconfirmed() bool }
	return errors.As(err, &unsure) && unsure.Unconfirmed()
}

// Release ends the term (if it has not ended) and hands over: standbys
// may take over at once. Call it once the work under the term has stopped;
// it does nothing to a newer term.
func (t *Term) Release(ctx context.Context) {
	t.end(errors.New("released"))
	if t.release != nil {
		t.release(ctx)
	}
}

func (t *Term) endErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.endErrLocked()
}

func (t *Term) endErrLocked() error {
	if t.err != nil {
		return t.err
	}
	return errors.New("the leadership lease ran out without being renewed")
}

// end records why the term ended and tells Lost, once.
func (t *Term) end(err error) {
	t.mu.Lock()
	first := t.err == nil
	if first {
		t.err = err
	}
	t.mu.Unlock()
	if first {
		close(t.done)
		t.lost <- err
	}
}

// renewed moves the deadline after a successful renewal sent at start.
func (t *Term) renewed(start time.Time, lease time.Duration) {
	t.mu.Lock()
	t.deadline = start.Add(lease - leaseMargin(lease))
	t.verified = start
	t.mu.Unlock()
}

// expired ends the term if its deadline passed without renewal.
func (t *Term) expired() bool {
	t.mu.Lock()
	late := t.err == nil && !time.Now().Before(t.deadline)
	t.mu.Unlock()
	if late {
		t.end(errors.New("the leadership lease ran out: the database could not be reached to renew it"))
	}
	return late
}

// KeyFor derives the advisory lock key from the appservice ID, so that two
// different opsbot installations can share one Postgres server.
func KeyFor(appserviceID string) int64 {
	h := fnv.New64a()
	h.Write([]byte("opsbot-leader:" + appserviceID))
	return int64(h.Sum64())
}
