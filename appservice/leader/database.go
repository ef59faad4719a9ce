package leader

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
)

// Database elects through the opsbot_leader table (and, on Postgres, an
// advisory lock). One row per appservice ID: several opsbot installations
// can share a Postgres server.
type Database struct {
	opts   Options
	holder string
	// lockMu guards the session that holds (or tries for) the advisory
	// lock on Postgres.
	lockMu   sync.Mutex
	conn     *sql.Conn
	lockHeld bool
}

// Options configure a Database elector.
type Options struct {
	DB *dbutil.Database
	// Service is the appservice ID; it keys the row and the advisory lock.
	Service string
	// Lease is how long a term lasts without renewal (default 10 s).
	Lease time.Duration
	Log   zerolog.Logger
	// Poll is how often a standby looks and the leader renews (default 1 s).
	Poll time.Duration
}

// New returns an elector; nothing is read or written before Acquire.
func New(opts Options) *Database {
	if opts.Lease <= 0 {
		opts.Lease = DefaultLease
	}
	if opts.Poll <= 0 {
		opts.Poll = renewEvery
	}
	host, _ := os.Hostname()
	return &Database{opts: opts, holder: fmt.Sprintf("%s/%d", host, os.Getpid())}
}

const createTable = `CREATE TABLE IF NOT EXISTS opsbot_leader (
	service     TEXT   PRIMARY KEY,
	epoch       BIGINT NOT NULL,
	holder      TEXT   NOT NULL,
	lease_until BIGINT NOT NULL
)`

func (e *Database) postgres() bool { return e.opts.DB.Dialect == dbutil.Postgres }

// nowMS is the database's clock in milliseconds: leases are compared on
// one clock, whatever the replicas' clocks say.
func (e *Database) nowMS() string {
	if e.postgres() {
		return `(extract(epoch from clock_timestamp()) * 1000)::bigint`
	}
	return `CAST(unixepoch('subsec') * 1000 AS INTEGER)`
}

// row is the leader row as a standby sees it.
type row struct {
	epoch      int64
	holder     string
	leaseUntil int64
	now        int64
}

func (e *Database) read(ctx context.Context) (row, error) {
	var r row
	err := e.opts.DB.QueryRow(ctx, `SELECT epoch, holder, lease_until, `+e.nowMS()+` FROM opsbot_leader WHERE service = $1`, e.opts.Service).
		Scan(&r.epoch, &r.holder, &r.leaseUntil, &r.now)
	return r, err
}

// Acquire waits until this process may lead, increments the epoch and
// returns the term. On SQLite (one process) it takes the term at once.
func (e *Database) Acquire(ctx context.Context) (*Term, error) {
	if _, err := e.opts.DB.Exec(ctx, createTable); err != nil {
		return nil, fmt.Errorf("creating opsbot_leader: %w", err)
	}
	if _, err := e.opts.DB.Exec(ctx, `INSERT INTO opsbot_leader (service, epoch, holder, lease_until) VALUES ($1, 0, '', 0)
		ON CONFLICT (service) DO NOTHING`, e.opts.Service); err != nil {
		return nil, fmt.Errorf("preparing opsbot_leader: %w", err)
	}
	logged := false
	for {
		term, why, err := e.try(ctx)
		switch {
		case term != nil:
			e.opts.Log.Info().Int64("epoch", term.epoch).Str("why", why).Dur("lease", e.opts.Lease).Msg("Took over leadership")
			go e.renew(term)
			return term, nil
		case err != nil:
			e.opts.Log.Warn().Err(err).Msg("Could not try for leadership; retrying")
		case !logged:
			e.opts.Log.Info().Str("why", why).Msg("Another opsbot is the leader; standing by (not ready) until it stops or its lease runs out")
			logged = true
		}
		select {
		case <-ctx.Done():
			e.closeConn()
			return nil, ctx.Err()
		case <-time.After(e.opts.Poll):
		}
	}
}

// try takes the term if it may: the lease ran out or was released, or
// (Postgres) the leader of the current epoch no longer holds its lock, or
// (SQLite) always. why says which, or why not.
func (e *Database) try(ctx context.Context) (*Term, string, error) {
	r, err := e.read(ctx)
	if err != nil {
		return nil, "", err
	}
	var grace time.Duration
	var why string
	switch {
	case !e.postgres():
		why = "SQLite: one process"
	case r.holder == "":
		why = "the last leader handed over"
	case r.leaseUntil <= r.now:
		why = fmt.Sprintf("the lease of %s (epoch %d) ran out", r.holder, r.epoch)
	default:
		gone, err := e.lockFree(ctx, r.epoch)
		if err != nil {
			return nil, "", err
		}
		if !gone {
			return nil, fmt.Sprintf("%s (epoch %d) holds the lease", r.holder, r.epoch), nil
		}
		// The leader's database session is gone; it may be dead or only
		// cut off. Fence it now, act after the grace.
		grace = min(time.Duration(r.leaseUntil-r.now)*time.Millisecond, handoverGrace)
		why = fmt.Sprintf("the database session of %s (epoch %d) ended", r.holder, r.epoch)
	}
	// The next epoch's lock is ours before the epoch is: a standby that
	// looks in between finds it held.
	if e.postgres() {
		got, err := e.lock(ctx, r.epoch+1)
		if err != nil || !got {
			return nil, "another standby is taking over", err
		}
	}
	var epoch int64
	err = e.opts.DB.QueryRow(ctx, `UPDATE opsbot_leader SET epoch = epoch + 1, holder = $2, lease_until = `+e.nowMS()+` + $3
		WHERE service = $1 AND epoch = $4 RETURNING epoch`, e.opts.Service, e.holder, e.opts.Lease.Milliseconds(), r.epoch).Scan(&epoch)
	if err != nil {
		e.closeConn() // and with it the next epoch's lock
		if errors.Is(err, sql.ErrNoRows) {
			return nil, "another standby took over first", nil
		}
		return nil, "", err
	}
	term := newTerm(epoch, e.opts.Lease)
	term.verify = e.currentEpoch
	term.hold = e.holdRow
	term.release = func(ctx context.Context) { e.release(ctx, epoch) }
	if grace > 0 {
		e.opts.Log.Info().Int64("epoch", epoch).Dur("grace", grace).Msg("Fenced the old leader; waiting for what it had begun to land")
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-time.After(grace):
		}
		term.renewed(time.Now(), e.opts.Lease) // the lease was set at the increment
	}
	return term, why, nil
}

func (e *Database) currentEpoch(ctx context.Context) (int64, error) {
	var epoch int64
	err := e.opts.DB.QueryRow(ctx, `SELECT epoch FROM opsbot_leader WHERE service = $1`, e.opts.Service).Scan(&epoch)
	return epoch, err
}

// holdRow reads the epoch inside the caller's transaction, on Postgres
// with a share lock that a new leader's increment waits for.
func (e *Database) holdRow(ctx context.Context) (int64, error) {
	q := `SELECT epoch FROM opsbot_leader WHERE service = $1`
	if e.postgres() {
		q += ` FOR SHARE`
	}
	var epoch int64
	err := e.opts.DB.QueryRow(ctx, q, e.opts.Service).Scan(&epoch)
	return epoch, err
}

// renew keeps the term: every Poll it moves the lease on, as long as the
// epoch is still the term's. It ends the term when a newer epoch exists or
// the deadline passes without a renewal.
func (e *Database) renew(t *Term) {
	for {
		select {
		case <-time.After(e.opts.Poll):
		case <-t.done:
			return // (Release, or Check/Hold found a newer epoch)
		}
		if !t.Valid() {
			return
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), e.opts.Poll)
		res, err := e.opts.DB.Exec(ctx, `UPDATE opsbot_leader SET lease_until = `+e.nowMS()+` + $3 WHERE service = $1 AND epoch = $2`,
			e.opts.Service, t.epoch, e.opts.Lease.Milliseconds())
		var n int64
		if err == nil {
			n, err = res.RowsAffected()
		}
		cancel()
		// Asked on its own clock: a renewal that ran out of time (a slow
		// database, a locked row) says nothing about the lock's session.
		lockLost := e.postgres() && !e.lockAlive(context.Background())
		if lockLost {
			// Cut off (a network blip, a Postgres restart, a pool reset):
			// a standby may be fencing us already. Stand down, and let the
			// service hand over once its work has stopped.
			t.end(errors.New("the database session that held the leadership lock ended: standing down"))
			return
		}
		switch {
		case err == nil && n == 1:
			t.renewed(start, e.opts.Lease)
		case err == nil:
			t.end(fmt.Errorf("%w: the lease belongs to a newer epoch", ErrFenced))
			return
		default:
			e.opts.Log.Warn().Err(err).Msg("Could not renew the leadership lease")
			if t.expired() {
				return
			}
		}
	}
}

// release hands the term over: the lease ends now, the lock is freed.
func (e *Database) release(ctx context.Context, epoch int64) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := e.opts.DB.Exec(ctx, `UPDATE opsbot_leader SET holder = '', lease_until = 0 WHERE service = $1 AND epoch = $2`, e.opts.Service, epoch); err != nil {
		e.opts.Log.Warn().Err(err).Msg("Could not hand leadership over; a standby takes over when the lease runs out")
	}
	e.closeConn()
}

// lockKey is the advisory lock of an epoch's leader: held from before
// the epoch begins until its leader's database session ends.
func (e *Database) lockKey(epoch int64) int64 {
	return KeyFor(fmt.Sprintf("%s\x00%d", e.opts.Service, epoch))
}

// lock takes an epoch's lock on this process's own session (opening one).
func (e *Database) lock(ctx context.Context, epoch int64) (bool, error) {
	e.lockMu.Lock()
	defer e.lockMu.Unlock()
	e.closeConnLocked() // a lock of an earlier attempt goes with its session
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := e.opts.DB.RawDB.Conn(cctx)
	if err != nil {
		return false, err
	}
	var ok bool
	if err := conn.QueryRowContext(cctx, "SELECT pg_try_advisory_lock($1)", e.lockKey(epoch)).Scan(&ok); err != nil || !ok {
		conn.Close()
		return false, err
	}
	e.conn, e.lockHeld = conn, true
	return true, nil
}

// lockFree reports whether nobody holds an epoch's lock: its leader's
// session ended. (Taking it to find out, and letting it go at once.)
func (e *Database) lockFree(ctx context.Context, epoch int64) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := e.opts.DB.RawDB.Conn(cctx)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	var free bool
	if err := conn.QueryRowContext(cctx, "SELECT pg_try_advisory_lock($1)", e.lockKey(epoch)).Scan(&free); err != nil {
		return false, err
	}
	if free {
		_, _ = conn.ExecContext(cctx, "SELECT pg_advisory_unlock($1)", e.lockKey(epoch))
	}
	return free, nil
}

// lockAlive reports whether the session holding the term's lock still
// answers.
func (e *Database) lockAlive(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	e.lockMu.Lock()
	defer e.lockMu.Unlock()
	if e.conn == nil || e.conn.PingContext(cctx) != nil {
		e.closeConnLocked()
		return false
	}
	return true
}

func (e *Database) closeConn() {
	e.lockMu.Lock()
	defer e.lockMu.Unlock()
	e.closeConnLocked()
}

// closeConnLocked gives the lock's session back to the pool, without the
// lock (a session-level lock would stay with the pooled session).
func (e *Database) closeConnLocked() {
	if e.conn != nil {
		if e.lockHeld {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _ = e.conn.ExecContext(ctx, "SELECT pg_advisory_unlock_all()")
			cancel()
		}
		_ = e.conn.Close()
		e.conn = nil
	}
	e.lockHeld = false
}
