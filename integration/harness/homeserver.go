package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server names a homeserver implementation the harness can run.
type Server string

const (
	// Dendrite v0.13.8, built from the module pinned in integration/tools.
	Dendrite Server = "dendrite"
	// Synapse from Debian's unstable suite, run in a chroot (see SynapseRoot).
	Synapse Server = "synapse"
)

// Options configure a Homeserver. The zero value is a SQLite Dendrite for
// server name "localhost" with no application services.
type Options struct {
	// Server is the implementation to run; default Dendrite.
	Server Server
	// ServerName is the homeserver's domain (global.server_name). Default "localhost".
	ServerName string
	// AppServiceRegistrations are paths of registration YAML files (Dendrite's
	// app_service_api.config_files, Synapse's app_service_config_files). Both
	// read them only at start-up; the application service does not need to be
	// listening yet.
	AppServiceRegistrations []string
	// KeysInTransactions turns on what lets an appservice's devices get their
	// keys in transactions: on Synapse the experimental features
	// msc2409_to_device_messages_enabled and msc3202_transaction_extensions.
	// Dendrite has no such features (an error).
	KeysInTransactions bool
	// Postgres puts all of the homeserver's data in a fresh Postgres database
	// (created with psql on the server named by $OPSBOT_TEST_POSTGRES, default
	// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable, and dropped
	// at cleanup) instead of SQLite files in Dir.
	Postgres bool
	// Config, if set, may change the generated configuration (the YAML
	// document as nested maps, e.g. cfg["global"].(map[string]any) for
	// Dendrite) before it is written.
	Config func(cfg map[string]any)
	// StartTimeout bounds the wait for the client API to answer. Default 60s.
	StartTimeout time.Duration
	// Port is the client API port on 127.0.0.1. Default 0: a free port.
	Port int
	// Dir is where the config, signing key, databases, media and log live.
	// Default "": a new temporary directory. An existing Dir is reused: its
	// signing key, registration shared secret and databases are kept (so
	// accounts and rooms survive), and the configuration is written again
	// from these Options. Synapse keeps its data inside its root, in a
	// directory tied to Dir (see SynapseRoot); Dir gets a symlink to it.
	Dir string
}

// flavor is what differs between homeserver implementations.
type flavor interface {
	name() string
	// writeConfig sets hs.ConfigPath and hs.LogPath and writes the signing
	// key (unless hs.Dir has one) and the configuration.
	writeConfig(hs *Homeserver, opts Options, dbURL string) error
	// command is the command line that runs the server.
	command(hs *Homeserver) []string
	// skipLogLine says whether LogTail leaves a line out.
	skipLogLine(line string) bool
	// afterKill tidies what a crash leaves that the server would not
	// recover from by itself.
	afterKill(hs *Homeserver) error
}

// Homeserver is a running (or stopped) homeserver process.
type Homeserver struct {
	// Server is the implementation, Dendrite or Synapse.
	Server Server
	// URL is the client-server API base URL, http://127.0.0.1:PORT.
	URL string
	// ServerName is the homeserver's domain; user IDs are @local:ServerName.
	ServerName string
	// Dir holds the config, signing key, databases, media and the log.
	Dir string
	// ConfigPath is the configuration file; LogPath is where the output of
	// every run of the process is appended.
	ConfigPath, LogPath string
	// SharedSecret is the registration shared secret.
	SharedSecret string

	flavor       flavor
	addr         string
	startTimeout time.Duration
	client       *http.Client

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	waitErr error
	runs    int
}

// Start writes a configuration into a new temporary directory (or
// Options.Dir), starts the homeserver on a free loopback port (or
// Options.Port) and waits until its client API answers. The process is
// stopped by t.Cleanup; if the test failed, the tail of its log is printed
// first.
func Start(t testing.TB, opts Options) *Homeserver {
	t.Helper()
	fl, err := findFlavor(opts.Server, t.Logf)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	temporary := opts.Dir == ""
	if temporary {
		opts.Dir = t.TempDir()
	}
	var dbURL string
	if opts.Postgres {
		dbURL = createPostgresDatabase(t, opts.Server == Synapse)
	}
	hs, err := prepare(fl, opts, dbURL)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("harness: last lines of %s:\n%s", hs.LogPath, hs.LogTail(80))
		}
		hs.Stop()
		if s, ok := fl.(*synapse); ok && temporary {
			s.removeData(hs)
		}
	})
	if err := hs.startFirst(opts.Port); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return hs
}

// Launch is Start for programs that are not tests (such as integration/demo):
// it finds or builds the server (FindDendrite, FindSynapse) with logf,
// returns errors instead of failing a test, and leaves stopping to the
// caller (Stop). With an empty Options.Dir it uses a new directory under
// os.TempDir that it does not remove. Options.Postgres is not supported here
// (the database is dropped at test cleanup). logf, which may be nil,
// receives progress notes such as the building of the binary.
func Launch(opts Options, logf func(format string, args ...any)) (*Homeserver, error) {
	if opts.Postgres {
		return nil, errors.New("harness: Options.Postgres needs Start, not Launch")
	}
	fl, err := findFlavor(opts.Server, logf)
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	if opts.Dir == "" {
		if opts.Dir, err = os.MkdirTemp("", "harness-"+string(opts.Server)+"-"); err != nil {
			return nil, fmt.Errorf("harness: %w", err)
		}
	}
	hs, err := prepare(fl, opts, "")
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	if err := hs.startFirst(opts.Port); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	return hs, nil
}

// findFlavor finds (or builds) the server of an implementation.
func findFlavor(server Server, logf func(format string, args ...any)) (flavor, error) {
	switch server {
	case "", Dendrite:
		bin, err := FindDendrite(logf)
		if err != nil {
			return nil, fmt.Errorf("no Dendrite binary: %w", err)
		}
		return dendrite{bin: bin}, nil
	case Synapse:
		root, err := FindSynapse(logf)
		if err != nil {
			return nil, fmt.Errorf("no Synapse: %w", err)
		}
		return &synapse{root: root}, nil
	}
	return nil, fmt.Errorf("Options.Server: unknown homeserver %q (dendrite or synapse)", server)
}

// prepare fills in the defaults of opts and writes the signing key (unless
// Dir has one) and the configuration.
func prepare(fl flavor, opts Options, dbURL string) (*Homeserver, error) {
	if opts.Server == "" {
		opts.Server = Dendrite
	}
	if opts.ServerName == "" {
		opts.ServerName = "localhost"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	hs := &Homeserver{
		Server:       opts.Server,
		ServerName:   opts.ServerName,
		Dir:          dir,
		flavor:       fl,
		startTimeout: opts.StartTimeout,
		client:       &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}},
	}
	if err := fl.writeConfig(hs, opts, dbURL); err != nil {
		return nil, err
	}
	return hs, nil
}

// sharedSecretIn returns the registration shared secret of the configuration
// written earlier at configPath, or a new one: a reused Dir keeps its secret
// (and signing key), so the server's identity and accounts stay valid.
func sharedSecretIn(configPath string) string {
	if s := existingSharedSecret(configPath); s != "" {
		return s
	}
	return randomHex(16)
}

// writeJSONConfig writes cfg, changed by edit if set, as JSON (which is
// YAML, and needs no YAML library here).
func writeJSONConfig(path string, cfg map[string]any, edit func(map[string]any)) error {
	if edit != nil {
		edit(cfg)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(cfg); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o600)
}

// absPaths returns the absolute forms of paths, which must exist.
func absPaths(paths []string) ([]string, error) {
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("appservice registration: %w", err)
		}
		out = append(out, abs)
	}
	return out, nil
}

// startFirst starts the server for the first time: on port, or on a free
// loopback port if port is 0.
func (hs *Homeserver) startFirst(port int) error {
	var lastErr error
	if port != 0 {
		hs.addr = fmt.Sprintf("127.0.0.1:%d", port)
		hs.URL = "http://" + hs.addr
		// Check first: another server answering on the port would look
		// like ours having started.
		l, err := net.Listen("tcp", hs.addr)
		if err != nil {
			return fmt.Errorf("port %d is not free (another homeserver running?): %v", port, err)
		}
		l.Close()
		if lastErr = hs.start(); lastErr != nil && strings.Contains(hs.LogTail(20), "address already in use") {
			lastErr = fmt.Errorf("port %d is already in use (another homeserver running?)", port)
		}
	} else {
		// The free port is found by listening on :0 and closing; another
		// process may grab it before the server binds, so try a few ports.
		for attempt := 0; attempt < 3; attempt++ {
			port, err := freePort()
			if err != nil {
				return err
			}
			hs.addr = fmt.Sprintf("127.0.0.1:%d", port)
			hs.URL = "http://" + hs.addr
			lastErr = hs.start()
			if lastErr == nil || !strings.Contains(hs.LogTail(20), "address already in use") {
				break
			}
		}
	}
	if lastErr != nil {
		return fmt.Errorf("%s did not start: %v\nlast lines of %s:\n%s", hs.flavor.name(), lastErr, hs.LogPath, hs.LogTail(60))
	}
	return nil
}

// existingSharedSecret returns client_api.registration_shared_secret from a
// configuration written earlier (JSON as the harness writes it, or YAML), or
// "" if there is none.
func existingSharedSecret(configPath string) string {
	data, err := os.ReadFile(configPath)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && strings.Trim(key, `"`) == "registration_shared_secret" {
			return strings.Trim(strings.TrimSpace(value), `"',`)
		}
	}
	return ""
}

// UserID returns "@localpart:ServerName".
func (hs *Homeserver) UserID(localpart string) string {
	return "@" + localpart + ":" + hs.ServerName
}

// Running reports whether the homeserver process is alive.
func (hs *Homeserver) Running() bool {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return hs.runningLocked()
}

func (hs *Homeserver) runningLocked() bool {
	if hs.cmd == nil {
		return false
	}
	select {
	case <-hs.exited:
		return false
	default:
		return true
	}
}

// Stop shuts the homeserver down with SIGTERM, and SIGKILL if it has not exited
// after 15 s. Stopping a stopped server does nothing.
func (hs *Homeserver) Stop() {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if !hs.runningLocked() {
		return
	}
	_ = terminate(hs.cmd.Process)
	select {
	case <-hs.exited:
	case <-time.After(15 * time.Second):
		hs.appendLog("harness: " + hs.flavor.name() + " ignored SIGTERM for 15s, killing it")
		_ = hs.cmd.Process.Kill()
		<-hs.exited
	}
	hs.appendLog("harness: " + hs.flavor.name() + " stopped")
}

// Kill ends the homeserver with SIGKILL, like a crash: nothing is flushed.
// What the server stored stays; what it had in flight may be lost. Let the
// last event reach a client (e.g. WaitForMessage) before killing if it
// must survive.
func (hs *Homeserver) Kill() {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if !hs.runningLocked() {
		return
	}
	_ = hs.cmd.Process.Kill()
	<-hs.exited
	hs.appendLog("harness: " + hs.flavor.name() + " killed")
	if err := hs.flavor.afterKill(hs); err != nil {
		hs.appendLog("harness: after the kill: " + err.Error())
	}
}

// Restart stops the homeserver if it is running (use Kill first for a crash) and
// starts it again with the same directory, data and port, so URL, users'
// access tokens and /sync positions stay valid.
func (hs *Homeserver) Restart(t testing.TB) {
	t.Helper()
	hs.Stop()
	var err error
	// The port was ours a moment ago; give the kernel a moment if it is slow
	// to release it.
	for attempt := 0; attempt < 5; attempt++ {
		if err = hs.start(); err == nil {
			return
		}
		if !strings.Contains(hs.LogTail(20), "address already in use") {
			break
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("harness: %s did not restart: %v\nlast lines of %s:\n%s", hs.flavor.name(), err, hs.LogPath, hs.LogTail(60))
}

// start runs the process and waits until /_matrix/client/versions answers.
func (hs *Homeserver) start() error {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.runningLocked() {
		return errors.New("already running")
	}
	logFile, err := os.OpenFile(hs.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	hs.runs++
	argv := hs.flavor.command(hs)
	fmt.Fprintf(logFile, "harness: === start #%d of %s on %s ===\n", hs.runs, strings.Join(argv, " "), hs.addr)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = hs.Dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), "PPROFLISTEN=")
	setProcAttr(cmd)
	began := time.Now()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	exited := make(chan struct{})
	hs.cmd, hs.exited, hs.waitErr = cmd, exited, nil
	go func() {
		err := cmd.Wait()
		logFile.Close()
		hs.waitErr = err
		close(exited)
	}()

	deadline := time.Now().Add(hs.startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := hs.Do(ctx, http.MethodGet, "/_matrix/client/versions", nil, nil)
		cancel()
		if err == nil {
			hs.appendLog(fmt.Sprintf("harness: client API up after %s", time.Since(began).Round(time.Millisecond)))
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited during start-up: %v", hs.flavor.name(), hs.waitErr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("client API not up after %s: %v", hs.startTimeout, err)
		}
	}
}

// appendLog writes a harness note into the homeserver's log (opened with
// O_APPEND, like the server's own output, so lines do not overwrite each other).
func (hs *Homeserver) appendLog(line string) {
	f, err := os.OpenFile(hs.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

// LogTail returns the last n lines of the homeserver's log, leaving out its
// chatter (Dendrite's embedded NATS server at info level; the full log is at
// LogPath).
func (hs *Homeserver) LogTail(n int) string {
	data, err := os.ReadFile(hs.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if hs.flavor.skipLogLine(l) {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// createPostgresDatabase creates an empty database for one homeserver and
// drops it at cleanup. It uses the psql command to stay free of a Go driver.
// Synapse needs the C collation (it refuses other locales).
func createPostgresDatabase(t testing.TB, cCollation bool) string {
	t.Helper()
	admin := os.Getenv("OPSBOT_TEST_POSTGRES")
	if admin == "" {
		admin = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatalf("harness: Options.Postgres needs the psql command: %v", err)
	}
	name := "harness_hs_" + randomHex(6)
	run := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", admin, "-c", sql).CombinedOutput()
		if err != nil {
			return fmt.Errorf("psql %q: %v: %s", sql, err, out)
		}
		return nil
	}
	create := "CREATE DATABASE " + name
	if cCollation {
		create += " ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
	}
	if err := run(create); err != nil {
		t.Fatalf("harness: %v (is Postgres running? pg_ctlcluster --skip-systemctl-redirect 15 main start; or set OPSBOT_TEST_POSTGRES)", err)
	}
	t.Cleanup(func() {
		if err := run("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Logf("harness: %v", err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("harness: OPSBOT_TEST_POSTGRES: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}
