package harness

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
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

// Options configure a Homeserver. The zero value is a SQLite Dendrite for
// server name "localhost" with no application services.
type Options struct {
	// ServerName is the homeserver's domain (global.server_name). Default "localhost".
	ServerName string
	// AppServiceRegistrations are paths of registration YAML files, given to
	// Dendrite as app_service_api.config_files. Dendrite reads them only at
	// start-up; the application service does not need to be listening yet.
	AppServiceRegistrations []string
	// Postgres puts all of Dendrite's data in a fresh Postgres database
	// (created with psql on the server named by $OPSBOT_TEST_POSTGRES, default
	// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable, and dropped
	// at cleanup) instead of SQLite files in Dir.
	Postgres bool
	// Config, if set, may change the generated Dendrite configuration (the
	// YAML document as nested maps, e.g. cfg["global"].(map[string]any)) before
	// it is written.
	Config func(cfg map[string]any)
	// StartTimeout bounds the wait for the client API to answer. Default 60s.
	StartTimeout time.Duration
	// Port is the client API port on 127.0.0.1. Default 0: a free port.
	Port int
	// Dir is where the config, signing key, databases, media and log live.
	// Default "": a new temporary directory. An existing Dir is reused: its
	// signing key, registration shared secret and databases are kept (so
	// accounts and rooms survive), and dendrite.yaml is written again from
	// these Options.
	Dir string
}

// Homeserver is a running (or stopped) Dendrite process.
type Homeserver struct {
	// URL is the client-server API base URL, http://127.0.0.1:PORT.
	URL string
	// ServerName is the homeserver's domain; user IDs are @local:ServerName.
	ServerName string
	// Dir holds the config, signing key, databases, media and the log.
	Dir string
	// ConfigPath is Dir/dendrite.yaml; LogPath is Dir/dendrite.log, where the
	// output of every run of the process is appended.
	ConfigPath, LogPath string
	// SharedSecret is client_api.registration_shared_secret.
	SharedSecret string

	bin          string
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
// Options.Dir), starts Dendrite on a free loopback port (or Options.Port) and
// waits until its client API answers. The process is stopped by t.Cleanup; if
// the test failed, the tail of the Dendrite log is printed first.
func Start(t testing.TB, opts Options) *Homeserver {
	t.Helper()
	bin := DendriteBinary(t)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	var dbURL string
	if opts.Postgres {
		dbURL = createPostgresDatabase(t)
	}
	hs, err := prepare(bin, opts, dbURL)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("harness: last lines of %s:\n%s", hs.LogPath, hs.LogTail(80))
		}
		hs.Stop()
	})
	if err := hs.startFirst(opts.Port); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return hs
}

// Launch is Start for programs that are not tests (such as integration/demo):
// it finds or builds the binary with FindDendrite(logf), returns errors
// instead of failing a test, and leaves stopping to the caller (Stop). With an
// empty Options.Dir it uses a new directory under os.TempDir that it does not
// remove. Options.Postgres is not supported here (the database is dropped at
// test cleanup). logf, which may be nil, receives progress notes such as the
// building of the binary.
func Launch(opts Options, logf func(format string, args ...any)) (*Homeserver, error) {
	if opts.Postgres {
		return nil, errors.New("harness: Options.Postgres needs Start, not Launch")
	}
	bin, err := FindDendrite(logf)
	if err != nil {
		return nil, fmt.Errorf("harness: no Dendrite binary: %w", err)
	}
	if opts.Dir == "" {
		if opts.Dir, err = os.MkdirTemp("", "harness-dendrite-"); err != nil {
			return nil, fmt.Errorf("harness: %w", err)
		}
	}
	hs, err := prepare(bin, opts, "")
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	if err := hs.startFirst(opts.Port); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	return hs, nil
}

// prepare fills in the defaults of opts and writes the signing key (unless
// Dir has one) and the configuration into opts.Dir.
func prepare(bin string, opts Options, dbURL string) (*Homeserver, error) {
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
		ServerName:   opts.ServerName,
		Dir:          dir,
		ConfigPath:   filepath.Join(dir, "dendrite.yaml"),
		LogPath:      filepath.Join(dir, "dendrite.log"),
		bin:          bin,
		startTimeout: opts.StartTimeout,
		client:       &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}},
	}
	// A reused Dir keeps its shared secret and signing key: the server's
	// identity and its events' signatures stay valid.
	hs.SharedSecret = existingSharedSecret(hs.ConfigPath)
	if hs.SharedSecret == "" {
		hs.SharedSecret = randomHex(16)
	}
	keyPath := filepath.Join(dir, "matrix_key.pem")
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if err := writeSigningKey(keyPath); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	cfg, err := hs.config(opts, dbURL)
	if err != nil {
		return nil, err
	}
	if opts.Config != nil {
		opts.Config(cfg)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf) // JSON is YAML, and needs no YAML library here
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(cfg); err != nil {
		return nil, err
	}
	if err := os.WriteFile(hs.ConfigPath, buf.Bytes(), 0o600); err != nil {
		return nil, err
	}
	return hs, nil
}

// startFirst starts Dendrite for the first time: on port, or on a free
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
		// process may grab it before Dendrite binds, so try a few ports.
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
		return fmt.Errorf("Dendrite did not start: %v\nlast lines of %s:\n%s", lastErr, hs.LogPath, hs.LogTail(60))
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

// Running reports whether the Dendrite process is alive.
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

// Stop shuts Dendrite down with SIGTERM, and SIGKILL if it has not exited
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
		hs.appendLog("harness: Dendrite ignored SIGTERM for 15s, killing it")
		_ = hs.cmd.Process.Kill()
		<-hs.exited
	}
	hs.appendLog("harness: Dendrite stopped")
}

// Kill ends Dendrite with SIGKILL, like a crash: nothing is flushed.
//
// Dendrite quirk: its embedded NATS JetStream may lose the newest stream
// state on a kill, after which events sent after Restart can silently never
// reach /sync (seen about one run in four when killed right after a send).
// Let the last event reach a client (e.g. WaitForMessage) before killing.
func (hs *Homeserver) Kill() {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if !hs.runningLocked() {
		return
	}
	_ = hs.cmd.Process.Kill()
	<-hs.exited
	hs.appendLog("harness: Dendrite killed")
}

// Restart stops Dendrite if it is running (use Kill first for a crash) and
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
	t.Fatalf("harness: Dendrite did not restart: %v\nlast lines of %s:\n%s", err, hs.LogPath, hs.LogTail(60))
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
	fmt.Fprintf(logFile, "harness: === start #%d of %s on %s ===\n", hs.runs, hs.bin, hs.addr)
	cmd := exec.Command(hs.bin,
		"-config", hs.ConfigPath,
		"-http-bind-address", hs.addr,
	)
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
			return fmt.Errorf("dendrite exited during start-up: %v", hs.waitErr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("client API not up after %s: %v", hs.startTimeout, err)
		}
	}
}

// appendLog writes a harness note into the Dendrite log (opened with
// O_APPEND, like Dendrite's own output, so lines do not overwrite each other).
func (hs *Homeserver) appendLog(line string) {
	f, err := os.OpenFile(hs.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

// LogTail returns the last n lines of the Dendrite log, leaving out the
// info-level chatter of its embedded NATS server (the full log is at LogPath).
func (hs *Homeserver) LogTail(n int) string {
	data, err := os.ReadFile(hs.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if strings.Contains(l, "level=info") && strings.Contains(l, "component=jetstream") {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// config builds the Dendrite v0.13 configuration (see dendrite-sample.yaml
// in the Dendrite module for the schema).
func (hs *Homeserver) config(opts Options, dbURL string) (map[string]any, error) {
	regs := make([]string, 0, len(opts.AppServiceRegistrations))
	for _, r := range opts.AppServiceRegistrations {
		abs, err := filepath.Abs(r)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("appservice registration: %w", err)
		}
		regs = append(regs, abs)
	}
	db := func(name string) map[string]any {
		if dbURL != "" {
			return map[string]any{} // global.database is used
		}
		return map[string]any{"connection_string": "file:" + filepath.Join(hs.Dir, "dendrite_"+name+".db")}
	}
	global := map[string]any{
		"server_name":                    opts.ServerName,
		"private_key":                    filepath.Join(hs.Dir, "matrix_key.pem"),
		"disable_federation":             true,
		"trusted_third_party_id_servers": []string{},
		"well_known_client_name":         "",
		"presence":                       map[string]any{"enable_inbound": false, "enable_outbound": false},
		"report_stats":                   map[string]any{"enabled": false},
		"metrics":                        map[string]any{"enabled": false},
		"dns_cache":                      map[string]any{"enabled": false},
		"cache":                          map[string]any{"max_size_estimated": "64mb", "max_age": "1h"},
		// On disk, not in_memory: Restart must not lose queued events.
		"jetstream": map[string]any{
			"storage_path": filepath.Join(hs.Dir, "jetstream"),
			"topic_prefix": "Dendrite",
		},
	}
	if dbURL != "" {
		global["database"] = map[string]any{
			"connection_string": dbURL,
			"max_open_conns":    10,
			"max_idle_conns":    2,
			"conn_max_lifetime": -1,
		}
	}
	return map[string]any{
		"version": 2,
		"global":  global,
		"app_service_api": map[string]any{
			"config_files":           regs,
			"disable_tls_validation": true,
		},
		"client_api": map[string]any{
			"registration_disabled":      true,
			"guests_disabled":            true,
			"registration_shared_secret": hs.SharedSecret,
			"rate_limiting":              map[string]any{"enabled": false, "threshold": 20, "cooloff_ms": 500},
		},
		"federation_api": map[string]any{
			"database":         db("federationapi"),
			"key_perspectives": []any{},
		},
		"key_server": map[string]any{"database": db("keyserver")},
		"media_api": map[string]any{
			"database":  db("mediaapi"),
			"base_path": filepath.Join(hs.Dir, "media"),
		},
		"mscs":        map[string]any{"database": db("mscs"), "mscs": []string{}},
		"relay_api":   map[string]any{"database": db("relayapi")},
		"room_server": map[string]any{"database": db("roomserver")},
		"sync_api": map[string]any{
			"database": db("syncapi"),
			"search":   map[string]any{"enabled": false},
		},
		"user_api": map[string]any{
			"account_database": db("userapi"),
			"bcrypt_cost":      4, // the minimum: logins are on every test's path
		},
		"tracing": map[string]any{"enabled": false},
		"logging": []any{map[string]any{"type": "std", "level": "info"}},
	}, nil
}

// writeSigningKey writes a new ed25519 server signing key in the PEM form
// Dendrite reads: a "MATRIX PRIVATE KEY" block holding the 32-byte seed, with
// a Key-ID header.
func writeSigningKey(path string) error {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	data := pem.EncodeToMemory(&pem.Block{
		Type:    "MATRIX PRIVATE KEY",
		Headers: map[string]string{"Key-ID": "ed25519:" + randomHex(3)},
		Bytes:   seed,
	})
	return os.WriteFile(path, data, 0o600)
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
func createPostgresDatabase(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("OPSBOT_TEST_POSTGRES")
	if admin == "" {
		admin = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatalf("harness: Options.Postgres needs the psql command: %v", err)
	}
	name := "harness_dendrite_" + randomHex(6)
	run := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", admin, "-c", sql).CombinedOutput()
		if err != nil {
			return fmt.Errorf("psql %q: %v: %s", sql, err, out)
		}
		return nil
	}
	if err := run("CREATE DATABASE " + name); err != nil {
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
