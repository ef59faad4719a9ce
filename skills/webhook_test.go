package skills_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/auth"
	"github.com/opsbot/opsbot/skills/skilltest"
)

func TestWebhookAuth(t *testing.T) {
	got := make(chan string, 5)
	s := funcSkill{"w", func(r *skills.Router) error {
		r.Webhook("/hook", func(ctx context.Context, ev *skills.Event, req *skills.WebhookRequest) error {
			got <- string(req.Body)
			_, err := ev.SendTo(ctx, id.RoomID("!ops:x"), "hook: "+string(req.Body))
			return err
		}, skills.WithHMAC("s3cret-s3cret", "X-Hub-Signature-256"), skills.MaxBody(100))
		r.Webhook("/tok", func(ctx context.Context, ev *skills.Event, req *skills.WebhookRequest) error {
			got <- "tok"
			return nil
		}, skills.WithToken("t0ken-t0ken"))
		return nil
	}}
	e, f := newEngineWith(t, s, nil)
	active := true
	srv := httptest.NewServer(e.WebhookHandler(func() bool { return active }))
	defer srv.Close()
	sign := func(body string) string {
		mac := hmac.New(sha256.New, []byte("s3cret-s3cret"))
		mac.Write([]byte(body))
		return "sha256=" + hex.EncodeToString(mac.Sum(nil))
	}
	post := func(path, body string, hdr map[string]string) int {
		return skilltest.Post(t, srv.URL+path, body, hdr)
	}
	cases := []struct {
		path, body string
		hdr        map[string]string
		want       int
	}{
		{"/skills/w/hook", "hi", map[string]string{"X-Hub-Signature-256": sign("hi")}, 200},
		{"/skills/w/hook", "hi", nil, 401},
		{"/skills/w/hook", "hi", map[string]string{"X-Hub-Signature-256": sign("other")}, 401},
		{"/skills/w/hook", strings.Repeat("x", 200), map[string]string{"X-Hub-Signature-256": sign(strings.Repeat("x", 200))}, 413},
		{"/skills/w/tok?token=t0ken-t0ken", "", nil, 200},
		{"/skills/w/tok", "", map[string]string{"Authorization": "Bearer wrong"}, 401},
		{"/skills/w/nope", "", nil, 404},
		{"/skills/other/hook", "", nil, 404},
	}
	for i, c := range cases {
		if code := post(c.path, c.body, c.hdr); code != c.want {
			t.Errorf("case %d %s: HTTP %d, want %d", i, c.path, code, c.want)
		}
	}
	if len(got) != 2 {
		t.Fatalf("handler ran %d times, want 2", len(got))
	}
	if b := f.Bodies(); len(b) != 1 || b[0] != "@bot:x: hook: hi" {
		t.Fatalf("sent %q", b)
	}
	active = false
	if code := post("/skills/w/tok?token=t0ken-t0ken", "", nil); code != 503 {
		t.Fatalf("standby: HTTP %d", code)
	}
	// A webhook without authentication refuses to set up.
	if _, err := skilltest.Setup([]skills.Skill{funcSkill{"n", func(r *skills.Router) error {
		r.Webhook("/open", func(context.Context, *skills.Event, *skills.WebhookRequest) error { return nil })
		return nil
	}}}, nil); err == nil || !strings.Contains(err.Error(), "needs a token or an HMAC secret") {
		t.Fatalf("unauthenticated webhook: %v", err)
	}
}

// A captured signed delivery cannot be posted again: not with another
// unsigned delivery header, not under the same Standard Webhooks ID, not
// with an old signed timestamp. A delivery the skill failed on may be
// retried; a route whose handler takes repeats in its stride gets them.
func TestWebhookReplay(t *testing.T) {
	const secret = "s3cret-s3cret"
	var runs []string
	fail := false
	s := funcSkill{"w", func(r *skills.Router) error {
		handler := func(ctx context.Context, ev *skills.Event, req *skills.WebhookRequest) error {
			runs = append(runs, req.Path+" "+string(req.Body))
			if fail {
				return errors.New("not now")
			}
			return nil
		}
		r.Webhook("/gh", handler, skills.WithHMAC(secret, "X-Hub-Signature-256"))
		r.Webhook("/repeats", handler, skills.WithHMAC(secret, "X-Hub-Signature-256"), skills.RepeatsAreSafe())
		return nil
	}}
	e, _ := newEngineWith(t, s, nil)
	srv := httptest.NewServer(e.WebhookHandler(nil))
	defer srv.Close()
	github := func(path, body, delivery string) int {
		return skilltest.Post(t, srv.URL+"/skills/w"+path, body, map[string]string{
			"X-Hub-Signature-256": auth.SignHMAC(secret, []byte(body)), "X-GitHub-Delivery": delivery})
	}
	standard := func(id string, at time.Time, body string) int {
		return skilltest.Post(t, srv.URL+"/skills/w/gh", body, map[string]string{
			"webhook-id": id, "webhook-timestamp": strconv.FormatInt(at.Unix(), 10),
			"webhook-signature": auth.SignStandardWebhook(secret, id, at, []byte(body))})
	}
	steps := []struct {
		name string
		post func() int
		want int
	}{
		{"first delivery", func() int { return github("/gh", `{"n":1}`, "d-1") }, 200},
		{"replayed with another delivery header", func() int { return github("/gh", `{"n":1}`, "d-forged") }, 409},
		{"replayed as it was", func() int { return github("/gh", `{"n":1}`, "d-1") }, 409},
		{"another body", func() int { return github("/gh", `{"n":2}`, "d-2") }, 200},
		{"Standard Webhooks, fresh", func() int { return standard("msg_1", time.Now(), `{"n":3}`) }, 200},
		{"the same ID again", func() int { return standard("msg_1", time.Now(), `{"n":3}`) }, 409},
		{"a delivery signed ten minutes ago", func() int { return standard("msg_2", time.Now().Add(-10*time.Minute), `{"n":4}`) }, 401},
		{"repeats are safe here", func() int { return github("/repeats", `{"n":1}`, "") }, 200},
		{"and again", func() int { return github("/repeats", `{"n":1}`, "") }, 200},
	}
	for _, st := range steps {
		if code := st.post(); code != st.want {
			t.Errorf("%s: HTTP %d, want %d", st.name, code, st.want)
		}
	}
	if want := []string{`/gh {"n":1}`, `/gh {"n":2}`, `/gh {"n":3}`, `/repeats {"n":1}`, `/repeats {"n":1}`}; strings.Join(runs, "\n") != strings.Join(want, "\n") {
		t.Errorf("handler runs:\n%s\nwant:\n%s", strings.Join(runs, "\n"), strings.Join(want, "\n"))
	}
	// The skill failed: the sender's retry of the same delivery runs again.
	fail = true
	if code := github("/gh", `{"n":5}`, "d-5"); code != 500 {
		t.Fatalf("failing handler: HTTP %d", code)
	}
	fail = false
	if code := github("/gh", `{"n":5}`, "d-5"); code != 200 {
		t.Fatalf("retry after a failure: HTTP %d, want 200", code)
	}
}

// Credentials in the headers are checked before the body is read: a
// caller without them gets 401 however large a body it announces.
func TestWebhookAuthBeforeBody(t *testing.T) {
	s := funcSkill{"w", func(r *skills.Router) error {
		none := func(context.Context, *skills.Event, *skills.WebhookRequest) error { return nil }
		r.Webhook("/tok", none, skills.WithToken("t0ken-t0ken"), skills.MaxBody(10))
		r.Webhook("/sig", none, skills.WithHMAC("s3cret-s3cret", "X-Sig"), skills.MaxBody(10))
		return nil
	}}
	e, _ := newEngineWith(t, s, nil)
	srv := httptest.NewServer(e.WebhookHandler(nil))
	defer srv.Close()
	big := strings.Repeat("x", 100)
	for path, hdr := range map[string]map[string]string{
		"/tok": {"Authorization": "Bearer wrong"},
		"/sig": {"X-Sig": "none"},
	} {
		if code := skilltest.Post(t, srv.URL+"/skills/w"+path, big, hdr); code != 401 {
			t.Errorf("%s without credentials and a body past the limit: HTTP %d, want 401", path, code)
		}
	}
}
