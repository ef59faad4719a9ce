package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/opsbot/opsbot/integration/harness"
)

// TestDemo runs the demo twice on one directory, with a real opsbot binary
// and a real homeserver (Dendrite, the default, and Synapse): the first run
// creates the config, the person and the room and gets "pong" for "!ping";
// the second reuses all three and gets "pong" again.
func TestDemo(t *testing.T) {
	bin := buildOpsbot(t)
	for _, hs := range []harness.Server{harness.Dendrite, harness.Synapse} {
		t.Run(string(hs), func(t *testing.T) { testDemo(t, bin, hs) })
	}
}

func testDemo(t *testing.T, bin string, hs harness.Server) {
	dir := filepath.Join(t.TempDir(), "demo")
	opts := options{Dir: dir, Homeserver: hs, Port: freePort(t), BotPort: freePort(t), Opsbot: bin}

	first := runDemo(t, opts)
	if !first.NewConfig || !first.NewUser || !first.NewRoom {
		t.Errorf("first run: %+v, want a new config, user and room", first)
	}
	if first.UserID != "@demo:localhost" || first.BotID != "@opsbot:localhost" || first.Password == "" || first.RoomID == "" {
		t.Errorf("first run: %+v", first)
	}
	cfg := readConfig(t, filepath.Join(dir, "opsbot.yaml"))
	if cfg["homeserver.domain"] != "localhost" ||
		cfg["homeserver.address"] != first.HomeserverURL ||
		cfg["appservice.listen"] != "127.0.0.1:"+strconv.Itoa(opts.BotPort) ||
		cfg["database.uri"] != filepath.Join(dir, "opsbot.db") {
		t.Errorf("config after the first run: %v", cfg)
	}
	reg, err := os.ReadFile(filepath.Join(dir, "registration.yaml"))
	if err != nil || !strings.Contains(string(reg), cfg["appservice.as_token"]) {
		t.Errorf("registration does not hold the config's as_token (%v):\n%s", err, reg)
	}
	configText, _ := os.ReadFile(filepath.Join(dir, "opsbot.yaml"))

	second := runDemo(t, opts)
	if second.NewConfig || second.NewUser || second.NewRoom {
		t.Errorf("second run: %+v, want the config, user and room reused", second)
	}
	if second.Password != first.Password || second.RoomID != first.RoomID {
		t.Errorf("second run: password %q room %q, first run: %q %q", second.Password, second.RoomID, first.Password, first.RoomID)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "opsbot.yaml")); !bytes.Equal(again, configText) {
		t.Errorf("the second run changed opsbot.yaml:\n%s", again)
	}
}

// runDemo runs the demo until it is ready, then stops it as Ctrl-C would.
func runDemo(t *testing.T, opts options) ready {
	t.Helper()
	out := &harness.LockedBuffer{}
	opts.Out = out
	readyc := make(chan ready, 1)
	opts.OnReady = func(r ready) { readyc <- r }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, opts) }()

	var r ready
	select {
	case r = <-readyc:
	case err := <-errc:
		t.Fatalf("demo ended before it was ready: %v\noutput:\n%s", err, out)
	case <-time.After(5 * time.Minute):
		cancel()
		<-errc
		t.Fatalf("demo not ready after 5 minutes; output:\n%s", out)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("demo stopped with %v\noutput:\n%s", err, out)
		}
	case <-time.After(time.Minute):
		t.Fatalf("demo did not stop within a minute of the cancel; output:\n%s", out)
	}
	text := out.String()
	stopping := map[harness.Server]string{harness.Dendrite: "stopping Dendrite", harness.Synapse: "stopping Synapse"}[opts.Homeserver]
	for _, want := range []string{"answered pong", "opsbot | ", "Bot identity is cross-signed", "Password:    " + r.Password, "Ctrl-C stops everything", stopping} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return r
}

func TestEditConfig(t *testing.T) {
	const in = `# head comment

homeserver:
  # the domain
  domain: example.org   # trailing
  address: "http://old"

database:
  uri: opsbot.db
`
	settings := []setting{
		{"homeserver.domain", "localhost"},
		{"homeserver.address", "http://127.0.0.1:8008"},
		{"database.uri", "/some dir/opsbot.db"},
	}
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(in), &doc); err != nil {
		t.Fatal(err)
	}
	got, err := editConfig([]byte(in), &doc, settings)
	if err != nil {
		t.Fatal(err)
	}
	const want = `# head comment

homeserver:
  # the domain
  domain: localhost   # trailing
  address: http://127.0.0.1:8008

database:
  uri: /some dir/opsbot.db
`
	if string(got) != want {
		t.Errorf("in place:\n%s\nwant:\n%s", got, want)
	}

	// A missing key makes it re-encode the document, comments kept.
	settings = append(settings, setting{"appservice.listen", "127.0.0.1:29333"})
	if err := yaml.Unmarshal([]byte(in), &doc); err != nil {
		t.Fatal(err)
	}
	got, err = editConfig([]byte(in), &doc, settings)
	if err != nil {
		t.Fatal(err)
	}
	var check yaml.Node
	if err := yaml.Unmarshal(got, &check); err != nil {
		t.Fatal(err)
	}
	for _, s := range settings {
		if v := lookupPath(check.Content[0], s.path); v == nil || v.Value != s.value {
			t.Errorf("re-encoded: %s is %v, want %q", s.path, v, s.value)
		}
	}
	if !strings.Contains(string(got), "# the domain") || !strings.Contains(string(got), "# trailing") {
		t.Errorf("re-encoding lost comments:\n%s", got)
	}
}

// buildOpsbot builds the binary the way the Makefile does.
func buildOpsbot(t *testing.T) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "opsbot-appservice")
	cmd := exec.Command("go", "build", "-tags", "goolm", "-o", bin, "./cmd/opsbot-appservice")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building opsbot: %v\n%s", err, out)
	}
	return bin
}

func readConfig(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, p := range []string{"homeserver.domain", "homeserver.address", "appservice.listen", "appservice.as_token", "database.uri"} {
		if v := lookupPath(doc.Content[0], p); v != nil {
			m[p] = v.Value
		}
	}
	return m
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
