package skills

import (
	"sync"
	"time"
)

// Deliveries remembers the signed webhook deliveries taken, each for its
// replay window, so that a captured delivery cannot be posted again. The
// host keeps one across configuration reloads (Options.Deliveries). It
// lives in memory: a restart or a failover forgets it, which leaves
// Standard Webhooks deliveries bounded by their signed timestamp and
// body-signed ones open to a replay once (docs/operations.md, "Security").
type Deliveries struct {
	mu    sync.Mutex
	until map[string]time.Time
	order []string // oldest first, for trimming
}

// maxDeliveries bounds the memory: past it the oldest entries go first.
const maxDeliveries = 100_000

// NewDeliveries returns an empty memory of deliveries.
func NewDeliveries() *Deliveries { return &Deliveries{until: map[string]time.Time{}} }

// take records a delivery for window and reports whether it is new (not
// taken within its window before).
func (d *Deliveries) take(key string, now time.Time, window time.Duration) bool {
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

// forget drops a delivery whose handling failed, so the sender's retry
// gets through.
func (d *Deliveries) forget(key string) {
	if key == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.until, key) // its place in order goes at the next trim
}

// trim drops expired entries at the old end, and the oldest ones past
// maxDeliveries.
func (d *Deliveries) trim(now time.Time) {
	n := 0
	for n < len(d.order) {
		key := d.order[n]
		until, ok := d.until[key]
		if ok && now.Before(until) && len(d.order)-n < maxDeliveries {
			break
		}
		if ok {
			delete(d.until, key)
		}
		n++
	}
	d.order = d.order[n:]
}
