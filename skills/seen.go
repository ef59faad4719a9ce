package skills

import (
	"sync"
	"time"
)

// Seen remembers keys, each for a window of its own, in bounded memory:
// the signed webhook deliveries taken (Options.Deliveries), so that a
// captured delivery cannot be posted again, and, in the host, whom the
// bots told why a command was refused. The host keeps them across
// configuration reloads. They live in memory: a restart or a failover
// forgets them, which leaves Standard Webhooks deliveries bounded by their
// signed timestamp and body-signed ones open to a replay once
// (docs/operations.md, "Security").
type Seen struct {
	mu    sync.Mutex
	until map[string]time.Time
	order []string // oldest first, for trimming
}

// maxSeen bounds the memory: past it the oldest entries go first.
const maxSeen = 100_000

// NewSeen returns an empty memory.
func NewSeen() *Seen { return &Seen{until: map[string]time.Time{}} }

// Take records key for window and reports whether it is new (not taken
// within its window before).
func (d *Seen) Take(key string, now time.Time, window time.Duration) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if until, ok := d.until[key]; ok && now.Before(until) {
		return false
	}
	d.trim(now)
	if _, ok := d.until[key]; !ok {
		d.order = append(d.order, key)
	}
	d.until[key] = now.Add(window)
	return true
}

// Forget drops a key, so that it is new again (a webhook delivery whose
// handling failed: the sender's retry gets through).
func (d *Seen) Forget(key string) {
	if key == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.until, key) // its place in order goes at the next trim
}

// trim drops expired entries at the old end, and the oldest ones past
// maxSeen.
func (d *Seen) trim(now time.Time) {
	n := 0
	for n < len(d.order) {
		key := d.order[n]
		until, ok := d.until[key]
		if ok && now.Before(until) && len(d.order)-n < maxSeen {
			break
		}
		if ok {
			delete(d.until, key)
		}
		n++
	}
	d.order = d.order[n:]
}
