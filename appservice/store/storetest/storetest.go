// Package storetest opens real databases for tests: a SQLite file in a
// temporary directory, and a fresh Postgres database on the server named by
// OPSBOT_TEST_POSTGRES (default: the local server with trust auth). A
// missing Postgres fails the test: it is never skipped.
package storetest

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/rs/zerolog"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store"
)

// DefaultPostgres is used when OPSBOT_TEST_POSTGRES is not set.
const DefaultPostgres = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// Dialects lists the database types every store test runs against.
var Dialects = []string{"sqlite", "postgres"}

// Config returns a database config for a new, empty database of the given
// type, removed when the test ends.
func Config(t testing.TB, dbType string) config.Database {
	t.Helper()
	switch dbType {
	case "sqlite":
		return config.Database{Type: "sqlite", URI: filepath.Join(t.TempDir(), "opsbot.db")}
	case "postgres":
		return config.Database{Type: "postgres", URI: NewPostgresDB(t)}
	}
	t.Fatalf("unknown database type %q", dbType)
	return config.Database{}
}

// Open returns opsbot's store on a new database of the given type (Config),
// with its schema in place, closed when the test ends.
func Open(t testing.TB, dbType string) *store.Store {
	t.Helper()
	st, err := store.Open(Config(t, dbType), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Upgrade(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st
}

// NewPostgresDB creates a uniquely named database and returns its URI.
func NewPostgresDB(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("OPSBOT_TEST_POSTGRES")
	if admin == "" {
		admin = DefaultPostgres
	}
	db, err := sql.Open("pgx", admin)
	if err != nil {
		t.Fatalf("Postgres for tests (%s): %v", admin, err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("Postgres for tests is not reachable at %s: %v\n(start it with: pg_ctlcluster --skip-systemctl-redirect 15 main start, or set OPSBOT_TEST_POSTGRES)", admin, err)
	}
	name := fmt.Sprintf("opsbot_test_%d_%08x", time.Now().Unix(), rand.Uint32())
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating test database: %v", err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("pgx", admin)
		if err != nil {
			return
		}
		defer db.Close()
		_, _ = db.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("OPSBOT_TEST_POSTGRES: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}
