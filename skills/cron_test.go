package skills_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/opsbot/opsbot/skills"
)

type memSchedules struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (m *memSchedules) LastRun(ctx context.Context, key string) (time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last[key], nil
}

func (m *memSchedules) SetLastRun(ctx context.Context, key string, at time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.last[key] = at
	return nil
}

func TestCronRunsAndRecords(t *testing.T) {
	runs := make(chan string, 10)
	s := funcSkill{"c", func(r *skills.Router) error {
		r.Cron("@every 1s", func(ctx context.Context, ev *skills.Event) error {
			runs <- string(ev.RoomID)
			_, err := ev.Respond(ctx, "tick")
			return err
		}, skills.InRooms("!ops:x"))
		return nil
	}}
	sched := &memSchedules{last: map[string]time.Time{}}
	e, f := newEngineWith(t, s, sched)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.RunSchedules(ctx)
	select {
	case room := <-runs:
		if room != "!ops:x" {
			t.Fatalf("ran in %q", room)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("cron job did not run")
	}
	time.Sleep(50 * time.Millisecond)
	sched.mu.Lock()
	recorded := len(sched.last)
	sched.mu.Unlock()
	if recorded != 1 {
		t.Fatalf("run not recorded")
	}
	if b := f.Bodies(); len(b) == 0 || b[0] != "@bot:x: tick" {
		t.Fatalf("sent %q", b)
	}
}

func TestCronCatchesUpOnceAfterDowntime(t *testing.T) {
	runs := make(chan time.Time, 100)
	s := funcSkill{"c", func(r *skills.Router) error {
		r.Cron("* * * * *", func(ctx context.Context, ev *skills.Event) error {
			runs <- time.Now()
			return nil
		})
		return nil
	}}
	// The job last ran an hour ago: 60 slots were missed, it runs once.
	sched := &memSchedules{last: map[string]time.Time{"c|0|* * * * *": time.Now().Add(-time.Hour).Truncate(time.Minute)}}
	e, _ := newEngineWith(t, s, sched)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.RunSchedules(ctx)
	select {
	case <-runs:
	case <-time.After(2 * time.Second):
		t.Fatal("missed run not caught up")
	}
	select {
	case <-runs:
		t.Fatal("caught up more than once")
	case <-time.After(500 * time.Millisecond):
	}
}
