package webhook

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	htmltemplate "html/template"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"text/template"
	"unicode/utf8"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/skilltest"
)

const (
	fuzzSecret = "fuzz-secret-0123456789"
	fuzzToken  = "fuzz-token-0123456789"
	// The templates of fuzzConfig, also rendered directly below: the engine
	// turns a panicking handler into a 500, which would hide one.
	fuzzText = `{{header "X-Event"}} {{.a.b}} {{default "none" .c}} {{join "," .list}} {{truncate 5 (printf "%v" .d)}} {{json .}} {{query "q"}}`
	fuzzHTML = `<b>{{.a}}</b> {{range .list}}<i>{{.}}</i>{{end}} {{pretty .}}`
)

const fuzzConfig = `hooks:
  - name: signed
    room: "!r:example.org"
    hmac_secret: ` + fuzzSecret + `
    template: '` + fuzzText + `'
    html_template: '` + fuzzHTML + `'
  - name: token
    room: "!r:example.org"
    token: ` + fuzzToken + `
`

// FuzzWebhook posts arbitrary calls to the webhook HTTP handler (routing,
// authentication, body limits) and the webhook skill (decoding, templates):
// no panics; a call without valid credentials is refused and posts
// nothing; a call that posts sends one message of at most MaxLength
// characters.
func FuzzWebhook(f *testing.F) {
	h := skilltest.New(f, []skills.Skill{New()}, map[string]string{"webhook": fuzzConfig})
	handler := h.Engine.WebhookHandler(func() bool { return true })
	text := template.Must(template.New("t").Funcs(funcs(nil)).Parse(fuzzText))
	html := htmltemplate.Must(htmltemplate.New("h").Funcs(htmltemplate.FuncMap(funcs(nil))).Parse(fuzzHTML))
	direct := []*hook{
		{Hook: Hook{Name: "t", Room: "!r:x"}, text: text, html: html},
		{Hook: Hook{Name: "raw", Room: "!r:x"}},
	}

	// auth: 0 none, 1 valid, 2 the fuzzer's own string as the credential.
	f.Add("signed", "application/json", []byte(`{"a":{"b":"x"},"c":"","list":[1,"two",null],"d":3.5}`), uint8(1), "", "q=1")
	f.Add("signed", "application/x-www-form-urlencoded", []byte(`payload=%7B%22a%22%3A1%7D`), uint8(1), "", "")
	f.Add("signed", "application/json", []byte(`{"a":1}`), uint8(2), "sha256=00", "")
	f.Add("token", "application/json", []byte(`{"b":[1,2],"a":"<x>"}`), uint8(1), "", "")
	f.Add("token", "", []byte(``), uint8(1), "", "")
	f.Add("token", "text/plain", []byte(`{"x":1} {"y":2}`), uint8(1), "", "")
	f.Add("token", "application/json", []byte(`{"a":"`+string(bytes.Repeat([]byte("é"), 5000))+`"}`), uint8(1), "", "")
	f.Add("token", "application/json", []byte(`{"a":1}`), uint8(2), "Bearer wrong", "token=x")
	f.Add("token", "application/json", []byte(`{"a":1}`), uint8(0), "", "")
	f.Add("../token", "application/json", []byte(`{}`), uint8(1), "", "")
	f.Add("nope", "application/json", []byte(`{}`), uint8(1), "", "")
	f.Add("signed", "application/json", []byte("{\"a\":\"\xff\xfe\"}"), uint8(1), "", "%zz")

	f.Fuzz(func(t *testing.T, name, contentType string, body []byte, auth uint8, cred, rawQuery string) {
		// The skill's rendering, straight.
		req := &skills.WebhookRequest{Path: "/" + name, Header: http.Header{"Content-Type": {contentType}, "X-Event": {cred}}, Body: body}
		req.Query, _ = url.ParseQuery(rawQuery)
		for _, hk := range direct {
			plain, htmlBody, err := hk.Render(req)
			if err == nil && utf8.RuneCountInString(plain) > MaxLength {
				t.Fatalf("%s: rendered %d characters", hk.Name, utf8.RuneCountInString(plain))
			}
			if err == nil && plain == "" && htmlBody != "" {
				t.Fatalf("%s: HTML without text", hk.Name)
			}
		}

		// The whole HTTP handler.
		u := &url.URL{Path: "/skills/webhook/" + name, RawQuery: rawQuery}
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		r.URL = u
		r.Header.Set("Content-Type", contentType)
		r.Header.Set("X-Event", cred)
		valid := auth%3 == 1
		switch auth % 3 {
		case 1:
			mac := hmac.New(sha256.New, []byte(fuzzSecret))
			mac.Write(body)
			r.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
			r.Header.Set("Authorization", "Bearer "+fuzzToken)
		case 2:
			r.Header.Set("X-Hub-Signature-256", cred)
			r.Header.Set("Authorization", cred)
		}
		before := len(h.Sender.Actions)
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, r)
		posted := h.Sender.Actions[before:]
		switch w.Code {
		case http.StatusOK, http.StatusNotFound, http.StatusUnauthorized, http.StatusInternalServerError, http.StatusRequestEntityTooLarge,
			http.StatusConflict: // a signed body the fuzzer sent before: a replay
		default:
			t.Fatalf("HTTP %d: %s", w.Code, w.Body)
		}
		if w.Code != http.StatusOK && len(posted) > 0 {
			t.Fatalf("HTTP %d but %d messages posted", w.Code, len(posted))
		}
		if w.Code == http.StatusOK && !valid && (name == "signed" || name == "token") {
			// Only a credential the fuzzer guessed right could pass.
			if cred != "Bearer "+fuzzToken && r.URL.Query().Get("token") != fuzzToken {
				t.Fatalf("call without credentials accepted (auth %d, cred %q)", auth, cred)
			}
		}
		if len(posted) > 1 {
			t.Fatalf("%d messages for one call", len(posted))
		}
		for _, a := range posted {
			if n := utf8.RuneCountInString(a.Body()); n == 0 || n > MaxLength {
				t.Fatalf("message of %d characters", n)
			}
		}
		h.Sender.Actions = h.Sender.Actions[:before]
	})
}
