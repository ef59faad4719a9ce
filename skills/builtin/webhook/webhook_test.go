package webhook_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/webhook"
	"github.com/opsbot/opsbot/skills/skilltest"
)

const (
	secret = "github-secret-0123456789"
	token  = "ci-token-0123456789abc"
)

const config = `hooks:
  - name: github
    room: "!dev:example.org"
    hmac_secret: ` + secret + `
    template: |
      {{header "X-GitHub-Event"}}: {{.pusher.name}} pushed {{len .commits}} commit(s) to {{.repository.full_name}} ({{.ref | trimRef}})
      {{range .commits}}- {{.id | truncate 7}} {{.message}}
      {{end}}
    html_template: '<b>{{.pusher.name}}</b> pushed to <a href="{{.repository.html_url}}">{{.repository.full_name}}</a>: {{range .commits}}<code>{{.id | truncate 7}}</code> {{.message}} {{end}}'
  - name: ci
    room: "!ops:example.org"
    token: ` + token + `
    template: '{{if eq .status "ok"}}{{else}}CI {{.status | upper}} on {{default "main" .branch}}: {{join ", " .failed}} (build {{.build}}){{end}}'
  - name: raw
    room: "!ops:example.org"
    token: ` + token + `
`

const push = `{"ref":"refs/heads/main","pusher":{"name":"alice"},"repository":{"full_name":"acme/app","html_url":"https://github.com/acme/app"},
"commits":[{"id":"0123456789abcdef","message":"fix <the> bug"},{"id":"fedcba9876543210","message":"add tests"}]}`

func sign(body string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

func setup(t *testing.T, cfg string) (*skilltest.Harness, func(path, body string, hdr map[string]string) int) {
	t.Helper()
	h := skilltest.New(t, []skills.Skill{webhook.New()}, map[string]string{"webhook": cfg})
	srv := httptest.NewServer(h.Engine.WebhookHandler(func() bool { return true }))
	t.Cleanup(srv.Close)
	return h, func(path, body string, hdr map[string]string) int {
		return skilltest.Post(t, srv.URL+"/skills/webhook/"+path, body, hdr)
	}
}

func TestGitHubPush(t *testing.T) {
	// trimRef is not a helper: the config must be refused, naming the template.
	if _, err := skilltest.Setup([]skills.Skill{webhook.New()}, map[string]string{"webhook": config}); err == nil ||
		!strings.Contains(err.Error(), "skills.webhook.hooks[0].template:") || !strings.Contains(err.Error(), `"trimRef" not defined`) {
		t.Fatalf("unknown function: %v", err)
	}
	h, post := setup(t, strings.Replace(config, " | trimRef", "", 1))
	hdr := map[string]string{"X-Hub-Signature-256": sign(push), "X-GitHub-Event": "push", "Content-Type": "application/json"}
	if code := post("github", push, hdr); code != 200 {
		t.Fatalf("HTTP %d", code)
	}
	a := h.Sender.Actions
	if len(a) != 1 || a[0].Room != "!dev:example.org" {
		t.Fatalf("actions %+v", a)
	}
	want := "push: alice pushed 2 commit(s) to acme/app (refs/heads/main)\n- 0123456 fix <the> bug\n- fedcba9 add tests"
	if a[0].Body() != want {
		t.Fatalf("plain:\n%q\nwant\n%q", a[0].Body(), want)
	}
	wantHTML := `<b>alice</b> pushed to <a href="https://github.com/acme/app">acme/app</a>: <code>0123456</code> fix &lt;the&gt; bug <code>fedcba9</code> add tests`
	if a[0].Content["formatted_body"] != wantHTML {
		t.Fatalf("html:\n%v\nwant\n%v", a[0].Content["formatted_body"], wantHTML)
	}
	// GitHub's form-encoded deliveries work the same.
	form := "payload=" + url.QueryEscape(push)
	if code := post("github", form, map[string]string{"X-Hub-Signature-256": sign(form), "X-GitHub-Event": "push",
		"Content-Type": "application/x-www-form-urlencoded"}); code != 200 || h.Sender.Actions[1].Body() != want {
		t.Fatalf("form: HTTP %d, %q", code, h.Sender.Bodies())
	}
}

func TestBadSignature(t *testing.T) {
	h, post := setup(t, strings.Replace(config, " | trimRef", "", 1))
	for name, hdr := range map[string]map[string]string{
		"none":         nil,
		"other body":   {"X-Hub-Signature-256": sign(push + " ")},
		"wrong secret": {"X-Hub-Signature-256": "sha256=" + strings.Repeat("ab", 32)},
		"not hex":      {"X-Hub-Signature-256": "sha256=zz"},
		"sha1":         {"X-Hub-Signature": "sha1=00"},
	} {
		if code := post("github", push, hdr); code != 401 {
			t.Errorf("%s: HTTP %d, want 401", name, code)
		}
	}
	if code := post("ci", `{"status":"failed"}`, map[string]string{"Authorization": "Bearer nope"}); code != 401 {
		t.Errorf("wrong token: HTTP %d", code)
	}
	if code := post("nope", `{}`, nil); code != 404 {
		t.Errorf("unknown hook: HTTP %d", code)
	}
	if n := len(h.Sender.Actions); n != 0 {
		t.Fatalf("rejected calls posted %d messages", n)
	}
}

func TestTemplates(t *testing.T) {
	h, post := setup(t, strings.Replace(config, " | trimRef", "", 1))
	auth := map[string]string{"Authorization": "Bearer " + token}
	cases := []struct {
		hook, body string
		code       int
		want       string // "" = nothing posted
	}{
		{"ci", `{"status":"failed","failed":["lint","test"],"build":12345678901}`, 200, "CI FAILED on main: lint, test (build 12345678901)"},
		{"ci", `{"status":"failed","branch":"dev","failed":[],"build":7}`, 200, "CI FAILED on dev:  (build 7)"},
		{"ci", `{"status":"ok"}`, 200, ""},                     // the template renders nothing: no message
		{"ci", `{"status":"failed","failed":"lint"}`, 500, ""}, // join of a non-list: execution error
		{"ci", `{"status":`, 500, ""},                          // not JSON
		{"ci", `{"status":"ok"} {"status":"x"}`, 500, ""},      // two values
		{"raw", `{"b":[1,2],"a":"<x>"}`, 200, "{\n  \"a\": \"<x>\",\n  \"b\": [\n    1,\n    2\n  ]\n}"},
		{"raw", ``, 200, ""},
		{"raw", `{"long":"` + strings.Repeat("y", 5000) + `"}`, 200, "{\n  \"long\": \"" + strings.Repeat("y", webhook.MaxLength-14) + "…"},
	}
	for i, c := range cases {
		before := len(h.Sender.Actions)
		if code := post(c.hook, c.body, auth); code != c.code {
			t.Errorf("case %d: HTTP %d, want %d", i, code, c.code)
			continue
		}
		got := ""
		if len(h.Sender.Actions) > before {
			got = h.Sender.Actions[before].Body()
		}
		if got != c.want {
			t.Errorf("case %d:\n got %q\nwant %q", i, got, c.want)
		}
	}
	// The default template shows the JSON in a code block too.
	h.Sender.Actions = nil
	post("raw", `{"a":"<x>"}`, auth)
	if html := h.Sender.Actions[0].Content["formatted_body"]; html != "<pre><code>{\n  &#34;a&#34;: &#34;&lt;x&gt;&#34;\n}</code></pre>" {
		t.Fatalf("default html %q", html)
	}
}

func TestOnlyHTMLTemplateAndConcurrency(t *testing.T) {
	h, post := setup(t, `hooks:
  - name: deploy
    room: "!ops:example.org"
    token: `+token+`
    html_template: '<p>Deployed <b>{{.app}}</b> {{.version}}</p><p>by {{.who}}</p>'
`)
	auth := map[string]string{"Authorization": "Bearer " + token}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code := post("deploy", `{"app":"web","version":"v`+string(rune('0'+i))+`","who":"ci & co"}`, auth); code != 200 {
				t.Errorf("HTTP %d", code)
			}
		}()
	}
	wg.Wait()
	bodies := h.Sender.Bodies()
	if len(bodies) != 8 || !strings.Contains(bodies[0], "Deployed web v") || !strings.HasSuffix(bodies[0], "\nby ci & co") {
		t.Fatalf("bodies %q", bodies)
	}
}

func TestBadSettings(t *testing.T) {
	hook := func(extra string) string {
		return "hooks:\n  - name: gh\n    room: '!r:x'\n    token: " + token + "\n" + extra
	}
	for cfg, want := range map[string]string{
		"hooks: []":                         "skills.webhook.hooks: required",
		"hook: []":                          "skills.webhook.hook: unknown key",
		hook("    template: '{{.a'"):        "skills.webhook.hooks[0].template:",
		hook("    html_template: '{{if}}'"): "skills.webhook.hooks[0].html_template:",
		hook("    temlate: x"):              "skills.webhook.hooks[0].temlate: unknown key",
		"hooks:\n  - name: Bad/Name\n    room: '!r:x'\n    token: " + token: `skills.webhook.hooks[0].name: "Bad/Name" must be`,
		"hooks:\n  - name: gh\n    room: '#r:x'\n    token: " + token:       `skills.webhook.hooks[0].room: "#r:x" is not a room ID`,
		"hooks:\n  - name: gh\n    room: '!r:x'":                            "skills.webhook.hooks[0].token: set token and/or hmac_secret",
		"hooks:\n  - name: gh\n    room: '!r:x'\n    token: short":          "skills.webhook.hooks[0].token: must be at least 16 characters",
		"hooks:\n  - name: gh\n    room: '!r:x'\n    hmac_secret: short":    "skills.webhook.hooks[0].hmac_secret: must be at least 16 characters",
		hook("  - name: gh\n    room: '!r:x'\n    token: " + token + "\n"):  `skills.webhook.hooks[1].name: "gh" is used by another hook`,
	} {
		if _, err := skilltest.Setup([]skills.Skill{webhook.New()}, map[string]string{"webhook": cfg}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: want error %q, got %v", cfg, want, err)
		}
	}
	// A secret from the environment.
	t.Setenv(webhook.EnvName("gh-hook", "hmac_secret"), secret)
	if webhook.EnvName("gh-hook", "hmac_secret") != "OPSBOT_SKILL_WEBHOOK_GH_HOOK_HMAC_SECRET" {
		t.Fatal(webhook.EnvName("gh-hook", "hmac_secret"))
	}
	if _, err := skilltest.Setup([]skills.Skill{webhook.New()}, map[string]string{"webhook": "hooks:\n  - name: gh-hook\n    room: '!r:x'"}); err != nil {
		t.Fatalf("secret from the environment: %v", err)
	}
}

// A retried call (same body) sends with the same transaction ID, so the
// homeserver posts it once; two deliveries with their own IDs are two
// messages even with the same body.
func TestTransactionIDs(t *testing.T) {
	h, post := setup(t, strings.Replace(config, " | trimRef", "", 1))
	auth := func(delivery string) map[string]string {
		hdr := map[string]string{"Authorization": "Bearer " + token}
		if delivery != "" {
			hdr["X-GitHub-Delivery"] = delivery
		}
		return hdr
	}
	body := `{"status":"failed","failed":["lint"],"build":1}`
	post("ci", body, auth(""))
	post("ci", body, auth(""))
	post("ci", body, auth("d-1"))
	post("ci", body, auth("d-2"))
	a := h.Sender.Actions
	if len(a) != 4 || a[0].TxnID != a[1].TxnID || a[1].TxnID == a[2].TxnID || a[2].TxnID == a[3].TxnID {
		t.Fatalf("txn IDs: %s %s %s %s", a[0].TxnID, a[1].TxnID, a[2].TxnID, a[3].TxnID)
	}
}
