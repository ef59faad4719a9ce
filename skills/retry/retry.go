// Package retry repeats an operation that failed for a reason that may
// pass (a network error, an overloaded or rate-limiting server), waiting
// longer after each failure: the first wait doubles up to a ceiling, and a
// wait the server asked for (Retry-After, retry_after_ms) replaces it. The
// caller says which errors are worth retrying; the context ends it all.
//
// Ours: no backoff library among the fixed dependencies (go.mau.fi/util
// brings retryafter, which the callers use to read Retry-After).
package retry

import (
	"context"
	"fmt"
	"time"
)

// Policy says how often and how patiently to retry.
type Policy struct {
	// Min is the first wait; it doubles after each wait the server did
	// not set.
	Min time.Duration
	// Max caps every single wait, the server's included (0: no cap).
	Max time.Duration
	// Attempts caps the number of attempts, the first included (0: no
	// cap, retry until the context ends).
	Attempts int
	// Classify says whether err may pass on retry and how long the server
	// asked to wait (0: it did not say). Nil retries every error.
	Classify func(err error) (retryable bool, wait time.Duration)
	// Notify, if set, is told of each failed attempt that will be retried,
	// before its wait (see Every to hear only some).
	Notify func(attempt int, err error, wait time.Duration)
	// Sleep waits d, or less when ctx ends (then it returns an error).
	// Nil uses a timer; tests replace it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Error is what Do returns when it gives up on a retryable error.
type Error struct {
	// Attempts is how many attempts were made.
	Attempts int
	// Last is the error of the last attempt.
	Last error
	// Stopped is the context's error when the context ended during a
	// wait; nil when the attempts ran out.
	Stopped error
}

func (e *Error) Error() string {
	if e.Stopped != nil {
		return fmt.Sprintf("gave up after %d attempts: %v (last error: %v)", e.Attempts, e.Stopped, e.Last)
	}
	return fmt.Sprintf("failed %d times; last error: %v", e.Attempts, e.Last)
}

// Unwrap lets errors.Is see the last error and the context's.
func (e *Error) Unwrap() []error {
	if e.Stopped == nil {
		return []error{e.Last}
	}
	return []error{e.Last, e.Stopped}
}

// Do calls op until it succeeds, fails in a way Classify calls final (that
// error is returned as it is), runs out of attempts, or ctx ends during a
// wait (both *Error). op should itself watch ctx.
func Do(ctx context.Context, p Policy, op func() error) error {
	sleep := p.Sleep
	if sleep == nil {
		sleep = Sleep
	}
	backoff := p.Min
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil {
			return nil
		}
		retryable, wait := true, time.Duration(0)
		if p.Classify != nil {
			retryable, wait = p.Classify(err)
		}
		if !retryable {
			return err
		}
		if p.Attempts > 0 && attempt >= p.Attempts {
			return &Error{Attempts: attempt, Last: err}
		}
		if wait <= 0 {
			wait = backoff
			backoff *= 2
			if p.Max > 0 {
				backoff = min(backoff, p.Max)
			}
		}
		if p.Max > 0 {
			wait = min(wait, p.Max)
		}
		if p.Notify != nil {
			p.Notify(attempt, err, wait)
		}
		if serr := sleep(ctx, wait); serr != nil || ctx.Err() != nil {
			if ctx.Err() != nil {
				serr = ctx.Err()
			}
			return &Error{Attempts: attempt, Last: err, Stopped: serr}
		}
	}
}

// Every passes on to notify only the first failure and every nth after it
// (attempts 1, n, 2n, ...), for loops that may wait a long time and should
// say so without flooding the log.
func Every(n int, notify func(attempt int, err error, wait time.Duration)) func(int, error, time.Duration) {
	return func(attempt int, err error, wait time.Duration) {
		if attempt == 1 || (n > 0 && attempt%n == 0) {
			notify(attempt, err, wait)
		}
	}
}

// Sleep waits d or until ctx ends, and then returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
