package retry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/opsbot/opsbot/skills/retry"
)

var (
	errBusy   = errors.New("503 busy")
	errLimit  = errors.New("429 slow down")
	errDenied = errors.New("403 forbidden")
)

// classify calls errDenied final and errLimit a request to wait 5 s.
func classify(err error) (bool, time.Duration) {
	switch err {
	case errDenied:
		return false, 0
	case errLimit:
		return true, 5 * time.Second
	}
	return true, 0
}

// failing returns an op that fails with errs in turn, then succeeds.
func failing(errs ...error) (op func() error, calls *int) {
	n := 0
	return func() error {
		n++
		if n <= len(errs) {
			return errs[n-1]
		}
		return nil
	}, &n
}

// recorder is a Sleep that only notes the waits.
func recorder(waits *[]time.Duration) func(context.Context, time.Duration) error {
	return func(_ context.Context, d time.Duration) error { *waits = append(*waits, d); return nil }
}

func TestBackoffDoublesUpToMax(t *testing.T) {
	var waits []time.Duration
	op, calls := failing(errBusy, errBusy, errBusy, errBusy, errBusy)
	err := retry.Do(context.Background(), retry.Policy{Min: time.Second, Max: 5 * time.Second, Classify: classify, Sleep: recorder(&waits)}, op)
	if err != nil || *calls != 6 {
		t.Fatalf("err %v after %d calls", err, *calls)
	}
	if got := fmt.Sprint(waits); got != "[1s 2s 4s 5s 5s]" {
		t.Errorf("waits %s", got)
	}
}

func TestHonoursServerWait(t *testing.T) {
	var waits []time.Duration
	op, _ := failing(errBusy, errLimit, errBusy)
	err := retry.Do(context.Background(), retry.Policy{Min: time.Second, Max: time.Minute, Classify: classify, Sleep: recorder(&waits)}, op)
	if err != nil {
		t.Fatal(err)
	}
	// The server's wait does not advance our own backoff.
	if got := fmt.Sprint(waits); got != "[1s 5s 2s]" {
		t.Errorf("waits %s", got)
	}
	// Max caps the server's wait too.
	waits = nil
	op, _ = failing(errLimit)
	_ = retry.Do(context.Background(), retry.Policy{Min: time.Second, Max: 3 * time.Second, Classify: classify, Sleep: recorder(&waits)}, op)
	if got := fmt.Sprint(waits); got != "[3s]" {
		t.Errorf("capped waits %s", got)
	}
}

func TestGivesUpOnNonRetryable(t *testing.T) {
	var waits []time.Duration
	op, calls := failing(errBusy, errDenied, errBusy)
	err := retry.Do(context.Background(), retry.Policy{Min: time.Second, Classify: classify, Sleep: recorder(&waits)}, op)
	if err != errDenied || *calls != 2 || len(waits) != 1 {
		t.Errorf("err %v after %d calls, waits %v", err, *calls, waits)
	}
}

func TestAttemptsRunOut(t *testing.T) {
	var waits []time.Duration
	op, calls := failing(errBusy, errBusy, errBusy, errBusy)
	err := retry.Do(context.Background(), retry.Policy{Min: time.Millisecond, Attempts: 3, Sleep: recorder(&waits)}, op)
	var g *retry.Error
	if !errors.As(err, &g) || g.Attempts != 3 || g.Last != errBusy || g.Stopped != nil || *calls != 3 {
		t.Fatalf("err %#v after %d calls", err, *calls)
	}
	if !errors.Is(err, errBusy) || fmt.Sprint(waits) != "[1ms 2ms]" {
		t.Errorf("errors.Is: %v, waits %v", errors.Is(err, errBusy), waits)
	}
}

func TestStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	done := make(chan error, 1)
	go func() {
		done <- retry.Do(ctx, retry.Policy{Min: time.Hour}, func() error { calls++; return errBusy })
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		var g *retry.Error
		if !errors.As(err, &g) || g.Attempts != 1 || !errors.Is(err, context.Canceled) || !errors.Is(err, errBusy) {
			t.Errorf("err %v", err)
		}
		if calls != 1 {
			t.Errorf("%d calls", calls)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Do kept waiting after the context ended")
	}
}

func TestNotifyAndEvery(t *testing.T) {
	var told []int
	notify := func(attempt int, err error, wait time.Duration) { told = append(told, attempt) }
	op, _ := failing(errBusy, errBusy, errBusy, errBusy, errBusy, errBusy, errBusy)
	var waits []time.Duration
	_ = retry.Do(context.Background(), retry.Policy{Min: time.Millisecond, Notify: retry.Every(3, notify), Sleep: recorder(&waits)}, op)
	if fmt.Sprint(told) != "[1 3 6]" {
		t.Errorf("told of attempts %v", told)
	}
}
