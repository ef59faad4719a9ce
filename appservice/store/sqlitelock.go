package store

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"modernc.org/sqlite"
)

// SQLite takes one writer at a time. Left to itself, a connection that finds
// the database locked sleeps in SQLite's busy handler (1, 2, 5 … 100 ms)
// and tries again, so with several writers in one process (intake, the
// pipeline's "done" marks, mautrix's crypto and state stores) a write could
// wait 100 ms for a lock that was free after one. opsbot's SQLite pool
// therefore wraps the driver so that writes queue on one in-process lock
// instead: every transaction (opsbot opens them all with BEGIN IMMEDIATE, so
// each takes SQLite's write lock anyway) and every Exec outside a
// transaction holds it. Reads outside a transaction do not, and the pool
// keeps several connections, so readers still run beside the writer (WAL).
//
// Why not simply one connection (SetMaxOpenConns(1))? Any code that holds a
// transaction or an open row iterator and issues another statement outside
// it would then wait for itself forever, and mautrix has such paths: its
// crypto store returns row iterators that callers walk while querying
// (GetGroupSessionsForRoom, GetAllGroupSessions, … used by key export and
// backup), leaves rows open on scan errors (GetSessions,
// GetCrossSigningKeys), and the machine runs trust lookups on
// context.Background() (ResolveTrust), outside any transaction of its
// caller. With the lock those only ever wait for a *write* outside their own
// transaction, which SQLite already refuses today (it would fail after the
// busy timeout); the lock keeps exactly that bound: a writer gives up after
// the busy timeout with an error, as SQLite would.
//
// What the lock does not cover (a statement that writes through Query, such
// as INSERT … RETURNING outside a transaction, or a prepared statement) still
// goes through SQLite's own locking: slower, never wrong.

// errWriteLockTimeout is returned when the write lock stays taken for the
// whole busy timeout: the same outcome as SQLITE_BUSY.
var errWriteLockTimeout = errors.New("database is locked (sqlite: waited the busy timeout for the write lock)")

type writeLock struct {
	ch      chan struct{}
	timeout time.Duration
}

func newWriteLock(timeout time.Duration) *writeLock {
	return &writeLock{ch: make(chan struct{}, 1), timeout: timeout}
}

func (l *writeLock) acquire(ctx context.Context) error {
	select {
	case l.ch <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(l.timeout)
	defer t.Stop()
	select {
	case l.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errWriteLockTimeout
	}
}

func (l *writeLock) release() { <-l.ch }

// sqliteConnector opens modernc.org/sqlite connections that share lock.
type sqliteConnector struct {
	inner driver.Connector
	lock  *writeLock
}

func newSQLiteConnector(dsn string) (*sqliteConnector, error) {
	inner, err := sqlite.NewConnector(dsn)
	if err != nil {
		return nil, err
	}
	return &sqliteConnector{inner: inner, lock: newWriteLock(busyTimeout(dsn))}, nil
}

func (c *sqliteConnector) Driver() driver.Driver { return c.inner.Driver() }

func (c *sqliteConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	lc := &lockedConn{lock: c.lock}
	var ok [7]bool
	lc.conn = conn
	lc.beginTx, ok[0] = conn.(driver.ConnBeginTx)
	lc.prepare, ok[1] = conn.(driver.ConnPrepareContext)
	lc.exec, ok[2] = conn.(driver.ExecerContext)
	lc.query, ok[3] = conn.(driver.QueryerContext)
	lc.ping, ok[4] = conn.(driver.Pinger)
	lc.reset, ok[5] = conn.(driver.SessionResetter)
	lc.valid, ok[6] = conn.(driver.Validator)
	for _, has := range ok {
		if !has {
			conn.Close()
			return nil, fmt.Errorf("sqlite driver connection %T lacks a context method the write lock wraps", conn)
		}
	}
	return lc, nil
}

// lockedConn is a SQLite connection whose writes take the write lock. The
// pool uses a connection from one goroutine at a time, so inTx needs no lock.
type lockedConn struct {
	conn    driver.Conn
	beginTx driver.ConnBeginTx
	prepare driver.ConnPrepareContext
	exec    driver.ExecerContext
	query   driver.QueryerContext
	ping    driver.Pinger
	reset   driver.SessionResetter
	valid   driver.Validator
	lock    *writeLock
	inTx    bool
}

func (c *lockedConn) Prepare(query string) (driver.Stmt, error) {
	return c.prepare.PrepareContext(context.Background(), query)
}

func (c *lockedConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.prepare.PrepareContext(ctx, query)
}

func (c *lockedConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *lockedConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := c.lock.acquire(ctx); err != nil {
		return nil, err
	}
	tx, err := c.beginTx.BeginTx(ctx, opts)
	if err != nil {
		c.lock.release()
		return nil, err
	}
	c.inTx = true
	return &lockedTx{tx: tx, c: c}, nil
}

func (c *lockedConn) endTx() {
	if c.inTx {
		c.inTx = false
		c.lock.release()
	}
}

func (c *lockedConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if c.inTx {
		return c.exec.ExecContext(ctx, query, args)
	}
	if err := c.lock.acquire(ctx); err != nil {
		return nil, err
	}
	defer c.lock.release()
	return c.exec.ExecContext(ctx, query, args)
}

func (c *lockedConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.query.QueryContext(ctx, query, args)
}

func (c *lockedConn) Ping(ctx context.Context) error { return c.ping.Ping(ctx) }

func (c *lockedConn) ResetSession(ctx context.Context) error { return c.reset.ResetSession(ctx) }

func (c *lockedConn) IsValid() bool { return c.valid.IsValid() }

func (c *lockedConn) Close() error {
	c.endTx() // a connection closed inside a transaction must not keep the lock
	return c.conn.Close()
}

type lockedTx struct {
	tx driver.Tx
	c  *lockedConn
}

func (t *lockedTx) Commit() error {
	defer t.c.endTx()
	return t.tx.Commit()
}

func (t *lockedTx) Rollback() error {
	defer t.c.endTx()
	return t.tx.Rollback()
}

var busyTimeoutPragma = regexp.MustCompile(`^busy_timeout\s*[(=]\s*(\d+)`)

// busyTimeout reads busy_timeout from a SQLite DSN (as SQLiteDSN builds it),
// 10 s if it is not there.
func busyTimeout(dsn string) time.Duration {
	_, query, _ := strings.Cut(dsn, "?")
	q, _ := url.ParseQuery(query)
	for _, p := range q["_pragma"] {
		if m := busyTimeoutPragma.FindStringSubmatch(strings.ToLower(strings.TrimSpace(p))); m != nil {
			if ms, err := strconv.Atoi(m[1]); err == nil {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	return 10 * time.Second
}
