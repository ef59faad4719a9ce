package integration

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/skills/skilltest"
)

const (
	skillsBots = `
  - localpart: opsbot
    displayname: Ops Bot
    skills: [ping, help, echo, remind, alertmanager, webhook]
`
	// placeholderRoom stands for the test room in the config until the
	// room exists; the test then rewrites the config and restarts opsbot.
	placeholderRoom = "!placeholder:localhost"
	alertToken      = "alertmanager-token-0123456789"
	hookSecret      = "github-hook-secret-0123456789"
	carelessToken   = "careless-hook-token-0123456789"
)

const skillsExtra = `skills:
  alertmanager:
    rooms: ["` + placeholderRoom + `"]
    token: ` + alertToken + `
    resolved: edit
  webhook:
    hooks:
      - name: github
        room: "` + placeholderRoom + `"
        hmac_secret: ` + hookSecret + `
        template: '{{header "X-GitHub-Event"}}: {{.pusher.name}} pushed {{len .commits}} commit(s) to {{.repository.full_name}}'
        html_template: '<b>{{.pusher.name}}</b> pushed to <code>{{.repository.full_name}}</code>'
      - name: careless
        room: "` + placeholderRoom + `"
        token: ` + carelessToken + `
        template: '@room {{.who}} did it'
        html_template: '<img src="https://tracker.example/p.png" alt="{{.who}}" onerror="alert(1)"><a href="{{.url}}" onclick="x()">view</a><style>*{display:none}</style>'
`

// The built-in skills remind, alertmanager and webhook against Dendrite.
func TestSkills(t *testing.T) {
	w := newWorldWith(t, worldOptions{DB: "sqlite", Bots: skillsBots, Extra: skillsExtra})
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)

	// Point the webhook skills at the room, now that it exists.
	data, err := os.ReadFile(w.Bot.CfgPath)
	if err != nil {
		t.Fatal(err)
	}
	w.Bot.Stop()
	if err := os.WriteFile(w.Bot.CfgPath, []byte(strings.ReplaceAll(string(data), placeholderRoom, room)), 0o600); err != nil {
		t.Fatal(err)
	}
	w.Bot.Start()

	t.Run("remind", func(t *testing.T) { testRemind(t, w, alice, room) })
	t.Run("alertmanager", func(t *testing.T) { testAlertmanager(t, w, alice, room) })
	t.Run("webhook", func(t *testing.T) { testWebhookSkill(t, w, alice, room) })
}

func testRemind(t *testing.T, w *world, alice *harness.User, room string) {
	set := time.Now()
	if ev := ask(t, alice, room, "!remind 2s test reminder", botID); !strings.HasPrefix(ev.Body(), "⏰ I will remind you in 2s, at ") {
		t.Fatalf("!remind answered %s", ev)
	}
	rem := alice.WaitForMessage(t, room, 15*time.Second, harness.From(botID))
	if rem.Body() != "⏰ @alice:localhost: test reminder" || rem.MsgType() != "m.notice" {
		t.Fatalf("reminder: %s", rem)
	}
	if html, _ := rem.Content["formatted_body"].(string); !strings.Contains(html, `<a href="https://matrix.to/#/@alice:localhost">`) {
		t.Errorf("reminder does not mention alice: %v", rem.Content)
	}
	if took := time.Since(set); took > 12*time.Second {
		t.Errorf("reminder took %v", took)
	}

	// list and cancel.
	if ev := ask(t, alice, room, "!remind 1h later thing", botID); !strings.HasPrefix(ev.Body(), "⏰ I will remind you in 1h, at ") {
		t.Fatalf("!remind answered %s", ev)
	}
	ask(t, alice, room, "!remind 2026-13-01 09:00 bad date", botID) // the usage line
	if ev := ask(t, alice, room, "!remind list", botID); !strings.HasPrefix(ev.Body(), "1. ") || !strings.Contains(ev.Body(), " UTC (in ") ||
		!strings.HasSuffix(ev.Body(), "for @alice:localhost: later thing") {
		t.Fatalf("!remind list answered %s", ev)
	}
	if ev := ask(t, alice, room, "!remind cancel 1", botID); !strings.HasPrefix(ev.Body(), "Cancelled reminder 1 (") {
		t.Fatalf("!remind cancel answered %s", ev)
	}
	if ev := ask(t, alice, room, "!remind list", botID); ev.Body() != "No reminders pending in this room." {
		t.Fatalf("!remind list answered %s", ev)
	}

	// A reminder that falls due while opsbot is down is delivered when it
	// is back.
	if ev := ask(t, alice, room, "!remind 5s survive the restart", botID); !strings.HasPrefix(ev.Body(), "⏰ I will remind you in 5s") {
		t.Fatalf("!remind answered %s", ev)
	}
	due := time.Now().Add(5 * time.Second)
	w.Bot.Stop()
	time.Sleep(time.Until(due.Add(time.Second))) // waiting for time to pass
	restarted := time.Now()
	w.Bot.Start()
	rem = alice.WaitForMessage(t, room, 20*time.Second, harness.From(botID))
	if !strings.HasPrefix(rem.Body(), "⏰ @alice:localhost: survive the restart") {
		t.Fatalf("after the restart the bot said %s", rem)
	}
	if sent := time.UnixMilli(rem.OriginServerTS); sent.Before(restarted) {
		t.Fatalf("delivered at %v, before the restart at %v", sent, restarted)
	}
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("more messages than expected: %v", extra)
	}
}

func postWebhook(t *testing.T, url, body string, hdr map[string]string) int {
	t.Helper()
	headers := map[string]string{"Content-Type": "application/json"}
	for k, v := range hdr {
		headers[k] = v
	}
	return skilltest.Post(t, url, body, headers)
}

func alertGroup(status string) string {
	return `{"version":"4","groupKey":"{}:{alertname=\"DiskFull\"}","truncatedAlerts":0,"status":"` + status + `","receiver":"matrix",
"groupLabels":{"alertname":"DiskFull"},"commonLabels":{"alertname":"DiskFull","severity":"warning","job":"node"},
"commonAnnotations":{"summary":"Disk almost full"},"externalURL":"http://alertmanager.localhost:9093",
"alerts":[
 {"status":"` + status + `","labels":{"alertname":"DiskFull","severity":"warning","job":"node","instance":"db-1"},"annotations":{"description":"/var at 91%"},"startsAt":"2026-05-01T12:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus.localhost:9090/graph","fingerprint":"a1"},
 {"status":"` + status + `","labels":{"alertname":"DiskFull","severity":"warning","job":"node","instance":"db-2"},"annotations":{"description":"/var at 95%"},"startsAt":"2026-05-01T12:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus.localhost:9090/graph","fingerprint":"a2"}]}`
}

func testAlertmanager(t *testing.T, w *world, alice *harness.User, room string) {
	url := w.Bot.URL + "/skills/alertmanager/alerts"
	auth := map[string]string{"Authorization": "Bearer " + alertToken}
	if code := postWebhook(t, url, alertGroup("firing"), auth); code != 200 {
		t.Fatalf("firing: HTTP %d\n%s", code, w.Bot.LogTail(20))
	}
	firing := alice.WaitForMessage(t, room, wait, harness.From(botID))
	want := "🔥 FIRING: DiskFull (warning), 2 alerts\nDisk almost full\n🔥 instance=db-1: /var at 91%\n🔥 instance=db-2: /var at 95%\nAlertmanager: http://alertmanager.localhost:9093"
	if firing.Body() != want || firing.MsgType() != "m.notice" {
		t.Fatalf("firing message:\n%s\nwant\n%s", firing.Body(), want)
	}
	if html, _ := firing.Content["formatted_body"].(string); !strings.Contains(html, "<strong>FIRING: DiskFull</strong>") ||
		!strings.Contains(html, `<a href="http://alertmanager.localhost:9093">Alertmanager</a>`) {
		t.Fatalf("firing html: %v", firing.Content)
	}

	// A wrong token is refused, and nothing is posted.
	if code := postWebhook(t, url, alertGroup("firing"), map[string]string{"Authorization": "Bearer wrong-token-0123456789"}); code != 401 {
		t.Fatalf("wrong token: HTTP %d", code)
	}
	if code := postWebhook(t, url, alertGroup("resolved"), nil); code != 401 {
		t.Fatalf("no token: HTTP %d", code)
	}
	if code := postWebhook(t, url, `{"not":"alertmanager"}`, auth); code != 500 {
		t.Fatalf("nonsense: HTTP %d", code)
	}
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("refused calls posted: %v", extra)
	}

	// Resolved: the firing message is edited.
	if code := postWebhook(t, url, alertGroup("resolved"), auth); code != 200 {
		t.Fatalf("resolved: HTTP %d", code)
	}
	edit := alice.WaitForMessage(t, room, wait, harness.From(botID))
	rel := relOf(edit)
	newContent, _ := edit.Content["m.new_content"].(map[string]any)
	if rel["rel_type"] != "m.replace" || rel["event_id"] != firing.EventID || newContent == nil {
		t.Fatalf("resolution is not an edit of %s: %v", firing.EventID, edit.Content)
	}
	if body, _ := newContent["body"].(string); !strings.HasPrefix(body, "✅ RESOLVED: DiskFull (warning), 2 alerts") {
		t.Fatalf("edited to %q", body)
	}
}

func testWebhookSkill(t *testing.T, w *world, alice *harness.User, room string) {
	url := w.Bot.URL + "/skills/webhook/github"
	body := `{"ref":"refs/heads/main","pusher":{"name":"alice"},"repository":{"full_name":"acme/app"},"commits":[{"id":"0123456789"},{"id":"abcdef0123"}]}`
	mac := hmac.New(sha256.New, []byte(hookSecret))
	mac.Write([]byte(body))
	sig := "sha256=" + hex.EncodeToString(mac.Sum(nil))

	if code := postWebhook(t, url, body, map[string]string{"X-Hub-Signature-256": "sha256=" + strings.Repeat("0", 64), "X-GitHub-Event": "push"}); code != 401 {
		t.Fatalf("bad signature: HTTP %d", code)
	}
	if code := postWebhook(t, url, body, map[string]string{"X-GitHub-Event": "push"}); code != 401 {
		t.Fatalf("no signature: HTTP %d", code)
	}
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("refused calls posted: %v", extra)
	}
	if code := postWebhook(t, url, body, map[string]string{"X-Hub-Signature-256": sig, "X-GitHub-Event": "push"}); code != 200 {
		t.Fatalf("signed: HTTP %d\n%s", code, w.Bot.LogTail(20))
	}
	msg := alice.WaitForMessage(t, room, wait, harness.From(botID))
	if msg.Body() != "push: alice pushed 2 commit(s) to acme/app" || msg.Content["formatted_body"] != "<b>alice</b> pushed to <code>acme/app</code>" {
		t.Fatalf("webhook message: %v", msg.Content)
	}
	// Someone who captured that signed delivery posts it again, under a
	// delivery ID of their own: refused, and nothing reaches the room.
	if code := postWebhook(t, url, body, map[string]string{"X-Hub-Signature-256": sig, "X-GitHub-Event": "push", "X-GitHub-Delivery": "forged-1"}); code != 409 {
		t.Fatalf("replayed signed delivery: HTTP %d, want 409", code)
	}
	w.Bot.WaitForLog(t, wait, "Refused a signed webhook delivery taken before")
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("the replay posted: %v", extra)
	}

	// A careless template (a remote tracking image, handlers, a style that
	// hides the room) and a hostile payload (a javascript: link, "@room"
	// and markup in a value): the room gets the spec's HTML subset, and
	// nobody is pinged.
	careless := w.Bot.URL + "/skills/webhook/careless"
	payload := `{"who":"<b>mallory</b>","url":"javascript:alert(document.cookie)"}`
	if code := postWebhook(t, careless, payload, map[string]string{"Authorization": "Bearer " + carelessToken}); code != 200 {
		t.Fatalf("careless hook: HTTP %d\n%s", code, w.Bot.LogTail(20))
	}
	msg = alice.WaitForMessage(t, room, wait, harness.From(botID))
	if want := "&lt;b&gt;mallory&lt;/b&gt;<a>view</a>"; msg.Content["formatted_body"] != want {
		t.Fatalf("careless hook's HTML sent as %q, want %q", msg.Content["formatted_body"], want)
	}
	if m, ok := msg.Content["m.mentions"].(map[string]any); !ok || len(m) != 0 {
		t.Fatalf("careless hook's @room: m.mentions = %v, want {}", msg.Content["m.mentions"])
	}
}
