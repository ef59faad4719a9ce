package skills_test

import (
	"bytes"
	"context"
	"encoding/json"
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

// lockedBuffer collects log lines written from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// entries returns the logged lines with the given message.
func (b *lockedBuffer) entries(msg string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(b.buf.String(), "\n") {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) == nil && entry["message"] == msg {
			out = append(out, entry)
		}
	}
	return out
}

// Every handler, of a room event, a cron job or a webhook, goes through
// one runner: a panic is caught, logged at error level with its stack and
// counted as "panic"; a handler that overruns the timeout is cut off.
func TestOneRunnerForEveryHandler(t *testing.T) {
	s := funcSkill{"boom", func(r *skills.Router) error {
		r.Command("boom", func(context.Context, *skills.Event) error { panic("event boom") })
		r.Cron("* * * * *", func(context.Context, *skills.Event) error { panic("cron boom") })
		r.Webhook("/boom", func(context.Context, *skills.Event, *skills.WebhookRequest) error { panic("webhook boom") },
			skills.WithToken("t0ken-t0ken"))
		r.Command("slow", func(ctx context.Context, _ *skills.Event) error { <-ctx.Done(); return ctx.Err() })
		return nil
	}}
	var logs lockedBuffer
	observed := make(chan string, 10)
	f := &skilltest.Sender{}
	// The cron job last ran an hour ago, so it runs at once.
	sched := &memSchedules{last: map[string]time.Time{"boom|1|* * * * *": time.Now().Add(-time.Hour).Truncate(time.Minute)}}
	e, err := skills.NewEngine(skills.Options{Sender: f, Log: zerolog.New(&logs), Schedules: sched,
		HandlerTimeout: 100 * time.Millisecond,
		Observe:        func(skill, outcome string, _ time.Duration) { observed <- skill + " " + outcome },
	}, []skills.Skill{s}, nil, []skills.BotSpec{{ID: "@bot:x", Prefix: "!", Skills: []string{"boom"}, ConfigKey: "bots[0]"}})
	if err != nil {
		t.Fatal(err)
	}
	next := func(what string) string {
		t.Helper()
		select {
		case o := <-observed:
			return o
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: no run observed", what)
			return ""
		}
	}

	e.Handle(context.Background(), msg("!boom"), []id.UserID{"@bot:x"})
	if o := next("event"); o != "boom panic" {
		t.Errorf("event: observed %q", o)
	}
	srv := httptest.NewServer(e.WebhookHandler(nil))
	defer srv.Close()
	if code := skilltest.Post(t, srv.URL+"/skills/boom/boom?token=t0ken-t0ken", "{}", nil); code != 500 {
		t.Errorf("webhook: HTTP %d", code)
	}
	if o := next("webhook"); o != "boom panic" {
		t.Errorf("webhook: observed %q", o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.RunSchedules(ctx)
	o := next("cron")
	cancel()
	if o != "boom panic" {
		t.Errorf("cron: observed %q", o)
	}

	panics := logs.entries("Skill handler panicked")
	var values []string
	for _, p := range panics {
		values = append(values, p["panic"].(string))
		if p["level"] != "error" || !strings.Contains(p["stack"].(string), "TestOneRunnerForEveryHandler") {
			t.Errorf("panic logged without its stack: %v", p)
		}
	}
	if strings.Join(values, "|") != "event boom|webhook boom|cron boom" {
		t.Errorf("panics logged: %q", values)
	}
	if n := len(logs.entries("Skill handler failed")); n != 3 {
		t.Errorf("%d failures logged, want 3", n)
	}

	start := time.Now()
	e.Handle(context.Background(), msg("!slow"), []id.UserID{"@bot:x"})
	if o := next("slow"); o != "boom error" || time.Since(start) > 2*time.Second {
		t.Errorf("slow handler: observed %q after %v", o, time.Since(start))
	}
	want := "@bot:x: Sorry, the boom skill failed while handling that. The error has been logged."
	if b := f.Bodies(); len(b) != 2 || b[0] != want || b[1] != want {
		t.Errorf("sent %q", b)
	}
}
