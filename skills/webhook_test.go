package skills_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"strings"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
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
