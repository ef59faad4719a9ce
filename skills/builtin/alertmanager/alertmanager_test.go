package alertmanager_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/alertmanager"
	"github.com/opsbot/opsbot/skills/skilltest"
)

const token = "alert-token-0123456789"

// server runs the skill's webhook over HTTP, as opsbot does.
func server(t *testing.T, cfg string) (*skilltest.Harness, func(body string, hdr map[string]string) int) {
	t.Helper()
	h := skilltest.New(t, []skills.Skill{alertmanager.New()}, map[string]string{"alertmanager": cfg})
	srv := httptest.NewServer(h.Engine.WebhookHandler(func() bool { return true }))
	t.Cleanup(srv.Close)
	post := func(body string, hdr map[string]string) int {
		return skilltest.Post(t, srv.URL+"/skills/alertmanager/alerts", body, hdr)
	}
	return h, post
}

var auth = map[string]string{"Authorization": "Bearer " + token}

func alert(status, instance string, annotations map[string]string) map[string]any {
	return map[string]any{"status": status, "labels": map[string]string{"alertname": "HighLatency", "severity": "critical", "job": "api", "instance": instance},
		"annotations": annotations, "startsAt": "2026-05-01T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
		"generatorURL": "http://prometheus:9090/graph?g0.expr=up", "fingerprint": "f-" + instance}
}

func notification(status string, alerts ...map[string]any) string {
	common := map[string]string{"alertname": "HighLatency", "severity": "critical", "job": "api"}
	if len(alerts) == 1 {
		common["instance"] = alerts[0]["labels"].(map[string]string)["instance"]
	}
	data, _ := json.Marshal(map[string]any{
		"version": "4", "groupKey": `{}:{alertname="HighLatency"}`, "truncatedAlerts": 0, "status": status, "receiver": "matrix",
		"groupLabels": map[string]string{"alertname": "HighLatency"}, "commonLabels": common,
		"commonAnnotations": map[string]string{"summary": "p99 latency above 500 ms"},
		"externalURL":       "http://alertmanager:9093", "alerts": alerts,
	})
	return string(data)
}

func TestFiringThenResolvedEdits(t *testing.T) {
	h, post := server(t, "rooms: ['!ops:example.org', '!oncall:example.org']\ntoken: "+token)
	firing := notification("firing", alert("firing", "api-1", map[string]string{"summary": "p99 latency above 500 ms"}))
	if code := post(firing, auth); code != 200 {
		t.Fatalf("firing: HTTP %d", code)
	}
	a := h.Sender.Actions
	if len(a) != 2 || a[0].Room != "!ops:example.org" || a[1].Room != "!oncall:example.org" {
		t.Fatalf("posted %+v", a)
	}
	want := "🔥 FIRING: HighLatency (critical), 1 alert\np99 latency above 500 ms\nAlertmanager: http://alertmanager:9093"
	if a[0].Body() != want {
		t.Fatalf("plain:\n%s\nwant\n%s", a[0].Body(), want)
	}
	wantHTML := `<p>🔥 <strong>FIRING: HighLatency</strong> (severity <code>critical</code>), 1 alert</p><p>p99 latency above 500 ms</p><p><a href="http://alertmanager:9093">Alertmanager</a></p>`
	if a[0].Content["formatted_body"] != wantHTML || a[0].Content["msgtype"] != "m.notice" {
		t.Fatalf("html: %v", a[0].Content)
	}
	// The same notification again (repeat_interval) changes nothing.
	if code := post(firing, auth); code != 200 || len(h.Sender.Actions) != 2 {
		t.Fatalf("repeat: HTTP %d, %d actions", code, len(h.Sender.Actions))
	}
	// Resolved: the firing message of each room is edited.
	resolved := notification("resolved", alert("resolved", "api-1", map[string]string{"summary": "p99 latency above 500 ms"}))
	if code := post(resolved, auth); code != 200 {
		t.Fatalf("resolved: HTTP %d", code)
	}
	a = h.Sender.Actions
	if len(a) != 4 {
		t.Fatalf("actions %d", len(a))
	}
	for i, e := range a[2:] {
		rel, _ := e.Content["m.relates_to"].(map[string]any)
		nc, _ := e.Content["m.new_content"].(map[string]any)
		if rel["rel_type"] != "m.replace" || rel["event_id"] != string("$sent"+string(rune('1'+i))) || e.Room != a[i].Room {
			t.Fatalf("edit %d: %+v", i, e)
		}
		if nc["body"] != "✅ RESOLVED: HighLatency (critical), 1 alert\np99 latency above 500 ms\nAlertmanager: http://alertmanager:9093" {
			t.Fatalf("edit %d says %v", i, nc["body"])
		}
	}
	// The group is forgotten: firing again posts a new message.
	if keys, _ := h.Memory.Memory("alertmanager", "").Keys(context.Background()); len(keys) != 0 {
		t.Fatalf("memory after resolution: %v", keys)
	}
	if code := post(strings.Replace(firing, "12:00:00Z", "13:00:00Z", 1), auth); code != 200 {
		t.Fatalf("firing again: HTTP %d", code)
	}
	if e := h.Sender.Actions[4]; e.Content["m.relates_to"] != nil || !strings.HasPrefix(e.Body(), "🔥 FIRING") {
		t.Fatalf("firing again: %+v", e)
	}
}

func TestGroupOfThree(t *testing.T) {
	h, post := server(t, "rooms: ['!ops:example.org']\ntoken: "+token+"\nresolved: thread")
	alerts := []map[string]any{
		alert("firing", "api-1", map[string]string{"summary": "p99 latency above 500 ms", "description": "p99 is 800 ms"}),
		alert("firing", "api-2", map[string]string{"summary": "p99 latency above 500 ms", "description": "p99 is <b>900</b> ms"}),
		alert("firing", "api-3", map[string]string{"summary": "p99 latency above 500 ms"}),
	}
	if code := post(notification("firing", alerts...), auth); code != 200 {
		t.Fatalf("HTTP %d", code)
	}
	want := "🔥 FIRING: HighLatency (critical), 3 alerts\np99 latency above 500 ms\n" +
		"🔥 instance=api-1: p99 is 800 ms\n🔥 instance=api-2: p99 is <b>900</b> ms\n🔥 instance=api-3\nAlertmanager: http://alertmanager:9093"
	first := h.Sender.Actions[0]
	if first.Body() != want {
		t.Fatalf("plain:\n%s\nwant\n%s", first.Body(), want)
	}
	html := first.Content["formatted_body"].(string)
	for _, part := range []string{"3 alerts</p>", "<li>🔥 <code>instance=api-2</code>: p99 is &lt;b&gt;900&lt;/b&gt; ms (<a href=\"http://prometheus:9090/graph?g0.expr=up\">source</a>)</li>"} {
		if !strings.Contains(html, part) {
			t.Fatalf("html lacks %q:\n%s", part, html)
		}
	}
	// One resolves: the message is updated in place.
	alerts[1] = alert("resolved", "api-2", map[string]string{"summary": "p99 latency above 500 ms"})
	post(notification("firing", alerts...), auth)
	upd := h.Sender.Actions[1]
	nc, _ := upd.Content["m.new_content"].(map[string]any)
	if body, _ := nc["body"].(string); !strings.Contains(body, "2 firing, 1 resolved") || !strings.Contains(body, "✅ instance=api-2") {
		t.Fatalf("update: %v", upd.Content)
	}
	// All resolve: with resolved: thread, the bot answers under its message.
	for i := range alerts {
		alerts[i]["status"] = "resolved"
	}
	post(notification("resolved", alerts...), auth)
	res := h.Sender.Actions[2]
	rel, _ := res.Content["m.relates_to"].(map[string]any)
	if rel["rel_type"] != "m.thread" || rel["event_id"] != "$sent1" || !strings.HasPrefix(res.Body(), "✅ RESOLVED: HighLatency (critical), 3 alerts") {
		t.Fatalf("resolution: %+v", res.Content)
	}
	if len(h.Sender.Actions) != 3 {
		t.Fatalf("%d actions", len(h.Sender.Actions))
	}
}

func TestManyAlertsAndNew(t *testing.T) {
	h, post := server(t, "rooms: ['!ops:example.org']\ntoken: "+token+"\nresolved: new\nmax_alerts: 2")
	var alerts []map[string]any
	for _, inst := range []string{"a", "b", "c", "d"} {
		alerts = append(alerts, alert("firing", inst, nil))
	}
	post(notification("firing", alerts...), auth)
	if body := h.Sender.Actions[0].Body(); !strings.Contains(body, "4 alerts") || !strings.Contains(body, "🔥 instance=b\n… and 2 more") {
		t.Fatalf("body %q", body)
	}
	for i := range alerts {
		alerts[i]["status"] = "resolved"
	}
	post(notification("resolved", alerts...), auth)
	if res := h.Sender.Actions[1]; res.Content["m.relates_to"] != nil || !strings.HasPrefix(res.Body(), "✅ RESOLVED") {
		t.Fatalf("resolution: %+v", res.Content)
	}
}

func TestBadRequests(t *testing.T) {
	h, post := server(t, "rooms: ['!ops:example.org']\ntoken: "+token)
	good := notification("firing", alert("firing", "api-1", nil))
	for name, c := range map[string]struct {
		body string
		hdr  map[string]string
		want int
	}{
		"no token":      {good, nil, 401},
		"wrong token":   {good, map[string]string{"Authorization": "Bearer wrong-token-0123456789"}, 401},
		"not JSON":      {"{alerts", auth, 500},
		"array":         {"[]", auth, 500},
		"empty":         {"", auth, 500},
		"wrong version": {strings.Replace(good, `"version":"4"`, `"version":"3"`, 1), auth, 500},
		"no groupKey":   {strings.Replace(good, `"groupKey"`, `"group"`, 1), auth, 500},
		"bad status":    {strings.Replace(good, `"status":"firing","truncatedAlerts"`, `"status":"burning","truncatedAlerts"`, 1), auth, 500},
		"no alerts":     {`{"version":"4","groupKey":"k","status":"firing","alerts":[]}`, auth, 500},
		"alert status":  {`{"version":"4","groupKey":"k","status":"firing","alerts":[{"status":"x"}]}`, auth, 500},
		"wrong types":   {`{"version":"4","groupKey":"k","status":"firing","alerts":[{"status":"firing","labels":[1]}]}`, auth, 500},
		"bad time":      {`{"version":"4","groupKey":"k","status":"firing","alerts":[{"status":"firing","startsAt":"yesterday"}]}`, auth, 500},
	} {
		if code := post(c.body, c.hdr); code != c.want {
			t.Errorf("%s: HTTP %d, want %d", name, code, c.want)
		}
	}
	if n := len(h.Sender.Actions); n != 0 {
		t.Fatalf("bad requests posted %d messages", n)
	}
	// A minimal valid notification, with labels and annotations missing.
	if code := post(`{"version":"4","groupKey":"k","status":"firing","alerts":[{"status":"firing"}]}`, auth); code != 200 {
		t.Fatalf("minimal: HTTP %d", code)
	}
	if body := h.Sender.Actions[0].Body(); body != "🔥 FIRING: Alerts, 1 alert\n🔥 Alerts" {
		t.Fatalf("minimal: %q", body)
	}
}

func TestHMAC(t *testing.T) {
	secret := "hmac-secret-0123456789"
	h, post := server(t, "rooms: ['!ops:example.org']\nhmac_secret: "+secret+"\nhmac_header: X-Signature")
	body := notification("firing", alert("firing", "api-1", nil))
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	sig := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	if code := post(body, map[string]string{"X-Signature": "sha256=00"}); code != 401 {
		t.Fatalf("bad signature: HTTP %d", code)
	}
	if code := post(body, map[string]string{"X-Signature": sig}); code != 200 || len(h.Sender.Actions) != 1 {
		t.Fatalf("signed: HTTP %d, %d actions", code, len(h.Sender.Actions))
	}
}

// flaky fails its first send into !broken.
type flaky struct {
	*skilltest.Sender
	failed bool
}

func (f *flaky) Send(ctx context.Context, bot id.UserID, room id.RoomID, t event.Type, content any, txnID string) (id.EventID, error) {
	if room == "!broken:example.org" && !f.failed {
		f.failed = true
		return "", errors.New("M_FORBIDDEN")
	}
	return f.Sender.Send(ctx, bot, room, t, content, txnID)
}

// A notification retried after failing in one room posts there, and does
// not post again in the others.
func TestRetryAfterPartialFailure(t *testing.T) {
	var node yaml.Node
	if err := yaml.Unmarshal([]byte("rooms: ['!ops:example.org', '!broken:example.org']\ntoken: "+token), &node); err != nil {
		t.Fatal(err)
	}
	f := &flaky{Sender: &skilltest.Sender{}}
	e, err := skills.NewEngine(skills.Options{Sender: f, Memory: skilltest.NewMemory(), Log: zerolog.Nop()},
		[]skills.Skill{alertmanager.New()}, map[string]yaml.Node{"alertmanager": *node.Content[0]},
		[]skills.BotSpec{{ID: skilltest.Bot, Prefix: "!", Skills: []string{"alertmanager"}, ConfigKey: "bots[0]"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e.WebhookHandler(nil))
	defer srv.Close()
	body := notification("firing", alert("firing", "api-1", nil))
	post := func() int {
		req, _ := http.NewRequest("POST", srv.URL+"/skills/alertmanager/alerts", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(); code != 500 {
		t.Fatalf("first try: HTTP %d, want 500 so that Alertmanager retries", code)
	}
	if code := post(); code != 200 {
		t.Fatalf("retry: HTTP %d", code)
	}
	a := f.Actions
	if len(a) != 2 || a[0].Room != "!ops:example.org" || a[1].Room != "!broken:example.org" || a[0].TxnID == a[1].TxnID {
		t.Fatalf("actions %+v", a)
	}
}

func TestRenderEscapes(t *testing.T) {
	p, err := alertmanager.Parse([]byte(`{"version":"4","groupKey":"k","status":"firing","externalURL":"javascript:alert(1)",
		"commonLabels":{"alertname":"<script>","severity":"x&y"},"commonAnnotations":{"summary":"a <i>b</i>"},
		"alerts":[{"status":"firing","generatorURL":"javascript:x"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	plain, html := alertmanager.Render(p, 10)
	if strings.Contains(html, "<script>") || strings.Contains(html, "<i>") || strings.Contains(html, "javascript:") || strings.Contains(plain, "javascript:") {
		t.Fatalf("not escaped:\n%s\n%s", plain, html)
	}
	if !bytes.Contains([]byte(html), []byte("&lt;script&gt;")) {
		t.Fatalf("html %s", html)
	}
}

func TestBadSettings(t *testing.T) {
	for cfg, want := range map[string]string{
		"token: " + token: "skills.alertmanager.rooms: required",
		"rooms: ['#ops:example.org']\ntoken: " + token: `skills.alertmanager.rooms[0]: "#ops:example.org" is not a room ID`,
		"rooms: ['!a:x', '!a:x']\ntoken: " + token:     "skills.alertmanager.rooms[1]: !a:x is listed twice",
		"rooms: ['!a:x']":                                         "skills.alertmanager.token: set token and/or hmac_secret",
		"rooms: ['!a:x']\ntoken: short":                           "skills.alertmanager.token: must be at least 16 characters",
		"rooms: ['!a:x']\nhmac_secret: short":                     "skills.alertmanager.hmac_secret: must be at least 16 characters",
		"rooms: ['!a:x']\ntoken: " + token + "\nresolved: delete": `skills.alertmanager.resolved: "delete" must be edit, thread or new`,
		"rooms: ['!a:x']\ntoken: " + token + "\nmax_alerts: 0":    "skills.alertmanager.max_alerts: must be from 1 to 100",
		"rooms: ['!a:x']\ntoken: " + token + "\nhmac_header: ''":  "skills.alertmanager.hmac_header: must not be empty",
		"rooms: ['!a:x']\ntoken: " + token + "\nroom: '!b:x'":     "skills.alertmanager.room: unknown key",
		"rooms: '!a:x'\ntoken: " + token:                          "skills.alertmanager.rooms",
	} {
		if _, err := skilltest.Setup([]skills.Skill{alertmanager.New()}, map[string]string{"alertmanager": cfg}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: want error %q, got %v", cfg, want, err)
		}
	}
	// Without a section at all: rooms are required.
	if _, err := skilltest.Setup([]skills.Skill{alertmanager.New()}, nil); err == nil || !strings.Contains(err.Error(), "skills.alertmanager.rooms: required") {
		t.Errorf("no section: %v", err)
	}
	// The token may come from the environment.
	t.Setenv(alertmanager.EnvToken, token)
	if _, err := skilltest.Setup([]skills.Skill{alertmanager.New()}, map[string]string{"alertmanager": "rooms: ['!a:x']"}); err != nil {
		t.Errorf("token from the environment: %v", err)
	}
}
