package integration

import (
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store/storetest"
	"github.com/opsbot/opsbot/integration/harness"
)

// tlsFront plays the https web server of a domain: it listens on
// 127.0.0.1:<port> with httptest's certificate and proxies everything to a
// homeserver set once that has started. The domain 127.0.0.1:<port> is
// Dendrite's server name, so that https://<domain>/.well-known/matrix/client
// reaches Dendrite.
type tlsFront struct {
	srv    *httptest.Server
	target atomic.Pointer[url.URL]
	// Domain is 127.0.0.1:<port>; URL is https://Domain.
	Domain, URL string
	// CAFile holds the server's certificate as PEM, for SSL_CERT_FILE.
	CAFile string
}

func newTLSFront(t *testing.T) *tlsFront {
	t.Helper()
	f := &tlsFront{}
	proxy := &httputil.ReverseProxy{
		Rewrite:  func(r *httputil.ProxyRequest) { r.SetURL(f.target.Load()) },
		ErrorLog: log.New(io.Discard, "", 0),
	}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.target.Load() == nil {
			http.Error(w, "no homeserver behind the front yet", http.StatusBadGateway)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	t.Cleanup(f.srv.Close)
	f.URL = f.srv.URL
	f.Domain = strings.TrimPrefix(f.srv.URL, "https://")
	f.CAFile = filepath.Join(t.TempDir(), "ca.pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	if err := os.WriteFile(f.CAFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// Proxy sends the front's requests to the homeserver at rawURL.
func (f *tlsFront) Proxy(t *testing.T, rawURL string) {
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	f.target.Store(u)
}

// wellKnownWorld is Dendrite named after a TLS front, and an opsbot whose
// config has no homeserver.address, not yet started. baseURL chooses
// global.well_known_client_name from the front's URL and Dendrite's plain
// URL; nil leaves it unset (no .well-known: 404).
func wellKnownWorld(t *testing.T, baseURL func(front, plain string) string) (*tlsFront, *harness.Homeserver, *Opsbot) {
	t.Helper()
	bin := opsbotBinary(t)
	front := newTLSFront(t)
	dir := t.TempDir()
	port, metricsPort, hsPort := freePort(t), freePort(t), freePort(t)
	db := storetest.Config(t, "sqlite")
	text := fmt.Sprintf(`homeserver:
  domain: %q
appservice:
  id: opsbot
  listen: 127.0.0.1:%d
  as_token: %s
  hs_token: %s
database:
  type: sqlite
  uri: %q
bots:%s
encryption:
  enabled: true
  pickle_key: %s
metrics:
  listen: 127.0.0.1:%d
logging:
  level: debug
  format: json
`, front.Domain, port, config.RandomToken(), config.RandomToken(), db.URI, defaultBots, config.RandomToken(), metricsPort)
	cfgPath := filepath.Join(dir, "opsbot.yaml")
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatalf("a config without homeserver.address: %v", err)
	}
	out, err := exec.Command(bin, "-c", cfgPath, "generate-registration").Output()
	if err != nil {
		t.Fatalf("generate-registration: %v", err)
	}
	regPath := filepath.Join(dir, "registration.yaml")
	if err := os.WriteFile(regPath, out, 0o600); err != nil {
		t.Fatal(err)
	}
	hs := harness.Start(t, harness.Options{
		ServerName:              front.Domain,
		Port:                    hsPort,
		AppServiceRegistrations: []string{regPath},
		Config: func(c map[string]any) {
			if baseURL != nil {
				c["global"].(map[string]any)["well_known_client_name"] = baseURL(front.URL, fmt.Sprintf("http://127.0.0.1:%d", hsPort))
			}
		},
	})
	front.Proxy(t, hs.URL)
	// opsbot (and its check) must trust the front's certificate; Go on
	// Linux reads extra roots from SSL_CERT_FILE. The processes inherit it.
	t.Setenv("SSL_CERT_FILE", front.CAFile)
	return front, hs, newOpsbot(t, dir, cfgPath, cfg, port, metricsPort)
}

func TestWellKnown(t *testing.T) {
	for _, tc := range []struct {
		name string
		base func(front, plain string) string
	}{
		{"https base_url through the front", func(front, _ string) string { return front }},
		{"plain http base_url", func(_, plain string) string { return plain + "/" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			front, hs, bot := wellKnownWorld(t, tc.base)
			base := strings.TrimSuffix(tc.base(front.URL, hs.URL), "/")
			wk := "https://" + front.Domain + "/.well-known/matrix/client"
			bot.Start()
			bot.WaitForLog(t, 5*time.Second, `"message":"Discovered the homeserver through .well-known"`,
				`"domain":"`+front.Domain+`"`, `"well_known":"`+wk+`"`, `"base_url":"`+base+`"`)

			alice := hs.RegisterUser(t, "alice")
			botUser := hs.UserID("opsbot")
			room := joinedRoom(t, alice, botUser)
			if pong := ask(t, alice, room, "!ping", botUser); pong.Body() != "pong" {
				t.Fatalf("!ping answered %s", pong)
			}

			out, err := bot.Run("check")
			if err != nil {
				t.Errorf("check failed: %v\n%s", err, out)
			}
			want := "homeserver  ok   " + base + " (from " + wk + ") answers, spec versions "
			if !strings.Contains(out, want) || !strings.Contains(out, "as_token    ok") {
				t.Errorf("check output lacks %q or as_token ok:\n%s", want, out)
			}
		})
	}
}

func TestWellKnownMissing(t *testing.T) {
	front, _, bot := wellKnownWorld(t, nil)
	wk := "https://" + front.Domain + "/.well-known/matrix/client"

	out, err := bot.Run("check")
	if err == nil {
		t.Errorf("check passed without a .well-known:\n%s", out)
	}
	for _, want := range []string{
		"homeserver  FAIL homeserver.address is not set and it could not be discovered: no .well-known document: GET " + wk + " answered 404 Not Found",
		`set homeserver.address, or serve {"m.homeserver":{"base_url":`,
		"} at " + wk,
		"as_token    skip",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}

	// Running, opsbot keeps looking (the homeserver may come later), says
	// why, and stops cleanly when told to.
	logBuf := &harness.LockedBuffer{}
	cmd := exec.Command(opsbotBinary(t), "-c", bot.CfgPath)
	cmd.Stdout, cmd.Stderr = logBuf, logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	logged := logBuf.String
	deadline := time.Now().Add(wait)
	for !strings.Contains(logged(), "Homeserver not found through .well-known yet") {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("no warning about the missing .well-known:\n%s", logged())
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("opsbot exited with %v after SIGTERM", err)
		}
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("opsbot ignored SIGTERM while looking for its homeserver")
	}
	text := logged()
	for _, want := range []string{`"level":"warn"`, "no .well-known document: GET " + wk, "Stopped before the homeserver was found"} {
		if !strings.Contains(text, want) {
			t.Errorf("opsbot log lacks %q:\n%s", want, text)
		}
	}
}
