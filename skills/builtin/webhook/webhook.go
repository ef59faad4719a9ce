// Package webhook turns inbound webhooks into room messages. Each
// configured hook has a name (its URL is /skills/webhook/<name>), a room,
// a token or an HMAC secret (GitHub's X-Hub-Signature-256 style), and a Go
// template that renders the decoded JSON body into the message.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	htmltemplate "html/template"
	"io"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"text/template"
	"unicode/utf8"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
)

// Settings is the skills.webhook config section.
type Settings struct {
	Hooks []Hook `yaml:"hooks"`
}

// Hook is one inbound webhook.
type Hook struct {
	// Name is the last part of the URL: /skills/webhook/<name>.
	Name string `yaml:"name"`
	// Room is the ID of the room the messages go to.
	Room string `yaml:"room"`
	// Token ("Authorization: Bearer <token>" or "?token=<token>") and/or
	// HMACSecret (a signature "sha256=<hex>" of the body in HMACHeader).
	Token      string `yaml:"token"`
	HMACSecret string `yaml:"hmac_secret"`
	HMACHeader string `yaml:"hmac_header"`
	// Template renders the message text (Go text/template over the JSON
	// body); HTMLTemplate, optional, its formatted version (html/template).
	Template     string `yaml:"template"`
	HTMLTemplate string `yaml:"html_template"`
}

// MaxLength caps a rendered message, in characters.
const MaxLength = 4000

// renderLimit stops collecting template output well past MaxLength.
const renderLimit = 4 * MaxLength

var nameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// EnvName is the environment variable that overrides a hook's secret
// (what is "token" or "hmac_secret"): OPSBOT_SKILL_WEBHOOK_<NAME>_TOKEN,
// the name upper-cased with '-' as '_'.
func EnvName(hook, what string) string { return skills.EnvName("webhook", hook, what) }

// EnvOverrides lets each hook's secrets come from the environment;
// cfg.Decode applies them.
func (s *Settings) EnvOverrides() []skills.EnvOverride {
	var out []skills.EnvOverride
	for i := range s.Hooks {
		h := &s.Hooks[i]
		out = append(out,
			skills.EnvOverride{Name: EnvName(h.Name, "token"), Apply: func(v string) { h.Token = v }},
			skills.EnvOverride{Name: EnvName(h.Name, "hmac_secret"), Apply: func(v string) { h.HMACSecret = v }})
	}
	return out
}

// Skill posts webhook calls into rooms.
type Skill struct{ settings Settings }

// New returns the webhook skill.
func New() skills.Skill { return &Skill{} }

// Name is the skill's config name.
func (*Skill) Name() string { return "webhook" }

// hook is a configured hook, templates parsed.
type hook struct {
	Hook
	text *template.Template     // nil: pretty JSON
	html *htmltemplate.Template // nil: none (or <pre> for pretty JSON)
}

// Setup reads skills.webhook, parses the templates and registers one
// webhook per hook.
func (s *Skill) Setup(r *skills.Router, cfg skills.Config) error {
	s.settings = Settings{}
	if err := cfg.Decode(&s.settings); err != nil {
		return err
	}
	if len(s.settings.Hooks) == 0 {
		return cfg.Errorf("hooks", "required: a list of hooks ({name, room, token or hmac_secret, template})")
	}
	seen := map[string]bool{}
	var hooks []*hook
	for i, hc := range s.settings.Hooks {
		key := func(k string) string { return fmt.Sprintf("hooks[%d].%s", i, k) }
		if !nameRe.MatchString(hc.Name) {
			return cfg.Errorf(key("name"), "%q must be 1 to 64 lower-case letters, digits, '-' or '_' (it is the URL path /skills/webhook/<name>)", hc.Name)
		}
		if seen[hc.Name] {
			return cfg.Errorf(key("name"), "%q is used by another hook", hc.Name)
		}
		seen[hc.Name] = true
		if !strings.HasPrefix(hc.Room, "!") || len(hc.Room) > 255 || strings.ContainsAny(hc.Room, " \t\n") {
			return cfg.Errorf(key("room"), "%q is not a room ID (like !abc:example.org)", hc.Room)
		}
		if hc.Token == "" && hc.HMACSecret == "" {
			return cfg.Errorf(key("token"), "set token and/or hmac_secret (or %s / %s): the webhook must be authenticated",
				EnvName(hc.Name, "token"), EnvName(hc.Name, "hmac_secret"))
		}
		if hc.Token != "" && len(hc.Token) < 16 {
			return cfg.Errorf(key("token"), "must be at least 16 characters")
		}
		if hc.HMACSecret != "" && len(hc.HMACSecret) < 16 {
			return cfg.Errorf(key("hmac_secret"), "must be at least 16 characters")
		}
		if hc.HMACHeader == "" {
			hc.HMACHeader = "X-Hub-Signature-256"
		}
		h := &hook{Hook: hc}
		if hc.Template != "" {
			t, err := template.New(hc.Name).Funcs(funcs(nil)).Parse(hc.Template)
			if err != nil {
				return cfg.Errorf(key("template"), "%v", err)
			}
			h.text = t
		}
		if hc.HTMLTemplate != "" {
			t, err := htmltemplate.New(hc.Name).Funcs(htmltemplate.FuncMap(funcs(nil))).Parse(hc.HTMLTemplate)
			if err != nil {
				return cfg.Errorf(key("html_template"), "%v", err)
			}
			h.html = t
		}
		hooks = append(hooks, h)
	}
	for _, h := range hooks {
		var opts []skills.Option
		if h.Token != "" {
			opts = append(opts, skills.WithToken(h.Token))
		}
		if h.HMACSecret != "" {
			opts = append(opts, skills.WithHMAC(h.HMACSecret, h.HMACHeader))
		}
		r.Webhook("/"+h.Name, h.handle, opts...)
	}
	return nil
}

// funcs are the template helpers; req, when set, backs header and query.
func funcs(req *skills.WebhookRequest) template.FuncMap {
	return template.FuncMap{
		"json": func(v any) (string, error) {
			data, err := json.Marshal(v)
			return string(data), err
		},
		"pretty": pretty,
		"default": func(def, v any) any {
			if empty(v) {
				return def
			}
			return v
		},
		"join": func(sep string, list any) (string, error) {
			rv := reflect.ValueOf(list)
			if list == nil {
				return "", nil
			}
			if rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array {
				return "", fmt.Errorf("join: %T is not a list", list)
			}
			parts := make([]string, rv.Len())
			for i := range parts {
				parts[i] = fmt.Sprint(rv.Index(i).Interface())
			}
			return strings.Join(parts, sep), nil
		},
		"upper": strings.ToUpper,
		"lower": strings.ToLower,
		"trim":  strings.TrimSpace,
		"truncate": func(n int, s string) string {
			if utf8.RuneCountInString(s) <= n {
				return s
			}
			return string([]rune(s)[:max(n, 0)])
		},
		"header": func(name string) string {
			if req == nil {
				return ""
			}
			return req.Header.Get(name)
		},
		"query": func(name string) string {
			if req == nil {
				return ""
			}
			return req.Query.Get(name)
		},
	}
}

func empty(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.String, reflect.Slice, reflect.Map, reflect.Array:
		return rv.Len() == 0
	case reflect.Bool:
		return !rv.Bool()
	}
	return false
}

func pretty(v any) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimRight(buf.String(), "\n"), nil
}

// decode reads the body: JSON, or a form with a "payload" field holding
// JSON (GitHub's application/x-www-form-urlencoded deliveries). Numbers
// stay as written (json.Number). An empty body is nil.
func decode(req *skills.WebhookRequest) (any, error) {
	body := req.Body
	if strings.HasPrefix(req.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, fmt.Errorf("bad form body: %w", err)
		}
		body = []byte(form.Get("payload"))
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("the body is not JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("the body is not JSON: data after the value")
	}
	return v, nil
}

// limitedWriter keeps the first n bytes and drops the rest.
type limitedWriter struct {
	buf bytes.Buffer
	n   int
}

func (w *limitedWriter) Write(p []byte) (int, error) {
	if room := w.n - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// Render renders a hook's message for a request: plain text and HTML ("" if
// none). Both are empty when the template renders only white space.
func (h *hook) Render(req *skills.WebhookRequest) (plain, htmlBody string, err error) {
	data, err := decode(req)
	if err != nil {
		return "", "", err
	}
	fm := funcs(req)
	if h.text != nil {
		t, err := h.text.Clone()
		if err != nil {
			return "", "", err
		}
		var w limitedWriter
		w.n = renderLimit
		if err := t.Funcs(fm).Execute(&w, data); err != nil {
			return "", "", fmt.Errorf("hook %s: template: %w", h.Name, err)
		}
		plain = w.buf.String()
	}
	if h.html != nil {
		t, err := h.html.Clone()
		if err != nil {
			return "", "", err
		}
		var w limitedWriter
		w.n = renderLimit
		if err := t.Funcs(htmltemplate.FuncMap(fm)).Execute(&w, data); err != nil {
			return "", "", fmt.Errorf("hook %s: html_template: %w", h.Name, err)
		}
		htmlBody = w.buf.String()
	}
	switch {
	case h.text == nil && h.html == nil:
		if data == nil {
			return "", "", nil
		}
		p, err := pretty(data)
		if err != nil {
			return "", "", err
		}
		plain = p
		htmlBody = "<pre><code>" + html.EscapeString(clip(p)) + "</code></pre>"
	}
	plain = strings.TrimSpace(plain)
	htmlBody = strings.TrimSpace(htmlBody)
	if plain == "" {
		plain = stripTags(htmlBody) // no text template, or it said nothing
	}
	if plain == "" {
		return "", "", nil
	}
	if utf8.RuneCountInString(htmlBody) > MaxLength {
		htmlBody = "" // cutting HTML would break its markup: plain text only
	}
	return clip(plain), htmlBody, nil
}

var tagRe = regexp.MustCompile(`<[^>]*>`)

func stripTags(s string) string {
	s = strings.NewReplacer("<br>", "\n", "<br/>", "\n", "<br />", "\n", "</p>", "\n", "</li>", "\n").Replace(s)
	return strings.TrimSpace(html.UnescapeString(tagRe.ReplaceAllString(s, "")))
}

// clip caps text at MaxLength characters.
func clip(s string) string {
	if utf8.RuneCountInString(s) <= MaxLength {
		return s
	}
	return string([]rune(s)[:MaxLength-1]) + "…"
}

func (h *hook) handle(ctx context.Context, ev *skills.Event, req *skills.WebhookRequest) error {
	plain, htmlBody, err := h.Render(req)
	if err != nil {
		return err
	}
	if plain == "" {
		return nil // the template chose to say nothing
	}
	// The transaction ID comes from the request's body (so a retried call
	// posts once) and, when the sender gives one, its delivery ID (so two
	// deliveries with the same body are two messages).
	if delivery := deliveryID(req); delivery != "" {
		dev := *ev
		dev.ID = id.EventID(string(ev.ID) + "|" + delivery)
		ev = &dev
	}
	_, err = ev.SendHTMLTo(ctx, id.RoomID(h.Room), plain, htmlBody)
	return err
}

// deliveryHeaders carry a sender's unique ID of one delivery.
var deliveryHeaders = []string{"Idempotency-Key", "X-GitHub-Delivery", "X-Gitlab-Event-UUID"}

func deliveryID(req *skills.WebhookRequest) string {
	for _, h := range deliveryHeaders {
		if v := req.Header.Get(h); v != "" {
			return h + ":" + v
		}
	}
	return ""
}
