// Command demo is what `make demo` runs: a complete opsbot to talk to on
// this machine, in about a minute, with nothing to set up.
//
//	go run ./integration/demo -opsbot .build/bin/opsbot-appservice [-homeserver dendrite|synapse] [-dir .build/demo] [-port 8008] [-bot-port 29333]
//
// It generates an opsbot config and registration (the steps a homeserver
// admin takes), starts a Dendrite homeserver (or, with -homeserver synapse,
// Synapse set up as docs/homeservers.md says) for server name "localhost"
// with that registration (see integration/harness), starts opsbot, creates
// the person @demo:localhost and a room "opsbot demo" with the bot in it,
// checks that "!ping" gets "pong", and prints how to log in with a Matrix
// client. Everything lives in -dir and is reused on the next run: the config
// and its tokens, the homeserver's data, the person's password and the room.
// Ctrl-C (SIGINT) or SIGTERM stops opsbot, then the homeserver.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/opsbot/opsbot/integration/harness"
)

const (
	serverName     = "localhost"
	demoLocalpart  = "demo"
	demoDeviceID   = "OPSBOT_DEMO"
	adminLocalpart = "demo-admin"
	adminDeviceID  = "OPSBOT_DEMO_ADMIN"
	roomName       = "opsbot demo"

	readyTimeout = 60 * time.Second // opsbot's /readyz
	botTimeout   = 30 * time.Second // the bot joining, and answering !ping
	stopTimeout  = 30 * time.Second // opsbot's shutdown after SIGTERM
)

// options configure run.
type options struct {
	Dir string // where everything is kept; "" = <repo>/.build/demo
	// Homeserver is harness.Dendrite (the default) or harness.Synapse.
	Homeserver harness.Server
	Port       int    // the homeserver's client API port on 127.0.0.1
	BotPort    int    // opsbot's listener port on 127.0.0.1
	Opsbot     string // the opsbot-appservice binary
	// Out receives the progress notes, opsbot's log ("opsbot | " lines) and
	// the welcome text. Default os.Stdout.
	Out io.Writer
	// OnReady, if set, is called once the !ping/pong check has passed.
	OnReady func(ready)
}

// ready describes a demo that is up.
type ready struct {
	HomeserverURL, UserID, Password, RoomID, BotID string
	// NewConfig, NewUser and NewRoom tell whether this run created the
	// opsbot config, the person's account and the room, or reused them.
	NewConfig, NewUser, NewRoom bool
}

func main() {
	var o options
	flag.StringVar(&o.Dir, "dir", "", "directory for the config, registration and homeserver data, reused across runs (default .build/demo under the repo root)")
	flag.IntVar(&o.Port, "port", 8008, "port of the homeserver's client API on 127.0.0.1")
	flag.StringVar((*string)(&o.Homeserver), "homeserver", string(harness.Dendrite), "the homeserver to run: dendrite (quick to start) or synapse (from Debian sid in a chroot, built on first use; needs root)")
	flag.IntVar(&o.BotPort, "bot-port", 29333, "port of opsbot's listener on 127.0.0.1")
	flag.StringVar(&o.Opsbot, "opsbot", "", "path of the opsbot-appservice binary (required)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: go run ./integration/demo -opsbot PATH [flags]\n\nRuns opsbot with a local homeserver (Dendrite or Synapse) to try it out.\n\nFlags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if o.Opsbot == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills the demo at once
	}()
	if err := run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: %v\n", err)
		os.Exit(1)
	}
}

// run sets everything up, then waits until ctx is done (a clean stop, nil)
// or opsbot or the homeserver dies (an error).
func run(ctx context.Context, o options) (err error) {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Homeserver == "" {
		o.Homeserver = harness.Dendrite
	}
	if o.Homeserver != harness.Dendrite && o.Homeserver != harness.Synapse {
		return fmt.Errorf("-homeserver %q: want dendrite or synapse", o.Homeserver)
	}
	hsName := map[harness.Server]string{harness.Dendrite: "Dendrite", harness.Synapse: "Synapse"}[o.Homeserver]
	out := &lockedWriter{w: o.Out}
	say := func(format string, args ...any) { out.printf("demo | "+format+"\n", args...) }

	// Things to stop, run in reverse order on the way out.
	var cleanups []func()
	defer func() {
		for _, c := range slices.Backward(cleanups) {
			c()
		}
	}()

	// Paths and ports.
	if o.Dir == "" {
		root, err := harness.RepoRoot()
		if err != nil {
			return fmt.Errorf("%v; run from the opsbot repository or pass -dir", err)
		}
		o.Dir = filepath.Join(root, ".build", "demo")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	bin, err := opsbotPath(o.Opsbot)
	if err != nil {
		return err
	}
	if err := portFree(o.Port, "-port", "the homeserver"); err != nil {
		return err
	}
	if err := portFree(o.BotPort, "-bot-port", "opsbot"); err != nil {
		return err
	}
	hsURL := fmt.Sprintf("http://127.0.0.1:%d", o.Port)
	say("using %s (version %s) and directory %s", bin, opsbotVersion(ctx, bin), dir)

	// 1. The admin's part: config and registration.
	cfgPath := filepath.Join(dir, "opsbot.yaml")
	regPath := filepath.Join(dir, "registration.yaml")
	cfg, err := prepareConfig(ctx, bin, cfgPath, regPath, hsURL, o.BotPort, dir)
	if err != nil {
		return err
	}
	if cfg.created {
		say("wrote %s (from opsbot generate-config) and %s", cfgPath, regPath)
	} else if cfg.updated {
		say("reusing %s with its tokens, updated for these ports; wrote %s again", cfgPath, regPath)
	} else {
		say("reusing %s and %s", cfgPath, regPath)
	}

	// 2. The homeserver, with the registration installed.
	say("starting %s on %s (server name %q; first run may build it, which takes a few minutes)", hsName, hsURL, serverName)
	began := time.Now()
	hs, err := harness.Launch(harness.Options{
		Server:                  o.Homeserver,
		ServerName:              serverName,
		Dir:                     filepath.Join(dir, string(o.Homeserver)),
		Port:                    o.Port,
		AppServiceRegistrations: []string{regPath},
		// Synapse as docs/homeservers.md sets it up: keys in transactions.
		KeysInTransactions: o.Homeserver == harness.Synapse,
	}, func(format string, args ...any) { say(format, args...) })
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		say("stopping %s", hsName)
		hs.Stop()
	})
	say("%s is up after %s (log: %s)", hsName, time.Since(began).Round(100*time.Millisecond), hs.LogPath)

	// 3. opsbot; on Dendrite with an admin's token for the bots'
	// cross-signing (Synapse needs none).
	var env []string
	if o.Homeserver == harness.Dendrite {
		admin, err := demoAdmin(ctx, hs, dir)
		if err != nil {
			return err
		}
		cleanups = append(cleanups, func() {
			lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = admin.Logout(lctx)
		})
		say("starting opsbot -c %s (OPSBOT_DENDRITE_ADMIN_TOKEN: %s's token, for the bots' cross-signing)", cfgPath, admin.ID)
		env = []string{"OPSBOT_DENDRITE_ADMIN_TOKEN=" + admin.AccessToken}
	} else {
		say("starting opsbot -c %s", cfgPath)
	}
	bot, err := startChild(bin, dir, out, "opsbot | ", env, "-c", cfgPath)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		if bot.exited() {
			return
		}
		say("stopping opsbot (SIGTERM, up to %s)", stopTimeout)
		if err := bot.stop(stopTimeout); err != nil {
			say("warning: %v", err)
		}
	})
	readyURL := fmt.Sprintf("http://127.0.0.1:%d/readyz", o.BotPort)
	if err := waitReady(ctx, bot, readyURL); err != nil {
		return err
	}
	say("opsbot is ready (%s answered 200)", readyURL)

	// 4. A person, a room, and the proof that the loop works.
	r := ready{HomeserverURL: hsURL, BotID: cfg.botID, NewConfig: cfg.created}
	user, err := demoUser(ctx, hs, dir, &r)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = user.Logout(lctx) // the demo's own device; the person's clients stay logged in
	})
	if r.NewUser {
		say("created %s (password kept in %s)", r.UserID, filepath.Join(dir, "demo-password"))
	} else {
		say("logged in as %s", r.UserID)
	}
	if err := demoRoom(ctx, user, dir, cfg.botID, &r); err != nil {
		return err
	}
	if r.NewRoom {
		say("created room %q (%s) and invited %s", roomName, r.RoomID, cfg.botID)
	} else {
		say("reusing room %q (%s)", roomName, r.RoomID)
	}
	if err := waitJoined(ctx, user, r.RoomID, cfg.botID); err != nil {
		return fmt.Errorf("%w\nlast lines of opsbot's log:\n%s", err, bot.tail())
	}
	say("%s is in the room", cfg.botID)
	took, err := pingPong(ctx, user, r.RoomID, cfg.botID, cfg.prefix)
	if err != nil {
		return fmt.Errorf("%w\nlast lines of opsbot's log:\n%s\n%s's log: %s", err, bot.tail(), hsName, hs.LogPath)
	}
	say("sent %sping as %s, %s answered pong after %s: it works", cfg.prefix, r.UserID, cfg.botID, took.Round(time.Millisecond))

	out.printf("%s", welcome(r, cfg.prefix, dir, string(o.Homeserver), hs.LogPath))
	if o.OnReady != nil {
		o.OnReady(r)
	}

	// 5. Run until told to stop, or until a process dies.
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			say("stopping (signal received)")
			return nil
		case <-bot.done:
			if stopping(ctx) {
				say("stopping (signal received)")
				return nil
			}
			return fmt.Errorf("opsbot exited unexpectedly (%v); last lines of its log:\n%s", bot.err, bot.tail())
		case <-tick.C:
			if !hs.Running() {
				if stopping(ctx) {
					say("stopping (signal received)")
					return nil
				}
				return fmt.Errorf("%s exited unexpectedly; last lines of %s:\n%s", hsName, hs.LogPath, hs.LogTail(30))
			}
		}
	}
}

// stopping reports whether ctx is done or becomes done within a second: a
// Ctrl-C in a terminal may reach a child before it reaches us.
func stopping(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return true
	case <-time.After(time.Second):
		return false
	}
}

func opsbotPath(p string) (string, error) {
	if !strings.ContainsRune(p, os.PathSeparator) && !strings.Contains(p, "/") {
		if found, err := exec.LookPath(p); err == nil {
			p = found
		}
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("-opsbot: %w (build it with: CGO_ENABLED=0 go build -tags goolm -o .build/bin/opsbot-appservice ./cmd/opsbot-appservice)", err)
	}
	if st.IsDir() {
		return "", fmt.Errorf("-opsbot: %s is a directory, not the opsbot-appservice binary", abs)
	}
	return abs, nil
}

func opsbotVersion(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	outp, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(outp))
}

func portFree(port int, flagName, what string) error {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("port %d for %s is not free (is another demo or homeserver running?); choose another with %s: %v", port, what, flagName, err)
	}
	return l.Close()
}

// demoConfig is what the demo needs to know from opsbot.yaml.
type demoConfig struct {
	created bool
	updated bool   // an existing config was changed (e.g. another -port)
	botID   string // the first bot's user ID
	prefix  string // its command prefix
}

// prepareConfig makes sure cfgPath exists (from opsbot generate-config) and
// points at this machine's homeserver, listener and database, and that
// regPath is the registration generated from it. An existing config keeps
// its tokens and everything else; it is only rewritten if one of those
// settings differs (e.g. another -port), and then so is the registration.
func prepareConfig(ctx context.Context, bin, cfgPath, regPath, hsURL string, botPort int, dir string) (demoConfig, error) {
	var dc demoConfig
	data, err := os.ReadFile(cfgPath)
	if errors.Is(err, os.ErrNotExist) {
		data, err = runOpsbot(ctx, bin, "generate-config")
		if err != nil {
			return dc, err
		}
		dc.created = true
	} else if err != nil {
		return dc, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return dc, fmt.Errorf("%s: %w", cfgPath, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return dc, fmt.Errorf("%s: not a YAML mapping; remove it to have a new one generated", cfgPath)
	}
	root := doc.Content[0]
	want := []setting{
		{"homeserver.domain", serverName},
		{"homeserver.address", hsURL},
		{"appservice.listen", fmt.Sprintf("127.0.0.1:%d", botPort)},
		{"appservice.public_url", fmt.Sprintf("http://127.0.0.1:%d", botPort)},
		{"database.type", "sqlite"},
		{"database.uri", filepath.Join(dir, "opsbot.db")},
	}
	var todo []setting
	for _, s := range want {
		if v := lookupPath(root, s.path); v == nil || v.Kind != yaml.ScalarNode || v.Value != s.value {
			todo = append(todo, s)
		}
	}
	changed := len(todo) > 0
	dc.updated = changed && !dc.created
	localpart, prefix := "opsbot", "!"
	if bots := lookup(root, "bots"); bots != nil && bots.Kind == yaml.SequenceNode && len(bots.Content) > 0 {
		if n := lookup(bots.Content[0], "localpart"); n != nil && n.Value != "" {
			localpart = n.Value
		}
		if n := lookup(bots.Content[0], "command_prefix"); n != nil && n.Value != "" {
			prefix = n.Value
		}
	}
	dc.botID, dc.prefix = "@"+localpart+":"+serverName, prefix

	if changed {
		edited, err := editConfig(data, &doc, todo)
		if err != nil {
			return dc, fmt.Errorf("%s: %w", cfgPath, err)
		}
		if err := writeFile(cfgPath, edited); err != nil {
			return dc, err
		}
	}
	if _, err := os.Stat(regPath); changed || errors.Is(err, os.ErrNotExist) {
		reg, err := runOpsbot(ctx, bin, "-c", cfgPath, "generate-registration")
		if err != nil {
			return dc, err
		}
		if err := writeFile(regPath, reg); err != nil {
			return dc, err
		}
	}
	return dc, nil
}

// setting is one config value the demo needs: a dotted path and its value.
type setting struct{ path, value string }

// editConfig applies settings to the YAML text data (parsed as doc). It
// replaces each value in place, so comments and blank lines stay as
// generate-config wrote them; if that is not possible (a key is missing, a
// value spans lines), it re-encodes the document, which keeps the comments
// but not the blank lines.
func editConfig(data []byte, doc *yaml.Node, settings []setting) ([]byte, error) {
	if edited, ok := editInPlace(data, doc.Content[0], settings); ok {
		return edited, nil
	}
	for _, s := range settings {
		setScalar(doc.Content[0], strings.Split(s.path, "."), s.value)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// editInPlace replaces the scalars at the settings' paths in the text, and
// reports false if it could not, or if the result does not parse to the
// wanted values.
func editInPlace(data []byte, root *yaml.Node, settings []setting) ([]byte, bool) {
	lines := strings.SplitAfter(string(data), "\n")
	for _, s := range settings {
		v := lookupPath(root, s.path)
		if v == nil || v.Kind != yaml.ScalarNode || v.Line < 1 || v.Line > len(lines) || v.Column < 1 {
			return nil, false
		}
		line := lines[v.Line-1]
		start := v.Column - 1
		if start > len(line) {
			return nil, false
		}
		rest := line[start:]
		var end int
		switch v.Style {
		case 0:
			end = len(strings.TrimRight(rest, "\r\n"))
			if i := strings.Index(rest, " #"); i >= 0 {
				end = i
			}
			end = len(strings.TrimRight(rest[:end], " \t"))
		case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
			q := rest[:1]
			i := strings.Index(rest[1:], q) // good enough: verified below
			if i < 0 {
				return nil, false
			}
			end = i + 2
		default:
			return nil, false
		}
		val, err := yaml.Marshal(s.value)
		if err != nil || bytes.Count(val, []byte("\n")) != 1 {
			return nil, false
		}
		lines[v.Line-1] = line[:start] + strings.TrimSuffix(string(val), "\n") + rest[end:]
	}
	edited := []byte(strings.Join(lines, ""))
	var check yaml.Node
	if yaml.Unmarshal(edited, &check) != nil || len(check.Content) != 1 {
		return nil, false
	}
	for _, s := range settings {
		if v := lookupPath(check.Content[0], s.path); v == nil || v.Value != s.value {
			return nil, false
		}
	}
	return edited, true
}

// lookupPath returns the node at a dotted path of mapping keys, or nil.
func lookupPath(m *yaml.Node, path string) *yaml.Node {
	for _, key := range strings.Split(path, ".") {
		if m = lookup(m, key); m == nil {
			return nil
		}
	}
	return m
}

// lookup returns the value node of key in mapping m, or nil.
func lookup(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// setScalar sets the string at path under mapping m, creating the mappings
// and key on the way if missing, and reports whether anything changed. A
// scalar already there keeps its style and comments.
func setScalar(m *yaml.Node, path []string, value string) bool {
	for i, key := range path {
		v := lookup(m, key)
		last := i == len(path)-1
		if v == nil {
			v = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
			if last {
				v = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str"}
			}
			m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
		}
		if last {
			if v.Kind == yaml.ScalarNode && v.Value == value {
				return false
			}
			if v.Kind != yaml.ScalarNode {
				*v = yaml.Node{Kind: yaml.ScalarNode}
			}
			v.Tag, v.Value = "!!str", value
			return true
		}
		if v.Kind != yaml.MappingNode {
			*v = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		}
		m = v
	}
	return false
}

// runOpsbot runs a one-shot opsbot command and returns its standard output.
func runOpsbot(ctx context.Context, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// writeFile replaces path atomically; the files hold tokens and passwords.
func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// waitReady polls opsbot's /readyz until it answers 200.
func waitReady(ctx context.Context, bot *child, readyURL string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(readyTimeout)
	last := "no answer yet"
	for {
		resp, err := client.Get(readyURL)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-bot.done:
			return fmt.Errorf("opsbot exited before it was ready (%v); last lines of its log:\n%s", bot.err, bot.tail())
		case <-ctx.Done():
			return errors.New("interrupted while waiting for opsbot to be ready")
		case <-time.After(250 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("opsbot was not ready within %s (%s: %s); last lines of its log:\n%s", readyTimeout, readyURL, last, bot.tail())
		}
	}
}

// demoUser logs in as @demo:localhost with the password kept in
// dir/demo-password, creating the password and the account on first use.
func demoUser(ctx context.Context, hs *harness.Homeserver, dir string, r *ready) (*harness.User, error) {
	u, password, created, err := account(ctx, hs, filepath.Join(dir, "demo-password"), demoLocalpart, demoDeviceID, false)
	r.Password, r.UserID, r.NewUser = password, hs.UserID(demoLocalpart), created
	return u, err
}

// demoAdmin is a Dendrite admin for opsbot: Dendrite asks for a password
// before it accepts the bots' cross-signing keys, and with an admin's token
// opsbot sets one (encryption.dendrite_admin_token).
func demoAdmin(ctx context.Context, hs *harness.Homeserver, dir string) (*harness.User, error) {
	u, _, _, err := account(ctx, hs, filepath.Join(dir, "admin-password"), adminLocalpart, adminDeviceID, true)
	return u, err
}

// account logs in as localpart with the password kept in pwPath, creating
// the password and the account on first use.
func account(ctx context.Context, hs *harness.Homeserver, pwPath, localpart, deviceID string, admin bool) (u *harness.User, password string, created bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	data, err := os.ReadFile(pwPath)
	password = strings.TrimSpace(string(data))
	if errors.Is(err, os.ErrNotExist) || (err == nil && password == "") {
		password = newPassword()
		if err := writeFile(pwPath, []byte(password+"\n")); err != nil {
			return nil, "", false, err
		}
	} else if err != nil {
		return nil, "", false, err
	}
	// Usually the account exists exactly when the homeserver's data does.
	u, err = hs.LoginAccount(ctx, localpart, password, deviceID)
	if he := (*harness.HTTPError)(nil); errors.As(err, &he) && he.ErrCode == "M_FORBIDDEN" {
		u, err = hs.RegisterAccount(ctx, localpart, password, admin)
		created = err == nil
		if he := (*harness.HTTPError)(nil); errors.As(err, &he) && he.ErrCode == "M_USER_IN_USE" {
			return nil, "", false, fmt.Errorf("%s exists but the password in %s does not work for it; remove %s to start afresh",
				hs.UserID(localpart), pwPath, filepath.Join(filepath.Dir(pwPath), string(hs.Server)))
		}
	}
	if err != nil {
		return nil, "", false, fmt.Errorf("logging in as %s: %w", hs.UserID(localpart), err)
	}
	return u, password, created, nil
}

// newPassword returns a random password that is easy to type.
func newPassword() string {
	const letters = "abcdefghijkmnpqrstuvwxyz23456789" // no l, o, 0, 1
	b := make([]byte, 15)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	var sb strings.Builder
	for i, c := range b {
		if i > 0 && i%5 == 0 {
			sb.WriteByte('-')
		}
		sb.WriteByte(letters[int(c)%len(letters)])
	}
	return sb.String()
}

// demoRoom reuses the room remembered in dir/demo-room if the person is still
// in it (inviting the bot again if it left), or creates one inviting the bot.
func demoRoom(ctx context.Context, u *harness.User, dir, botID string, r *ready) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	roomPath := filepath.Join(dir, "demo-room")
	data, err := os.ReadFile(roomPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if roomID := strings.TrimSpace(string(data)); roomID != "" {
		var joined struct {
			JoinedRooms []string `json:"joined_rooms"`
		}
		if err := u.Do(ctx, http.MethodGet, "/_matrix/client/v3/joined_rooms", nil, &joined); err != nil {
			return err
		}
		if slices.Contains(joined.JoinedRooms, roomID) {
			r.RoomID = roomID
			var member struct {
				Membership string `json:"membership"`
			}
			err := u.Do(ctx, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+
				"/state/m.room.member/"+url.PathEscape(botID), nil, &member)
			if he := (*harness.HTTPError)(nil); err != nil && !(errors.As(err, &he) && he.Status == http.StatusNotFound) {
				return err
			}
			if member.Membership == "join" || member.Membership == "invite" {
				return nil
			}
			return u.Do(ctx, http.MethodPost, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite",
				map[string]any{"user_id": botID}, nil)
		}
	}
	var res struct {
		RoomID string `json:"room_id"`
	}
	err = u.Do(ctx, http.MethodPost, "/_matrix/client/v3/createRoom", map[string]any{
		"preset": "private_chat",
		"name":   roomName,
		"topic":  "Try !ping, !help or !echo hello",
		"invite": []string{botID},
	}, &res)
	if err != nil {
		return fmt.Errorf("creating the room: %w", err)
	}
	r.RoomID, r.NewRoom = res.RoomID, true
	return writeFile(roomPath, []byte(res.RoomID+"\n"))
}

// waitJoined waits until botID has joined roomID. u's /sync position
// predates the invite, so the join cannot slip by.
func waitJoined(ctx context.Context, u *harness.User, roomID, botID string) error {
	ctx, cancel := context.WithTimeout(ctx, botTimeout)
	defer cancel()
	var members struct {
		Joined map[string]any `json:"joined"`
	}
	if err := u.Do(ctx, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/joined_members", nil, &members); err != nil {
		return err
	}
	if _, ok := members.Joined[botID]; ok {
		return nil
	}
	_, err := u.AwaitEvent(ctx, roomID, func(e harness.Event) bool {
		return e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey == botID && e.Membership() == "join"
	})
	if err != nil {
		return fmt.Errorf("%s did not join the room within %s: %w", botID, botTimeout, err)
	}
	return nil
}

// pingPong sends "!ping" as u and waits for the bot's "pong".
func pingPong(ctx context.Context, u *harness.User, roomID, botID, prefix string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, botTimeout)
	defer cancel()
	began := time.Now()
	txn := fmt.Sprintf("opsbot-demo.%d", began.UnixNano())
	err := u.Do(ctx, http.MethodPut, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+txn,
		map[string]any{"msgtype": "m.text", "body": prefix + "ping"}, nil)
	if err != nil {
		return 0, fmt.Errorf("sending %sping: %w", prefix, err)
	}
	_, err = u.AwaitEvent(ctx, roomID, func(e harness.Event) bool {
		return e.Type == "m.room.message" && e.Sender == botID && strings.Contains(e.Body(), "pong")
	})
	if err != nil {
		return 0, fmt.Errorf("%s did not answer %sping with pong within %s: %w", botID, prefix, botTimeout, err)
	}
	return time.Since(began), nil
}

func welcome(r ready, prefix, dir, hsDir, hsLog string) string {
	line := strings.Repeat("-", 72)
	return fmt.Sprintf(`
%[1]s
  opsbot is running, with its own homeserver. Come and talk to it:

    Homeserver:  %[2]s   (server name: %[3]s)
    User:        %[4]s
    Password:    %[5]s
    Room:        "%[6]s"   (%[7]s)
    Bot:         %[8]s

  Log in with any Matrix client that can reach this machine's localhost,
  e.g. Element desktop (https://element.io/download) or Cinny: choose a
  custom homeserver, enter %[2]s, then user "%[9]s" and the
  password above. Open the room "%[6]s" and type:

    %[10]sping          the bot answers "pong"
    %[10]shelp          what the bot can do
    %[10]secho hello    the bot says "hello" back

  Files: %[11]s
    opsbot.yaml, registration.yaml, opsbot.db, demo-password, demo-room;
    the homeserver's data in %[12]s/ (log: %[13]s).
  Running this again reuses all of it; delete the folder to start afresh.

  Ctrl-C stops everything.
%[1]s
`, line, r.HomeserverURL, serverName, r.UserID, r.Password, roomName, r.RoomID, r.BotID,
		demoLocalpart, prefix, dir, hsDir, hsLog)
}

// child is a long-running process whose output goes to the terminal, each
// line prefixed.
type child struct {
	cmd  *exec.Cmd
	log  *prefixWriter
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done is closed
}

func startChild(bin, dir string, out *lockedWriter, prefix string, env []string, args ...string) (*child, error) {
	c := &child{log: &prefixWriter{out: out, prefix: prefix}, done: make(chan struct{})}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Dir = dir
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	setProcAttr(c.cmd)
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		c.err = c.cmd.Wait()
		c.log.flush()
		close(c.done)
	}()
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to timeout, then kills the process.
func (c *child) stop(timeout time.Duration) error {
	if c.exited() {
		return nil
	}
	_ = terminate(c.cmd.Process)
	select {
	case <-c.done:
		if c.err != nil {
			return fmt.Errorf("opsbot stopped with %v", c.err)
		}
		return nil
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("opsbot did not stop within %s of SIGTERM; killed it", timeout)
	}
}

func (c *child) tail() string { return c.log.tail() }

// lockedWriter serialises writes to the terminal from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) printf(format string, args ...any) { fmt.Fprintf(l, format, args...) }

// prefixWriter writes whole lines to out with a prefix, and keeps the last
// ones for error messages.
type prefixWriter struct {
	out    io.Writer
	prefix string

	mu      sync.Mutex
	partial []byte
	last    []string
}

const tailLines = 40

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		p.emitLocked(string(p.partial[:i]))
		p.partial = p.partial[i+1:]
	}
	return len(b), nil
}

func (p *prefixWriter) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.partial) > 0 {
		p.emitLocked(string(p.partial))
		p.partial = nil
	}
}

func (p *prefixWriter) emitLocked(line string) {
	line = strings.TrimRight(line, "\r")
	fmt.Fprintf(p.out, "%s%s\n", p.prefix, line)
	p.last = append(p.last, line)
	if len(p.last) > tailLines {
		p.last = p.last[len(p.last)-tailLines:]
	}
}

func (p *prefixWriter) tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.last) == 0 {
		return "  (no output)"
	}
	return "  " + strings.Join(p.last, "\n  ")
}
