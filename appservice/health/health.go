// Package health serves /healthz (the process is up and serving) and
// /readyz (the database answers and the homeserver is reachable), for
// Kubernetes probes and load balancers. Bodies name each check's state but
// never carry error details, which could reveal internal addresses.
package health

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Check is one readiness condition.
type Check struct {
	Name string
	Run  func(ctx context.Context) error
}

// Options configure a Checker.
type Options struct {
	Checks []Check
	// CacheFor is how long check results are reused.
	CacheFor time.Duration
	// Gate, if set, is checked on every request, before (and without) the
	// cache: it makes a standby replica not ready, and a new leader ready,
	// at once.
	Gate func() error
	Log  zerolog.Logger
}

// Checker runs readiness checks, at most once per CacheFor, so that probes
// cannot hammer the database or the homeserver.
type Checker struct {
	opts Options

	mu      sync.Mutex
	last    time.Time
	results map[string]string
	ready   bool
	// wasReady remembers the last outcome, to log changes only.
	wasReady *bool
}

// New returns a Checker; Register serves it.
func New(opts Options) *Checker { return &Checker{opts: opts} }

// Register adds /healthz and /readyz to mux.
func (c *Checker) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		write(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if c.opts.Gate != nil {
			if err := c.opts.Gate(); err != nil {
				write(w, http.StatusServiceUnavailable, map[string]string{"leader": "standby"})
				return
			}
		}
		ready, results := c.Ready(r.Context())
		status := http.StatusOK
		if !ready {
			status = http.StatusServiceUnavailable
		}
		write(w, status, results)
	})
}

// Ready runs (or reuses) the checks and reports each one as "ok" or "failing".
func (c *Checker) Ready(ctx context.Context) (bool, map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.results != nil && time.Since(c.last) < c.opts.CacheFor {
		return c.ready, c.results
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	results := map[string]string{}
	ready := true
	for _, chk := range c.opts.Checks {
		if err := chk.Run(ctx); err != nil {
			results[chk.Name] = "failing"
			ready = false
			c.opts.Log.Warn().Err(err).Str("check", chk.Name).Msg("Readiness check failing")
		} else {
			results[chk.Name] = "ok"
		}
	}
	if c.wasReady == nil || *c.wasReady != ready {
		c.opts.Log.Info().Bool("ready", ready).Interface("checks", results).Msg("Readiness changed")
		c.wasReady = &ready
	}
	c.last, c.results, c.ready = time.Now(), results, ready
	return ready, results
}

func write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
