package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

// TestPrometheus runs a real Prometheus (Debian's package) that scrapes a
// running opsbot every second and evaluates the alert rules of
// deploy/prometheus/, during a short scenario with plaintext, encrypted
// and poll traffic and some rejected transactions. Then every query of the
// Grafana dashboard must return series, every rule must evaluate, the only
// alert on its way must be the one the scenario provoked, and `promtool
// check metrics` must find nothing wrong with /metrics.
func TestPrometheus(t *testing.T) {
	promBin, promtoolBin := promBinary(t, "prometheus"), promBinary(t, "promtool")
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	rulesFile := filepath.Join(root, "deploy", "prometheus", "opsbot-alerts.yaml")

	// Two bots, cross-signed through Dendrite's admin API, with key backup:
	// every series the alerts read exists.
	w := newWorld(t, "sqlite", e2eeBots, trustConfig(""))
	w.Bot.WaitForLog(t, wait, "Bot identity is cross-signed", `"bot":"`+echobotID+`"`)
	metricsAddr := strings.TrimSuffix(strings.TrimPrefix(w.Bot.MetricsURL, "http://"), "/metrics")
	prom := startPrometheus(t, promBin, metricsAddr, rulesFile)
	// Prometheus scrapes its targets a few seconds after it starts. It must
	// see opsbot before the scenario, as it would in production: a counter
	// it first sees at 5 shows no increase.
	prom.waitFor(t, `count_over_time(up{job="opsbot"}[1m])`, func(v float64) bool { return v >= 2 }, "opsbot scraped")

	// Plaintext.
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)
	if m := ask(t, alice, room, "!ping", botID); m.Body() != "pong" {
		t.Fatalf("!ping: %s", m)
	}
	// A poll as Element sends it (MSC3381's unstable type).
	alice.SendEvent(t, room, "org.matrix.msc3381.poll.start", map[string]any{
		"org.matrix.msc1767.text": "Lunch?\n1. Pizza\n2. Soup",
		"org.matrix.msc3381.poll.start": map[string]any{
			"kind": "org.matrix.msc3381.poll.disclosed", "max_selections": 1,
			"question": map[string]any{"org.matrix.msc1767.text": "Lunch?"},
			"answers": []any{
				map[string]any{"id": "pizza", "org.matrix.msc1767.text": "Pizza"},
				map[string]any{"id": "soup", "org.matrix.msc1767.text": "Soup"},
			},
		},
	})
	// Encrypted, with matrix-nio, in a room of each bot (decryptions count
	// under the room's first bot).
	bob := w.HS.RegisterUser(t, "bob")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, bob.ID, bob.Password, "BOBNIO")
	encrypted := nio.CreateRoom(true, botID)
	echoRoom := nio.CreateRoom(true, echobotID)
	botJoined(t, bob, encrypted, botID)
	botJoined(t, bob, echoRoom, echobotID)
	nio.Send(encrypted, "!echo secret")
	if m := nio.WaitMessage(encrypted, botID, wait); m.Body != "secret" || !m.Encrypted {
		t.Fatalf("encrypted !echo: %+v", m)
	}
	nio.Send(echoRoom, "?echo also secret")
	if m := nio.WaitMessage(echoRoom, echobotID, wait); m.Body != "also secret" || !m.Encrypted {
		t.Fatalf("encrypted ?echo: %+v", m)
	}
	// Someone guessing the hs_token.
	for i := range 5 {
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/_matrix/app/v1/transactions/guess-%d", w.Bot.URL, i), strings.NewReader(`{"events":[]}`))
		req.Header.Set("Authorization", "Bearer not-the-hs-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("a transaction with a wrong token: HTTP %d, want 403", resp.StatusCode)
		}
	}

	// What Prometheus scraped.
	prom.waitFor(t, `opsbot_events_total{job="opsbot", type="m.poll.start"}`, func(v float64) bool { return v >= 1 },
		"the poll counted as m.poll.start (not other)")
	prom.waitFor(t, `opsbot_transactions_total{job="opsbot", outcome="forbidden"}`, func(v float64) bool { return v == 5 },
		"the 5 forbidden transactions")
	prom.waitFor(t, `sum(opsbot_decryptions_total{job="opsbot", bot="`+botID+`", outcome=~"ok|late_key"})`, func(v float64) bool { return v >= 1 },
		"decryptions by "+botID)
	prom.waitFor(t, `sum(opsbot_decryptions_total{job="opsbot", bot="`+echobotID+`", outcome=~"ok|late_key"})`, func(v float64) bool { return v >= 1 },
		"decryptions by "+echobotID)
	prom.waitFor(t, `opsbot_key_backup_uploaded_total{job="opsbot", bot="`+botID+`"}`, func(v float64) bool { return v >= 1 },
		"room keys backed up")
	prom.waitFor(t, `opsbot_ready{job="opsbot"} * opsbot_leader{job="opsbot"}`, func(v float64) bool { return v == 1 },
		"the leader ready")

	t.Run("dashboard", func(t *testing.T) {
		checkDashboard(t, prom, filepath.Join(root, "deploy", "grafana", "opsbot-dashboard.json"))
	})
	t.Run("rules", func(t *testing.T) { checkRules(t, prom, rulesFile) })
	t.Run("alerts", func(t *testing.T) {
		// The forbidden transactions above make OpsbotTransactionsRejected
		// pending (it fires after 5 minutes); nothing else may be on its
		// way on a healthy opsbot.
		deadline := time.Now().Add(wait)
		for {
			alerts := prom.alerts(t)
			var got []string
			for _, a := range alerts {
				got = append(got, fmt.Sprintf("%s{outcome=%q} %s", a.Labels["alertname"], a.Labels["outcome"], a.State))
			}
			want := []string{`OpsbotTransactionsRejected{outcome="forbidden"} pending`}
			if slices.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("active alerts %q, want %q", got, want)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
	t.Run("promtool check metrics", func(t *testing.T) {
		resp, err := http.Get(w.Bot.MetricsURL)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(promtoolBin, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics on opsbot's /metrics: %v\n%s", err, out)
		}
	})
}

// promBinary finds a program of Debian's prometheus package. Missing, the
// test fails: .ci/run installs it.
func promBinary(t *testing.T, name string) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/" + name); err == nil {
		return "/usr/bin/" + name
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install Debian's prometheus package (apt-get install prometheus), as .ci/run does", name)
	}
	return p
}

type promServer struct {
	url string
	log *harness.LockedBuffer
}

// startPrometheus runs Prometheus on a free loopback port with its storage
// in a temporary directory, scraping target as the job "opsbot" every
// second and evaluating rules every second.
func startPrometheus(t *testing.T, bin, target, rules string) *promServer {
	t.Helper()
	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: opsbot
    static_configs:
      - targets: [%q]
`, rules, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	p := &promServer{url: fmt.Sprintf("http://127.0.0.1:%d", port), log: &harness.LockedBuffer{}}
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port), "--log.level=warn")
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", p.log.String())
		}
	})
	deadline := time.Now().Add(wait)
	for {
		select {
		case <-done:
			t.Fatalf("prometheus exited at start:\n%s", p.log.String())
		default:
		}
		if resp, err := http.Get(p.url + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after %v:\n%s", wait, p.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// api GETs a Prometheus HTTP API path and decodes its data; an API error
// (a bad query) is returned as an error.
func (p *promServer) api(path string, params url.Values, data any) error {
	resp, err := http.Get(p.url + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s: HTTP %d: %v", path, resp.StatusCode, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: %s: %s", path, body.ErrorType, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s promSample) value() float64 {
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

// query runs an instant query and returns its series (it must give a
// vector).
func (p *promServer) query(q string) ([]promSample, error) {
	var data struct {
		ResultType string       `json:"resultType"`
		Result     []promSample `json:"result"`
	}
	if err := p.api("/api/v1/query", url.Values{"query": {q}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", data.ResultType)
	}
	return data.Result, nil
}

// waitFor waits until q returns one series whose value satisfies ok.
func (p *promServer) waitFor(t *testing.T, q string, ok func(float64) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		res, err := p.query(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if len(res) == 1 && ok(res[0].value()) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: Prometheus has %v for %s after %v", what, res, q, wait)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (p *promServer) alerts(t *testing.T) []promAlert {
	t.Helper()
	var data struct {
		Alerts []promAlert `json:"alerts"`
	}
	if err := p.api("/api/v1/alerts", nil, &data); err != nil {
		t.Fatal(err)
	}
	return data.Alerts
}

// checkDashboard runs every query of the Grafana dashboard as Grafana
// would (the job variable set to the scrape job): each must be valid and
// return series.
func checkDashboard(t *testing.T, p *promServer, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	// The job variable: label_values(opsbot_build_info, job).
	for _, v := range dash.Templating.List {
		q, _ := v.Query.(map[string]any)
		text, _ := q["query"].(string)
		m := regexp.MustCompile(`^label_values\((.+), (\w+)\)$`).FindStringSubmatch(text)
		if v.Name != "job" {
			continue
		}
		if m == nil {
			t.Fatalf("variable job: query %q is not label_values(series, label)", text)
		}
		var values []string
		if err := p.api("/api/v1/label/"+m[2]+"/values", url.Values{"match[]": {m[1]}}, &values); err != nil {
			t.Fatalf("variable job: %v", err)
		}
		if !slices.Contains(values, "opsbot") {
			t.Errorf("variable job offers %v, want the scrape job opsbot", values)
		}
	}
	// $__rate_interval is at least four scrape intervals; a minute covers
	// the scenario.
	vars := strings.NewReplacer("$job", "opsbot", "${job}", "opsbot", "$__rate_interval", "1m", "${__rate_interval}", "1m")
	n := 0
	for _, panel := range dash.Panels {
		for _, target := range panel.Targets {
			n++
			q := vars.Replace(target.Expr)
			res, err := p.query(q)
			switch {
			case err != nil:
				t.Errorf("panel %q: %s: %v", panel.Title, q, err)
			case len(res) == 0:
				t.Errorf("panel %q: %s returns no series from a running opsbot", panel.Title, q)
			}
		}
	}
	if n < 15 {
		t.Errorf("only %d dashboard queries", n)
	}
}

// checkRules checks the alert rules as Prometheus evaluates them: all of
// the file's alerts loaded, each evaluated without error, and each
// expression (and each of its opsbot selectors, which would otherwise
// silently match nothing) valid and matching real series.
func checkRules(t *testing.T, p *promServer, rulesFile string) {
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert: (\w+)\s*$`).FindAllStringSubmatch(string(data), -1) {
		names = append(names, m[1])
	}
	if len(names) == 0 {
		t.Fatalf("no alerts in %s", rulesFile)
	}
	type ruleState struct {
		Name           string `json:"name"`
		Query          string `json:"query"`
		Health         string `json:"health"`
		LastError      string `json:"lastError"`
		LastEvaluation string `json:"lastEvaluation"`
	}
	var rules []ruleState
	deadline := time.Now().Add(wait)
	for {
		var res struct {
			Groups []struct {
				Rules []ruleState `json:"rules"`
			} `json:"groups"`
		}
		if err := p.api("/api/v1/rules", url.Values{"type": {"alert"}}, &res); err != nil {
			t.Fatal(err)
		}
		rules = nil
		evaluated := true
		for _, g := range res.Groups {
			for _, r := range g.Rules {
				rules = append(rules, r)
				evaluated = evaluated && r.Health != "unknown" && !strings.HasPrefix(r.LastEvaluation, "0001-")
			}
		}
		if evaluated && len(rules) == len(names) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus has %d of the %d alerts of %s, evaluated: %v", len(rules), len(names), rulesFile, evaluated)
		}
		time.Sleep(250 * time.Millisecond)
	}
	selector := regexp.MustCompile(`\b(?:opsbot_[a-z0-9_]+|up)(?:\{[^}]*\})?`)
	for _, r := range rules {
		if r.Health != "ok" || r.LastError != "" {
			t.Errorf("alert %s: health %s: %s", r.Name, r.Health, r.LastError)
		}
		if _, err := p.query(r.Query); err != nil {
			t.Errorf("alert %s: %s: %v", r.Name, r.Query, err)
		}
		for _, sel := range selector.FindAllString(r.Query, -1) {
			res, err := p.query("group(" + sel + ")")
			if err != nil {
				t.Errorf("alert %s: %s: %v", r.Name, sel, err)
			} else if len(res) == 0 {
				t.Errorf("alert %s reads %s, which matches no series of a running opsbot", r.Name, sel)
			}
		}
	}
	for _, name := range names {
		if !slices.ContainsFunc(rules, func(r ruleState) bool { return r.Name == name }) {
			t.Errorf("alert %s of %s is not loaded", name, rulesFile)
		}
	}
}
