package skills_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/skilltest"
)

// funcSkill registers whatever setup says.
type funcSkill struct {
	name  string
	setup func(r *skills.Router) error
}

func (f funcSkill) Name() string                                    { return f.name }
func (f funcSkill) Setup(r *skills.Router, cfg skills.Config) error { return f.setup(r) }

func TestParseMatcher(t *testing.T) {
	var got []string
	s := funcSkill{"p", func(r *skills.Router) error {
		r.Parse("remind me in {minutes:d} minutes to {task}", func(ctx context.Context, ev *skills.Event) error {
			got = append(got, ev.Arg("task"))
			if ev.Values["minutes"].(int) != 10 {
				t.Errorf("minutes = %v", ev.Values["minutes"])
			}
			_, err := ev.Reply(ctx, "ok")
			return err
		})
		r.Parse("rate {x:f}", func(ctx context.Context, ev *skills.Event) error {
			got = append(got, "rate")
			if ev.Values["x"].(float64) != 2.5 {
				t.Errorf("x = %v", ev.Values["x"])
			}
			return nil
		})
		return nil
	}}
	h := skilltest.New(t, []skills.Skill{s}, nil)
	h.Say("Remind me in 10 minutes to   check the deploy")
	h.Say("remind me in ten minutes to x")
	h.Say("rate 2.5")
	h.Say("rate 2.5 please")
	if strings.Join(got, "|") != "check the deploy|rate" {
		t.Fatalf("got %q", got)
	}
	for _, bad := range []string{"", "x {a} {a}", "x {a:q}", "x {a"} {
		if _, err := skilltest.Setup([]skills.Skill{funcSkill{"b", func(r *skills.Router) error {
			r.Parse(bad, func(context.Context, *skills.Event) error { return nil })
			return nil
		}}}, nil); err == nil {
			t.Errorf("parse pattern %q accepted", bad)
		}
	}
}

type memSchedules struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (m *memSchedules) LastRun(ctx context.Context, key string) (time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last[key], nil
}

func (m *memSchedules) SetLastRun(ctx context.Context, key string, at time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.last[key] = at
	return nil
}

func newEngineWith(t *testing.T, s skills.Skill, sched skills.ScheduleStore) (*skills.Engine, *skilltest.Sender) {
	f := &skilltest.Sender{}
	e, err := skills.NewEngine(skills.Options{Sender: f, Log: zerolog.Nop(), Schedules: sched, Memory: skilltest.NewMemory()},
		[]skills.Skill{s}, nil, []skills.BotSpec{{ID: "@bot:x", Prefix: "!", Skills: []string{s.Name()}, ConfigKey: "bots[0]"}})
	if err != nil {
		t.Fatal(err)
	}
	return e, f
}

func TestCronRunsAndRecords(t *testing.T) {
	runs := make(chan string, 10)
	s := funcSkill{"c", func(r *skills.Router) error {
		r.Cron("@every 1s", func(ctx context.Context, ev *skills.Event) error {
			runs <- string(ev.RoomID)
			_, err := ev.Respond(ctx, "tick")
			return err
		}, skills.InRooms("!ops:x"))
		return nil
	}}
	sched := &memSchedules{last: map[string]time.Time{}}
	e, f := newEngineWith(t, s, sched)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.RunSchedules(ctx)
	select {
	case room := <-runs:
		if room != "!ops:x" {
			t.Fatalf("ran in %q", room)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("cron job did not run")
	}
	time.Sleep(50 * time.Millisecond)
	sched.mu.Lock()
	recorded := len(sched.last)
	sched.mu.Unlock()
	if recorded != 1 {
		t.Fatalf("run not recorded")
	}
	if b := f.Bodies(); len(b) == 0 || b[0] != "@bot:x: tick" {
		t.Fatalf("sent %q", b)
	}
}

func TestCronCatchesUpOnceAfterDowntime(t *testing.T) {
	runs := make(chan time.Time, 100)
	s := funcSkill{"c", func(r *skills.Router) error {
		r.Cron("* * * * *", func(ctx context.Context, ev *skills.Event) error {
			runs <- time.Now()
			return nil
		})
		return nil
	}}
	// The job last ran an hour ago: 60 slots were missed, it runs once.
	sched := &memSchedules{last: map[string]time.Time{"c|0|* * * * *": time.Now().Add(-time.Hour).Truncate(time.Minute)}}
	e, _ := newEngineWith(t, s, sched)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.RunSchedules(ctx)
	select {
	case <-runs:
	case <-time.After(2 * time.Second):
		t.Fatal("missed run not caught up")
	}
	select {
	case <-runs:
		t.Fatal("caught up more than once")
	case <-time.After(500 * time.Millisecond):
	}
}

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
