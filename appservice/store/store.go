// Package store keeps opsbot's state in SQLite or Postgres: the durable
// transaction inbox, skill memory, bot profiles, and (through mautrix) the
// room state store. Schema changes are dbutil upgrade tables, one per owner.
package store

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"net/url"
	"strings"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"

	"github.com/opsbot/opsbot/appservice/config"
)

//go:embed upgrades/*.sql
var upgrades embed.FS

// upgradeTable migrates opsbot's own tables (version kept in opsbot_version).
var upgradeTable = dbutil.BuildUpgradeTable().WithFSPath(upgrades, "upgrades").Finish()

// Store is opsbot's database.
type Store struct {
	DB *dbutil.Database
}

// Open connects to the configured database. It does not migrate: call Upgrade.
func Open(cfg config.Database, log zerolog.Logger) (*Store, error) {
	var (
		raw *sql.DB
		err error
	)
	switch cfg.Type {
	case "sqlite":
		// Writes queue on an in-process lock, not in SQLite's sleeping
		// busy handler (sqlitelock.go says why not one connection).
		var conn *sqliteConnector
		conn, err = newSQLiteConnector(SQLiteDSN(cfg.URI))
		if err == nil {
			raw = sql.OpenDB(conn)
		}
	case "postgres":
		raw, err = sql.Open("pgx", cfg.URI)
	default:
		return nil, fmt.Errorf("database.type: %q is not one of sqlite, postgres", cfg.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s database: %w", cfg.Type, err)
	}
	// Keep as many idle connections as may be open: the default of two
	// made the pool open and close connections on every transaction (on
	// Postgres each is a server process; docs/performance.md).
	if cfg.Type == "sqlite" {
		// One writer at a time is all SQLite can do (the write lock sees
		// to it); a small pool keeps readers going beside the writer.
		raw.SetMaxOpenConns(4)
		raw.SetMaxIdleConns(4)
	} else {
		open := cfg.MaxOpenConns
		if open <= 0 {
			open = 16
		}
		raw.SetMaxOpenConns(open)
		raw.SetMaxIdleConns(open)
	}
	db, err := dbutil.NewWithDB(raw, cfg.Type)
	if err != nil {
		raw.Close()
		return nil, err
	}
	db.Owner = "opsbot"
	db.Log = dbutil.ZeroLogger(log.With().Str("db_section", "main").Logger())
	return &Store{DB: db.Child("opsbot_version", upgradeTable, nil)}, nil
}

// SQLiteDSN turns a file path (or file: URI) into a modernc.org/sqlite DSN
// with the settings opsbot relies on: WAL so readers do not block the
// writer, FULL sync so an acknowledged transaction survives a power cut,
// immediate write transactions, a busy timeout, and foreign keys. In a
// plain path '#' and '%' are part of the file name (escaped: in a URI the
// path would end at '#', and two paths would share one database); '?'
// starts SQLite options, as in a file: URI.
func SQLiteDSN(uri string) string {
	rest, isURI := strings.CutPrefix(uri, "file:")
	path, query, _ := strings.Cut(rest, "?")
	if !isURI {
		path = strings.NewReplacer("%", "%25", "#", "%23").Replace(path)
	}
	q, _ := url.ParseQuery(query)
	want := []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(1)"}
	have := strings.Join(q["_pragma"], ",")
	for _, p := range want {
		name, _, _ := strings.Cut(p, "(")
		if !strings.Contains(have, name) {
			q.Add("_pragma", p)
		}
	}
	if q.Get("_txlock") == "" {
		q.Set("_txlock", "immediate")
	}
	return "file:" + path + "?" + q.Encode()
}

// Upgrade brings opsbot's tables to the current schema.
func (s *Store) Upgrade(ctx context.Context) error {
	if err := s.DB.Upgrade(ctx); err != nil {
		return fmt.Errorf("migrating opsbot tables: %w", err)
	}
	return nil
}

// Version returns the schema version and the newest one this binary knows.
func (s *Store) Version(ctx context.Context) (current, latest int, err error) {
	latest = len(upgradeTable)
	exists, err := s.DB.TableExists(ctx, "opsbot_version")
	if err != nil || !exists {
		return 0, latest, err
	}
	err = s.DB.QueryRow(ctx, "SELECT version FROM opsbot_version").Scan(&current)
	return current, latest, err
}

// Ping checks the database connection.
func (s *Store) Ping(ctx context.Context) error { return s.DB.RawDB.PingContext(ctx) }

// Close closes the connection pool.
func (s *Store) Close() error { return s.DB.Close() }
