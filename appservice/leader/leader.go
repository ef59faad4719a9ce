// Package leader makes sure exactly one opsbot process handles events and
// writes crypto state, however many replicas run. On Postgres the leader
// holds a session-level advisory lock on a dedicated connection: when the
// process dies, or its connection does, Postgres releases the lock and a
// standby takes it within a poll interval. SQLite is one machine, one
// process: it is always the leader.
package leader

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Elector waits for leadership.
type Elector interface {
	// Acquire blocks until this process is the leader (or ctx ends). The
	// returned channel receives an error if leadership is lost later; the
	// process must then stop handling events at once.
	Acquire(ctx context.Context) (lost <-chan error, err error)
	// Release gives leadership up (on shutdown).
	Release()
}

// Always is the elector for SQLite: there is only one process.
type Always struct{}

// Acquire returns at once.
func (Always) Acquire(ctx context.Context) (<-chan error, error) { return make(chan error), nil }

// Release does nothing.
func (Always) Release() {}

// Postgres elects through pg_try_advisory_lock.
type Postgres struct {
	DB  *sql.DB
	Key int64
	// Poll is how often a standby tries for the lock and the leader checks
	// its connection (default 1 s; failover takes at most about two polls).
	Poll time.Duration
	Log  zerolog.Logger

	conn *sql.Conn
	mu   sync.Mutex
	done bool
}

func (p *Postgres) released() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// KeyFor derives the advisory lock key from the appservice ID, so that two
// different opsbot installations can share one Postgres server.
func KeyFor(appserviceID string) int64 {
	h := fnv.New64a()
	h.Write([]byte("opsbot-leader:" + appserviceID))
	return int64(h.Sum64())
}

// Acquire polls for the lock, then watches the connection that holds it.
func (p *Postgres) Acquire(ctx context.Context) (<-chan error, error) {
	if p.Poll == 0 {
		p.Poll = time.Second
	}
	logged := false
	for {
		ok, err := p.try(ctx)
		if ok {
			lost := make(chan error, 1)
			go p.watch(p.conn, lost)
			return lost, nil
		}
		if err != nil {
			p.Log.Warn().Err(err).Msg("Could not try for leadership; retrying")
		} else if !logged {
			p.Log.Info().Msg("Another opsbot is the leader; standing by (not ready) until it stops")
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(p.Poll):
		}
	}
}

func (p *Postgres) try(ctx context.Context) (bool, error) {
	if p.conn == nil {
		conn, err := p.DB.Conn(ctx)
		if err != nil {
			return false, err
		}
		p.conn = conn
	}
	var ok bool
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := p.conn.QueryRowContext(cctx, "SELECT pg_try_advisory_lock($1)", p.Key).Scan(&ok); err != nil {
		p.conn.Close()
		p.conn = nil
		return false, err
	}
	return ok, nil
}

// watch checks the lock's connection; if it fails, the lock may already be
// someone else's.
func (p *Postgres) watch(conn *sql.Conn, lost chan<- error) {
	classID, objID := uint32(uint64(p.Key)>>32), uint32(uint64(p.Key))
	for {
		time.Sleep(p.Poll)
		ctx, cancel := context.WithTimeout(context.Background(), 3*p.Poll+2*time.Second)
		var held bool
		err := conn.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
			AND pid = pg_backend_pid() AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND granted)`,
			int64(classID), int64(objID)).Scan(&held)
		cancel()
		if errors.Is(err, sql.ErrConnDone) && p.released() {
			return
		}
		if err != nil {
			lost <- fmt.Errorf("the database connection holding leadership failed: %w", err)
			return
		}
		if !held {
			lost <- errors.New("the advisory lock is no longer held")
			return
		}
	}
}

// Release unlocks and closes the connection.
func (p *Postgres) Release() {
	p.mu.Lock()
	p.done = true
	p.mu.Unlock()
	if p.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = p.conn.ExecContext(ctx, "SELECT pg_advisory_unlock($1)", p.Key)
	_ = p.conn.Close()
	p.conn = nil
}
