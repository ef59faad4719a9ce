package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store/storetest"
	"github.com/opsbot/opsbot/integration/harness"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// opsbotBinary builds cmd/opsbot-appservice the way it ships (pure Go,
// goolm) once per test run.
func opsbotBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := harness.RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(root, ".build", "bin", "opsbot-appservice")
		cmd := exec.Command("go", "build", "-tags", "goolm", "-o", binPath, "./cmd/opsbot-appservice")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building opsbot: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Opsbot is an opsbot-appservice process under test.
type Opsbot struct {
	t       testing.TB
	Dir     string
	CfgPath string
	Cfg     *config.Config
	URL     string // the appservice listener, http://127.0.0.1:PORT
	// MetricsURL is the Prometheus endpoint.
	MetricsURL string
	// Binary, if set, is the opsbot binary to run instead of
	// opsbot-appservice (one built with skills of its own).
	Binary string
	// Env is added to the process's environment (NAME=value).
	Env []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	log  *harness.LockedBuffer
	done chan struct{}
}

// world is Dendrite plus opsbot configured for it.
type world struct {
	HS  *harness.Homeserver
	Bot *Opsbot
}

// homeserver is a homeserver a test world runs.
type homeserver struct {
	Name string // for subtest names
	harness.Server
	// KeysInTransactions: Synapse with the experimental appservice
	// features that docs/homeservers.md tells admins to switch on.
	KeysInTransactions bool
}

var (
	dendriteHS = homeserver{Name: "dendrite", Server: harness.Dendrite}
	// synapseHS is Synapse as docs/homeservers.md sets it up.
	synapseHS = homeserver{Name: "synapse", Server: harness.Synapse, KeysInTransactions: true}
	// synapseDefaultHS is Synapse without the experimental features.
	synapseDefaultHS = homeserver{Name: "synapse-default", Server: harness.Synapse}
	// homeservers are those the main suites run on.
	homeservers = []homeserver{dendriteHS, synapseHS}
)

// onEachWorld runs test on Dendrite with each database, and on Synapse
// (set up as docs/homeservers.md says) with SQLite: the databases are
// opsbot's own and behave the same whatever the homeserver, so the cross
// product would only double the time.
func onEachWorld(t *testing.T, test func(t *testing.T, hs homeserver, dbType string)) {
	for _, d := range storetest.Dialects {
		t.Run(dendriteHS.Name+"/"+d, func(t *testing.T) { test(t, dendriteHS, d) })
	}
	t.Run(synapseHS.Name+"/sqlite", func(t *testing.T) { test(t, synapseHS, "sqlite") })
}

// onHomeservers runs test on each homeserver of the main suites.
func onHomeservers(t *testing.T, test func(t *testing.T, hs homeserver)) {
	for _, hs := range homeservers {
		t.Run(hs.Name, func(t *testing.T) { test(t, hs) })
	}
}

// botSetup describes the bots of a test config, as YAML list items.
const defaultBots = `
  - localpart: opsbot
    displayname: Ops Bot
    skills: [ping, help, echo]
`

// newWorld writes an opsbot config for the database type, generates the
// registration with the real CLI, starts Dendrite with it, then opsbot.
func newWorld(t *testing.T, dbType, bots, extra string) *world {
	t.Helper()
	return newWorldWith(t, worldOptions{DB: dbType, Bots: bots, Extra: extra})
}

// newWorldVia is newWorld with opsbot talking to the homeserver through
// whatever address via returns (a relay, a fault injector).
func newWorldVia(t *testing.T, dbType, bots, extra string, via func(hs *harness.Homeserver) string) *world {
	t.Helper()
	return newWorldWith(t, worldOptions{DB: dbType, Bots: bots, Extra: extra, Via: via})
}

// adminTokenPlaceholder in a test config becomes a Dendrite admin's access
// token once the homeserver runs.
const adminTokenPlaceholder = "@DENDRITE_ADMIN_TOKEN@"

// worldOptions shape a test world.
type worldOptions struct {
	DB, Bots, Extra string
	// HS is the homeserver; the zero value is Dendrite.
	HS homeserver
	// Via, if set, gives the homeserver address opsbot uses (a relay).
	Via func(hs *harness.Homeserver) string
	// PublicURL, if set, is where the homeserver pushes transactions (a
	// load balancer in front of several replicas); default: opsbot itself.
	PublicURL string
	// Workers, if set, is appservice.workers.
	Workers int
	// Binary, if set, is the opsbot binary to run (Opsbot.Binary).
	Binary string
	// BeforeStart, if set, runs once the homeserver runs and before
	// opsbot starts (to register client-mode bots' accounts); it returns
	// environment variables for opsbot.
	BeforeStart func(hs *harness.Homeserver) []string
}

func newWorldWith(t *testing.T, opts worldOptions) *world {
	t.Helper()
	dbType, bots, extra, via := opts.DB, opts.Bots, opts.Extra, opts.Via
	bin := opts.Binary
	if bin == "" {
		bin = opsbotBinary(t)
	}
	dir := t.TempDir()
	port := freePort(t)
	publicURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	if opts.PublicURL != "" {
		publicURL = opts.PublicURL
	}
	db := storetest.Config(t, dbType)
	// Dendrite's URL is not known before it starts, but the registration
	// must exist first; it does not contain the homeserver URL, so write the
	// config with a placeholder address and fix it up afterwards.
	// Encryption is on, as generate-config writes it, unless the test
	// brings its own section.
	encryption := "encryption:\n  enabled: true\n  pickle_key: " + config.RandomToken() + "\n"
	if strings.Contains(extra, "encryption:") {
		encryption = ""
	}
	workers := opts.Workers
	if workers == 0 {
		workers = 8
	}
	metricsPort := freePort(t)
	encryption += fmt.Sprintf("metrics:\n  listen: 127.0.0.1:%d\n", metricsPort)
	write := func(hsURL string) string {
		text := fmt.Sprintf(`homeserver:
  domain: localhost
  address: %s
appservice:
  id: opsbot
  listen: 127.0.0.1:%d
  public_url: %s
  as_token: %s
  hs_token: %s
  workers: %d
database:
  type: %s
  uri: %q
bots:%s
logging:
  level: debug
  format: json
%s%s`, hsURL, port, publicURL, config.RandomToken(), config.RandomToken(), workers, db.Type, db.URI, bots, encryption, extra)
		return text
	}
	cfgPath := filepath.Join(dir, "opsbot.yaml")
	text := write("http://127.0.0.1:1")
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-c", cfgPath, "generate-registration").Output()
	if err != nil {
		t.Fatalf("generate-registration: %v", err)
	}
	regPath := filepath.Join(dir, "registration.yaml")
	if err := os.WriteFile(regPath, out, 0o600); err != nil {
		t.Fatal(err)
	}
	hs := harness.Start(t, harness.Options{ServerName: "localhost", AppServiceRegistrations: []string{regPath},
		Server: opts.HS.Server, KeysInTransactions: opts.HS.KeysInTransactions})
	address := hs.URL
	if via != nil {
		address = via(hs)
	}
	text = strings.Replace(text, "http://127.0.0.1:1\n", address+"\n", 1)
	if strings.Contains(text, adminTokenPlaceholder) {
		// A Dendrite admin's token, for the bots' cross-signing uploads;
		// Synapse needs none (MSC3967), and the line goes.
		token := ""
		if hs.Server == harness.Dendrite {
			token = hs.RegisterAdmin(t, "opsbot-admin").AccessToken
		}
		text = strings.ReplaceAll(text, adminTokenPlaceholder, token)
	}
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ob := newOpsbot(t, dir, cfgPath, cfg, port, metricsPort)
	ob.Binary = opts.Binary
	if opts.BeforeStart != nil {
		ob.Env = opts.BeforeStart(hs)
	}
	ob.Start()
	return &world{HS: hs, Bot: ob}
}

func newOpsbot(t *testing.T, dir, cfgPath string, cfg *config.Config, port, metricsPort int) *Opsbot {
	ob := &Opsbot{t: t, Dir: dir, CfgPath: cfgPath, Cfg: cfg, URL: fmt.Sprintf("http://127.0.0.1:%d", port), log: &harness.LockedBuffer{},
		MetricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)}
	t.Cleanup(func() {
		ob.Stop()
		if t.Failed() {
			full := filepath.Join(os.TempDir(), fmt.Sprintf("opsbot-%s-%d.log", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano()))
			_ = os.WriteFile(full, []byte(ob.Log()), 0o644)
			t.Logf("opsbot log %s (last 60 lines; all of it in %s):\n%s", cfgPath, full, ob.LogTail(60))
		}
	})
	return ob
}

// Replica returns a second opsbot process with the same config (database,
// tokens, bots) but its own listeners, not yet started.
func (o *Opsbot) Replica(t *testing.T) *Opsbot {
	t.Helper()
	data, err := os.ReadFile(o.CfgPath)
	if err != nil {
		t.Fatal(err)
	}
	port, metricsPort := freePort(t), freePort(t)
	text := string(data)
	own := strings.Contains(text, "listen: "+o.Cfg.AppService.Listen)
	text = strings.Replace(text, "listen: "+o.Cfg.AppService.Listen, fmt.Sprintf("listen: 127.0.0.1:%d", port), 1)
	text = strings.Replace(text, "listen: "+o.Cfg.Metrics.Listen, fmt.Sprintf("listen: 127.0.0.1:%d", metricsPort), 1)
	if !own {
		// A config without an appservice section (client mode) listens on
		// the default address: the replica gets its own.
		text += fmt.Sprintf("appservice:\n  listen: 127.0.0.1:%d\n", port)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "opsbot.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	r := newOpsbot(t, dir, path, cfg, port, metricsPort)
	r.Env, r.Binary = o.Env, o.Binary
	return r
}

// serveFront serves h on a free loopback port until the test ends (the
// front a test puts between the homeserver and opsbot) and returns its URL.
// Closing does not wait for requests in flight: a replica may be dead.
func serveFront(t *testing.T, h http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return "http://" + l.Addr().String()
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs opsbot and waits until /readyz says ready.
func (o *Opsbot) Start() {
	o.t.Helper()
	o.start("/readyz")
}

// StartStandby runs opsbot and waits only until /healthz answers: a standby
// replica is alive but not ready.
func (o *Opsbot) StartStandby() {
	o.t.Helper()
	o.start("/healthz")
}

// probeClient asks /readyz with a short timeout: a frozen process does
// not answer at all.
var probeClient = &http.Client{Timeout: 500 * time.Millisecond}

// Ready reports whether /readyz answers 200.
func (o *Opsbot) Ready() bool {
	resp, err := probeClient.Get(o.URL + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

func (o *Opsbot) start(probe string) {
	o.t.Helper()
	o.mu.Lock()
	bin := o.Binary
	if bin == "" {
		bin = opsbotBinary(o.t)
	}
	cmd := exec.Command(bin, "-c", o.CfgPath)
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Stdout = o.log
	cmd.Stderr = o.log
	if err := cmd.Start(); err != nil {
		o.mu.Unlock()
		o.t.Fatal(err)
	}
	o.cmd = cmd
	done := make(chan struct{})
	o.done = done
	o.mu.Unlock()
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			o.t.Fatalf("opsbot exited during start-up:\n%s", o.LogTail(40))
		default:
		}
		resp, err := http.Get(o.URL + probe)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	o.t.Fatalf("opsbot not ready after 60s:\n%s", o.LogTail(40))
}

// Signal sends a signal (SIGSTOP, SIGCONT) without waiting for anything.
func (o *Opsbot) Signal(sig syscall.Signal) {
	o.mu.Lock()
	cmd := o.cmd
	o.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// WaitExit waits until the process has ended by itself.
func (o *Opsbot) WaitExit(t testing.TB, timeout time.Duration) {
	t.Helper()
	o.mu.Lock()
	done := o.done
	o.mu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("opsbot did not exit within %v:\n%s", timeout, o.LogTail(30))
	}
	o.mu.Lock()
	o.cmd = nil
	o.mu.Unlock()
}

// Kill ends opsbot with SIGKILL: no shutdown code runs.
func (o *Opsbot) Kill() { o.signal(syscall.SIGKILL) }

// Stop ends opsbot with SIGTERM and waits for it.
func (o *Opsbot) Stop() { o.signal(syscall.SIGTERM) }

func (o *Opsbot) signal(sig syscall.Signal) {
	o.mu.Lock()
	cmd, done := o.cmd, o.done
	o.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	o.mu.Lock()
	o.cmd = nil
	o.mu.Unlock()
}

// Log returns everything opsbot has logged so far.
func (o *Opsbot) Log() string {
	return o.log.String()
}

// LogTail returns the last n lines of the log.
func (o *Opsbot) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(o.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitForLog waits until one log line contains all the given parts.
func (o *Opsbot) WaitForLog(t testing.TB, timeout time.Duration, parts ...string) {
	t.Helper()
	o.WaitForLogs(t, timeout, 1, parts...)
}

// WaitForLogs waits until n log lines (of all runs) contain all the given
// parts.
func (o *Opsbot) WaitForLogs(t testing.TB, timeout time.Duration, n int, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if o.CountLog(parts...) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d opsbot log lines with %q within %v", n, parts, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// LastLogField returns a field of the last log line that contains msg, as
// its JSON text.
func (o *Opsbot) LastLogField(t testing.TB, msg, field string) string {
	t.Helper()
	lines := strings.Split(o.Log(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.Contains(lines[i], msg) {
			continue
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal([]byte(lines[i]), &fields); err != nil || fields[field] == nil {
			t.Fatalf("no field %q in log line %s", field, lines[i])
		}
		return string(fields[field])
	}
	t.Fatalf("no log line with %q", msg)
	return ""
}

// CountLog counts the log lines (of all runs) that contain all the parts.
func (o *Opsbot) CountLog(parts ...string) int {
	n := 0
	for _, line := range strings.Split(o.Log(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// Metric returns the value of the sample whose line starts with series
// (e.g. `opsbot_transactions_total{outcome="ok"}`), or 0 if absent.
func (o *Opsbot) Metric(t testing.TB, series string) float64 {
	t.Helper()
	resp, err := http.Get(o.MetricsURL)
	if err != nil {
		t.Fatalf("scraping %s: %v", o.MetricsURL, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	for _, line := range strings.Split(buf.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			fmt.Sscanf(rest, "%g", &v)
			return v
		}
	}
	return 0
}

// WaitMetric waits until a sample has the wanted value: metrics are set
// just after the log line that tells of the same change.
func (o *Opsbot) WaitMetric(t testing.TB, series string, want float64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		got := o.Metric(t, series)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v after %v, want %v", series, got, wait, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Run runs an opsbot subcommand with the test config.
func (o *Opsbot) Run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bin := o.Binary
	if bin == "" {
		bin = opsbotBinary(o.t)
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"-c", o.CfgPath}, args...)...)
	cmd.Env = append(os.Environ(), o.Env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// checkSays runs `check`, which must pass, and fails the test unless its
// output holds every want.
func (o *Opsbot) checkSays(t testing.TB, wants ...string) {
	t.Helper()
	out, err := o.Run("check")
	if err != nil {
		t.Errorf("check failed: %v\n%s", err, out)
	}
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
}

// PutTransaction pushes a transaction to opsbot as the homeserver would.
func (o *Opsbot) PutTransaction(t testing.TB, txnID, body string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, o.URL+"/_matrix/app/v1/transactions/"+txnID, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+o.Cfg.AppService.HSToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
