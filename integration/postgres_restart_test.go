package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// privatePostgres runs a Postgres server of its own (so restarting it
// cannot disturb other tests), on a free port, until the test ends.
type privatePostgres struct {
	t    *testing.T
	bin  string
	dir  string
	port int
}

func startPrivatePostgres(t *testing.T) *privatePostgres {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		t.Fatal("Postgres server binaries not found under /usr/lib/postgresql (install the postgresql package)")
	}
	p := &privatePostgres{t: t, bin: filepath.Dir(bins[len(bins)-1]), port: freePort(t)}
	dir, err := os.MkdirTemp("", "opsbot-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p.dir = dir
	t.Cleanup(func() {
		_ = p.pgctl("stop", "-m", "immediate")
		os.RemoveAll(dir)
	})
	// Postgres refuses to run as root: run it as the postgres user.
	if out, err := exec.Command("chown", "postgres:postgres", dir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	p.run("initdb", "-D", filepath.Join(dir, "data"), "-A", "trust", "-U", "postgres", "--no-sync")
	if err := p.pgctl("start", "-w"); err != nil {
		t.Fatalf("starting Postgres: %v", err)
	}
	return p
}

func (p *privatePostgres) run(tool string, args ...string) {
	p.t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(p.bin, tool)}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		p.t.Fatalf("%s: %v\n%s", tool, err, out)
	}
}

func (p *privatePostgres) pgctl(action string, extra ...string) error {
	args := append([]string{"-u", "postgres", "--", filepath.Join(p.bin, "pg_ctl"), action, "-D", filepath.Join(p.dir, "data"),
		"-l", filepath.Join(p.dir, "log"), "-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", p.port, p.dir)}, extra...)
	out, err := exec.Command("runuser", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %v: %s", action, err, out)
	}
	return nil
}

func (p *privatePostgres) uri() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.port)
}

// Postgres restarts mid-conversation. The leader's lock connection breaks,
// so opsbot stops at once (two leaders must never overlap); restarted by
// its supervisor (here: the test), it reconnects, takes the lock again and
// answers every command exactly once.
func TestPostgresRestart(t *testing.T) {
	pg := startPrivatePostgres(t)
	w := newWorldWith(t, worldOptions{DB: "sqlite", Bots: defaultBots})
	// Point the world's opsbot at the private server.
	w.Bot.Stop()
	data, err := os.ReadFile(w.Bot.CfgPath)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(data), "type: sqlite", "type: postgres", 1)
	text = strings.Replace(text, fmt.Sprintf("uri: %q", w.Bot.Cfg.Database.URI), fmt.Sprintf("uri: %q", pg.uri()), 1)
	if err := os.WriteFile(w.Bot.CfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	w.Bot.Start()
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)
	const n = 6
	for i := 0; i < n/2; i++ {
		alice.SendText(t, room, fmt.Sprintf("!echo load %d", i))
	}
	if err := pg.pgctl("restart", "-w", "-m", "fast"); err != nil {
		t.Fatal(err)
	}
	w.Bot.WaitForLog(t, wait, "Lost leadership; stopping")
	for i := n / 2; i < n; i++ {
		alice.SendText(t, room, fmt.Sprintf("!echo load %d", i))
	}
	w.Bot.Stop() // reap the exited process
	w.Bot.Start()
	checkExactlyOnce(t, collectAnswers(t, w.HS, alice, room, n, 3*time.Minute), n)
}
