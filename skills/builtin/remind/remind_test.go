package remind

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/help"
	"github.com/opsbot/opsbot/skills/skilltest"
)

// clock is a settable time source for the skill.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newSkill(t time.Time) (*Skill, *clock) {
	c := &clock{t: t}
	s := New().(*Skill)
	s.now = c.now
	return s, c
}

func say(t *testing.T, h *skilltest.Harness, text, want string) {
	t.Helper()
	if got := strings.Join(h.Say(text), "|"); got != want {
		t.Fatalf("%s:\n got %q\nwant %q", text, got, want)
	}
}

func TestSetListCancel(t *testing.T) {
	start := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC) // 14:00 in Berlin (CEST)
	s, _ := newSkill(start)
	h := skilltest.New(t, []skills.Skill{s, help.New()}, map[string]string{"remind": "timezone: Europe/Berlin\nmax_per_room: 4\nmax_length: 40"})
	say(t, h, "!remind list", "No reminders pending in this room.")
	say(t, h, "!remind 10m check the deploy", "⏰ I will remind you in 10m, at 2026-05-01 14:10 CEST.")
	say(t, h, "!remind 2h30m rotate keys", "⏰ I will remind you in 2h30m, at 2026-05-01 16:30 CEST.")
	say(t, h, "!remind 2026-12-01 09:00 renew the certificate", "⏰ I will remind you in 213d20h, at 2026-12-01 09:00 CET.")
	say(t, h, "!remind 9:30 stand-up", "⏰ I will remind you in 19h30m, at 2026-05-02 09:30 CEST.")
	say(t, h, "!remind 1d one too many", "This room already has 4 pending reminders; cancel some first.")
	say(t, h, "!remind list", "1. 2026-05-01 14:10 CEST (in 10m) for @alice:example.org: check the deploy\n"+
		"2. 2026-05-01 16:30 CEST (in 2h30m) for @alice:example.org: rotate keys\n"+
		"3. 2026-05-02 09:30 CEST (in 19h30m) for @alice:example.org: stand-up\n"+
		"4. 2026-12-01 09:00 CET (in 213d20h) for @alice:example.org: renew the certificate")
	say(t, h, "!remind cancel 9", `There is no reminder "9"; !remind list shows their numbers.`)
	say(t, h, "!remind cancel 2", "Cancelled reminder 2 (2026-05-01 16:30 CEST): rotate keys")
	say(t, h, "!remind list", "1. 2026-05-01 14:10 CEST (in 10m) for @alice:example.org: check the deploy\n"+
		"2. 2026-05-02 09:30 CEST (in 19h30m) for @alice:example.org: stand-up\n"+
		"3. 2026-12-01 09:00 CET (in 213d20h) for @alice:example.org: renew the certificate")

	usage := "Usage: !remind <when> <text...>, where <when> is a delay (10m, 2h30m, 1d12h, at most a year) " +
		"or a time in Europe/Berlin (17:00, or 2026-12-01 09:00) | !remind list | !remind cancel <n>"
	for _, bad := range []string{"!remind soon check", "!remind 0m now", "!remind 10x check", "!remind 1.5h check",
		"!remind 2026-12-01 check", "!remind 2026-12-01 09:00", "!remind 2026-02-30 09:00 check", "!remind 25:00 check", "!remind list all"} {
		say(t, h, bad, usage)
	}
	say(t, h, "!remind 2020-01-01 09:00 too late", "2020-01-01 09:00 CET is in the past; give a time in the future.")
	say(t, h, "!remind 2027-06-01 09:00 too far", "I can only remind you of things up to a year ahead.")
	say(t, h, "!remind 400d too far", "I can only remind you of things up to a year ahead.")
	say(t, h, "!remind 10m "+strings.Repeat("x", 41), "A reminder can be at most 40 characters.")
	say(t, h, "!remind", "Usage: !remind list | !remind cancel <n:integer> | !remind <when> <text...>")

	if got := h.Say("!help")[0]; !strings.Contains(got, "!remind <when> <text...> — remind you") || !strings.Contains(got, "!remind cancel <n:integer>") {
		t.Fatalf("help: %q", got)
	}
}

// The same command handled twice (a replay after a crash) sets one
// reminder, and its confirmation has the same transaction ID.
func TestSetIsIdempotent(t *testing.T) {
	s, _ := newSkill(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
	h := skilltest.New(t, []skills.Skill{s}, nil)
	evt := &event.Event{Type: event.EventMessage, ID: "$same", RoomID: "!room:example.org", Sender: "@alice:example.org",
		Content: event.Content{Parsed: &event.MessageEventContent{MsgType: event.MsgText, Body: "!remind 10m once"}}}
	h.Engine.Handle(context.Background(), evt, []id.UserID{skilltest.Bot})
	h.Engine.Handle(context.Background(), evt, []id.UserID{skilltest.Bot})
	if a := h.Sender.Actions; len(a) != 2 || a[0].TxnID != a[1].TxnID || a[0].Body() != a[1].Body() {
		t.Fatalf("replies %+v", a)
	}
	say(t, h, "!remind list", "1. 2026-05-01 12:10 UTC (in 10m) for @alice:example.org: once")
}

func TestDeliverDue(t *testing.T) {
	start := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s, c := newSkill(start)
	h := skilltest.New(t, []skills.Skill{s}, nil)
	h.Say("!remind 10m check the deploy")
	h.Say("!remind 3h rotate keys")
	mem := h.Memory.Memory("remind", "")
	ctx := context.Background()

	var sent []string
	var fail error
	send := func(ctx context.Context, r Reminder, plain, html string) error {
		if fail != nil {
			return fail
		}
		sent = append(sent, string(r.Room)+" "+string(r.Bot)+" "+plain+" | "+html)
		return nil
	}
	// Nothing due yet.
	if err := s.deliverDue(ctx, mem, c.now(), send); err != nil || len(sent) != 0 {
		t.Fatalf("early: %v %q", err, sent)
	}
	// On time.
	c.advance(10*time.Minute + 5*time.Second)
	if err := s.deliverDue(ctx, mem, c.now(), send); err != nil {
		t.Fatal(err)
	}
	want := `!room:example.org @opsbot:example.org ⏰ @alice:example.org: check the deploy | ⏰ <a href="https://matrix.to/#/@alice:example.org">@alice:example.org</a>: check the deploy`
	if len(sent) != 1 || sent[0] != want {
		t.Fatalf("sent %q", sent)
	}
	// Delivered once only.
	if err := s.deliverDue(ctx, mem, c.now(), send); err != nil || len(sent) != 1 {
		t.Fatalf("again: %v %q", err, sent)
	}
	say(t, h, "!remind list", "1. 2026-05-01 15:00 UTC (in 2h49m) for @alice:example.org: rotate keys")

	// Down for six hours: the second is delivered late, saying so — by a
	// new instance of the skill, as after a restart.
	c.advance(6 * time.Hour)
	s2, _ := newSkill(c.now())
	if err := s2.deliverDue(ctx, mem, c.now(), send); err != nil {
		t.Fatal(err)
	}
	if len(sent) != 2 || !strings.HasPrefix(sent[1], "!room:example.org @opsbot:example.org ⏰ @alice:example.org: rotate keys (late by 3h10m)") {
		t.Fatalf("late: %q", sent)
	}
	say(t, h, "!remind list", "No reminders pending in this room.")

	// A failed send is kept, retried after a back-off, and given up after a week.
	h.Say("!remind 1m <b>html</b> & co")
	c.advance(2 * time.Minute)
	fail = errors.New("M_FORBIDDEN")
	if err := s.deliverDue(ctx, mem, c.now(), send); err != nil {
		t.Fatal(err)
	}
	e, _ := s.load(ctx, mem, memoryKey("!room:example.org"))
	if len(e.Reminders) != 1 || e.Reminders[0].Failures != 1 || !e.Reminders[0].RetryAt.After(c.now()) {
		t.Fatalf("after a failure: %+v", e.Reminders)
	}
	fail = nil
	if err := s.deliverDue(ctx, mem, c.now(), send); err != nil || len(sent) != 2 {
		t.Fatalf("retried before the back-off: %v %q", err, sent)
	}
	c.advance(time.Minute)
	if err := s.deliverDue(ctx, mem, c.now(), send); err != nil || len(sent) != 3 {
		t.Fatalf("not retried after the back-off: %v %q", err, sent)
	}
	if !strings.Contains(sent[2], "&lt;b&gt;html&lt;/b&gt; &amp; co (late by 2m)") || !strings.Contains(sent[2], "<b>html</b> & co (late by 2m) |") {
		t.Fatalf("escaping: %q", sent[2])
	}
	h.Say("!remind 1m never")
	fail = errors.New("M_FORBIDDEN")
	c.advance(8 * 24 * time.Hour)
	if err := s.deliverDue(ctx, mem, c.now(), send); err != nil {
		t.Fatal(err)
	}
	if keys, _ := mem.Keys(ctx); len(keys) != 0 {
		t.Fatalf("undeliverable reminder kept: %v", keys)
	}
}

// The cron job delivers through the engine, with a transaction ID derived
// from the reminder (so a repeat after a crash is de-duplicated).
func TestCronDelivers(t *testing.T) {
	s := New().(*Skill)
	s.every = "@every 1s"
	h := skilltest.New(t, []skills.Skill{s}, nil)
	h.Say("!remind 1s ping me")
	thread := &event.MessageEventContent{MsgType: event.MsgText, Body: "!remind 1s in the thread"}
	thread.RelatesTo = (&event.RelatesTo{}).SetThread("$root", "$root")
	h.Send(thread)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.Engine.RunSchedules(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		bodies := h.Sender.Bodies()
		if len(bodies) >= 4 {
			if bodies[2] != "@opsbot:example.org: ⏰ @alice:example.org: ping me" ||
				bodies[3] != "@opsbot:example.org: ⏰ @alice:example.org: in the thread" || len(bodies) > 4 {
				t.Fatalf("delivered %q", bodies)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not delivered: %q", bodies)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	a := h.Sender.Actions[2]
	if a.Room != "!room:example.org" || a.Content["msgtype"] != "m.notice" || a.Content["format"] != "org.matrix.custom.html" {
		t.Fatalf("action %+v", a)
	}
	if want := skills.TxnID(string(skilltest.Bot), "remind:$msg1", "remind", 1); a.TxnID != want {
		t.Fatalf("txn ID %q, want %q (derived from the reminder)", a.TxnID, want)
	}
	rel, _ := h.Sender.Actions[3].Content["m.relates_to"].(map[string]any)
	if rel["rel_type"] != "m.thread" || rel["event_id"] != "$root" {
		t.Fatalf("thread reminder sent with %v", h.Sender.Actions[3].Content)
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"10m": 10 * time.Minute, "2h30m": 150 * time.Minute, "1d12h": 36 * time.Hour, "1w": 7 * 24 * time.Hour,
		"90s": 90 * time.Second, "1H": time.Hour,
	} {
		if got, ok := parseDelay(in); !ok || got != want {
			t.Errorf("parseDelay(%q) = %v, %v", in, got, ok)
		}
	}
	for _, in := range []string{"", "m", "10", "1.5h", "-5m", "10 m", "1y"} {
		if _, ok := parseDelay(in); ok {
			t.Errorf("parseDelay(%q) accepted", in)
		}
	}
	for d, want := range map[time.Duration]string{
		0: "0s", 45 * time.Second: "45s", 90 * time.Second: "1m30s", 3 * time.Hour: "3h",
		2*time.Hour + 30*time.Minute: "2h30m", 26 * time.Hour: "1d2h", 24*time.Hour + 5*time.Minute: "1d",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestBadSettings(t *testing.T) {
	for cfg, want := range map[string]string{
		"timezone: Mars/Olympus": `skills.remind.timezone: "Mars/Olympus" is not a time zone name`,
		"timezone: ''":           `skills.remind.timezone: "" is not a time zone name`,
		"max_per_room: 0":        "skills.remind.max_per_room: must be from 1 to 100",
		"max_length: 5000":       "skills.remind.max_length: must be from 1 to 2000",
		"max_per_room: many":     "skills.remind.max_per_room",
		"maxperroom: 1":          "skills.remind.maxperroom: unknown key",
	} {
		if _, err := skilltest.Setup([]skills.Skill{New()}, map[string]string{"remind": cfg}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: want error %q, got %v", cfg, want, err)
		}
	}
}
