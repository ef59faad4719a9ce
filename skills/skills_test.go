package skills_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/echo"
	"github.com/opsbot/opsbot/skills/builtin/help"
	"github.com/opsbot/opsbot/skills/builtin/ping"
	"github.com/opsbot/opsbot/skills/skilltest"
)

const (
	bot1 = id.UserID("@opsbot:x")
	bot2 = id.UserID("@second:x")
)

func newEngine(t *testing.T, extra []skills.Skill, sections map[string]yaml.Node, bots ...skills.BotSpec) (*skills.Engine, *skilltest.Sender) {
	t.Helper()
	f := &skilltest.Sender{}
	avail := append([]skills.Skill{ping.New(), help.New(), echo.New()}, extra...)
	if len(bots) == 0 {
		bots = []skills.BotSpec{{ID: bot1, Prefix: "!", Skills: []string{"ping", "help", "echo"}, ConfigKey: "bots[0]"}}
	}
	e, err := skills.NewEngine(skills.Options{Sender: f, Log: zerolog.Nop()}, avail, sections, bots)
	if err != nil {
		t.Fatal(err)
	}
	return e, f
}

// funcSkill registers whatever setup says.
type funcSkill struct {
	name  string
	setup func(r *skills.Router) error
}

func (f funcSkill) Name() string                                    { return f.name }
func (f funcSkill) Setup(r *skills.Router, cfg skills.Config) error { return f.setup(r) }

func newEngineWith(t *testing.T, s skills.Skill, sched skills.ScheduleStore) (*skills.Engine, *skilltest.Sender) {
	f := &skilltest.Sender{}
	e, err := skills.NewEngine(skills.Options{Sender: f, Log: zerolog.Nop(), Schedules: sched, Memory: skilltest.NewMemory()},
		[]skills.Skill{s}, nil, []skills.BotSpec{{ID: "@bot:x", Prefix: "!", Skills: []string{s.Name()}, ConfigKey: "bots[0]"}})
	if err != nil {
		t.Fatal(err)
	}
	return e, f
}

func msg(body string) *event.Event {
	return msgFrom("@alice:x", body)
}

func msgFrom(sender id.UserID, body string) *event.Event {
	return &event.Event{
		Type: event.EventMessage, ID: id.EventID("$" + body), RoomID: "!room:x", Sender: sender,
		Content: event.Content{Parsed: &event.MessageEventContent{MsgType: event.MsgText, Body: body}},
	}
}

func TestPingHelpEcho(t *testing.T) {
	e, f := newEngine(t, nil, nil)
	ctx := context.Background()
	e.Handle(ctx, msg("!ping"), []id.UserID{bot1})
	e.Handle(ctx, msg("!echo hello   there"), []id.UserID{bot1})
	e.Handle(ctx, msg("!help"), []id.UserID{bot1})
	got := f.Bodies()
	if len(got) != 3 || got[0] != "@opsbot:x: pong" || got[1] != "@opsbot:x: hello   there" {
		t.Fatalf("got %q", got)
	}
	for _, want := range []string{"!ping — check that the bot is alive", "!help [command]", "!echo <text...> — repeat the text back"} {
		if !strings.Contains(got[2], want) {
			t.Errorf("help lacks %q:\n%s", want, got[2])
		}
	}
	// The reply to !ping is a notice that replies to the command.
	c := f.Actions[0].Content
	if c["msgtype"] != "m.notice" || c["m.relates_to"].(map[string]any)["m.in_reply_to"].(map[string]any)["event_id"] != "$!ping" {
		t.Errorf("reply shape: %v", c)
	}
	if html, _ := f.Actions[2].Content["formatted_body"].(string); !strings.Contains(html, "<code>!ping</code>") {
		t.Errorf("help HTML: %q", html)
	}
}

func TestHelpForOneCommand(t *testing.T) {
	e, f := newEngine(t, nil, nil)
	e.Handle(context.Background(), msg("!help !echo"), []id.UserID{bot1})
	e.Handle(context.Background(), msg("!help nope"), []id.UserID{bot1})
	got := f.Bodies()
	if got[0] != "@opsbot:x: !echo <text...> — repeat the text back\n  text (string): what to say back" || !strings.Contains(got[1], `no command "nope"`) {
		t.Fatalf("got %q", got)
	}
}

func TestUnknownCommandHintAndUsage(t *testing.T) {
	e, f := newEngine(t, nil, nil)
	ctx := context.Background()
	e.Handle(ctx, msg("!pnig"), []id.UserID{bot1})
	e.Handle(ctx, msg("!echo"), []id.UserID{bot1})
	e.Handle(ctx, msg("!ping extra"), []id.UserID{bot1})
	got := f.Bodies()
	want := []string{
		"@opsbot:x: Unknown command !pnig. Send !help for the list of commands.",
		"@opsbot:x: Usage: !echo <text...>",
		"@opsbot:x: Usage: !ping",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got %q", got)
	}
}

func TestNotCommands(t *testing.T) {
	e, f := newEngine(t, nil, nil)
	ctx := context.Background()
	for _, body := range []string{"ping", "!!!", "! ping", "!1", "hello !ping", ""} {
		e.Handle(ctx, msg(body), []id.UserID{bot1})
	}
	// Notices (what bots send) never trigger commands.
	n := msg("!ping")
	n.Content.Parsed.(*event.MessageEventContent).MsgType = event.MsgNotice
	e.Handle(ctx, n, []id.UserID{bot1})
	// A bot never answers itself.
	e.Handle(ctx, msgFrom(bot1, "!ping"), []id.UserID{bot1})
	if got := f.Bodies(); len(got) != 0 {
		t.Fatalf("expected silence, got %q", got)
	}
}

func TestCaseAndReplyFallback(t *testing.T) {
	e, f := newEngine(t, nil, nil)
	ev := msg("> <@bob:x> earlier\n> text\n\n!PING")
	ev.Content.Parsed.(*event.MessageEventContent).RelatesTo = (&event.RelatesTo{}).SetReplyTo("$earlier")
	e.Handle(context.Background(), ev, []id.UserID{bot1})
	if got := f.Bodies(); len(got) != 1 || got[0] != "@opsbot:x: pong" {
		t.Fatalf("got %q", got)
	}
}

func TestTwoBotsInOneRoom(t *testing.T) {
	e, f := newEngine(t, nil, nil,
		skills.BotSpec{ID: bot1, Prefix: "!", Skills: []string{"ping", "help"}, ConfigKey: "bots[0]"},
		skills.BotSpec{ID: bot2, Prefix: "?", Skills: []string{"echo"}, ConfigKey: "bots[1]"},
	)
	ctx := context.Background()
	both := []id.UserID{bot1, bot2}
	e.Handle(ctx, msg("!ping"), both)
	e.Handle(ctx, msg("?echo hi"), both)
	e.Handle(ctx, msg("!echo hi"), both) // echo is not bot1's, prefix ! is not bot2's
	e.Handle(ctx, msg("?help"), both)
	want := []string{
		"@opsbot:x: pong",
		"@second:x: hi",
		"@opsbot:x: Unknown command !echo. Send !help for the list of commands.",
		"@second:x: Unknown command ?help. Send ?help for the list of commands.",
	}
	if got := f.Bodies(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got %q", got)
	}
	// Messages from the other bot are ignored too.
	e.Handle(ctx, msgFrom(bot2, "!ping"), both)
	if len(f.Bodies()) != 4 {
		t.Fatal("bot answered another bot")
	}
}

// testSkill exercises the matchers, failures and memory.
type testSkill struct {
	setupErr error
	regex    string
	seen     []string
}

func (s *testSkill) Name() string { return "test" }
func (s *testSkill) Setup(r *skills.Router, cfg skills.Config) error {
	settings := struct {
		Greeting string `yaml:"greeting"`
	}{Greeting: "hi"}
	if err := cfg.Decode(&settings); err != nil {
		return err
	}
	if s.setupErr != nil {
		return s.setupErr
	}
	r.Regex(s.regex, func(ctx context.Context, ev *skills.Event) error {
		_, err := ev.Respond(ctx, settings.Greeting+" "+ev.Arg("name"))
		return err
	})
	r.Command("fail", func(ctx context.Context, ev *skills.Event) error { return errors.New("secret internal detail") })
	r.Command("panic", func(ctx context.Context, ev *skills.Event) error { panic("boom") })
	r.Command("vip {x}", func(ctx context.Context, ev *skills.Event) error {
		_, err := ev.Respond(ctx, "welcome "+ev.Arg("x"))
		return err
	}, skills.FromUsers("@boss:x"))
	r.Command("twice", func(ctx context.Context, ev *skills.Event) error {
		ev.Respond(ctx, "one")
		ev.React(ctx, "👍")
		_, err := ev.Respond(ctx, "two")
		return err
	})
	r.Event(event.EventReaction, func(ctx context.Context, ev *skills.Event) error {
		s.seen = append(s.seen, "reaction from "+string(ev.Sender))
		return nil
	})
	r.Event(event.EventRedaction, func(ctx context.Context, ev *skills.Event) error {
		s.seen = append(s.seen, "redaction of "+string(ev.Raw.Redacts))
		return nil
	})
	r.Fallback(func(ctx context.Context, ev *skills.Event) error {
		s.seen = append(s.seen, "fallback: "+ev.Body)
		return nil
	})
	return nil
}

func testBots() skills.BotSpec {
	return skills.BotSpec{ID: bot1, Prefix: "!", Skills: []string{"test"}, ConfigKey: "bots[0]"}
}

func TestMatchersFailuresAndConstraints(t *testing.T) {
	ts := &testSkill{regex: `(?i)^hello (?P<name>\w+)`}
	var node yaml.Node
	_ = yaml.Unmarshal([]byte("greeting: howdy"), &node)
	e, f := newEngine(t, []skills.Skill{ts}, map[string]yaml.Node{"test": *node.Content[0]}, testBots())
	ctx := context.Background()
	room := []id.UserID{bot1}
	e.Handle(ctx, msg("Hello World"), room)
	e.Handle(ctx, msg("!fail"), room)
	e.Handle(ctx, msg("!panic"), room)
	e.Handle(ctx, msg("!vip me"), room)
	e.Handle(ctx, msgFrom("@boss:x", "!vip boss"), room)
	e.Handle(ctx, msg("just chatting"), room)
	e.Handle(ctx, &event.Event{Type: event.EventReaction, Sender: "@alice:x", RoomID: "!room:x", ID: "$r",
		Content: event.Content{Parsed: &event.ReactionEventContent{}}}, room)
	e.Handle(ctx, &event.Event{Type: event.EventRedaction, Sender: "@alice:x", RoomID: "!room:x", ID: "$red", Redacts: "$r",
		Content: event.Content{Parsed: &event.RedactionEventContent{}}}, room)
	want := []string{
		"@opsbot:x: howdy World",
		"@opsbot:x: Sorry, the test skill failed while handling that. The error has been logged.",
		"@opsbot:x: Sorry, the test skill failed while handling that. The error has been logged.",
		"@opsbot:x: You are not allowed to use !vip here.",
		"@opsbot:x: welcome boss",
	}
	got := f.Bodies()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got %q", got)
	}
	if strings.Join(ts.seen, "|") != "fallback: just chatting|reaction from @alice:x|redaction of $r" {
		t.Fatalf("seen %q", ts.seen)
	}
}

func TestTxnIDsAreStablePerAction(t *testing.T) {
	ts := &testSkill{regex: "^never$"}
	e, f := newEngine(t, []skills.Skill{ts}, nil, testBots())
	e.Handle(context.Background(), msg("!twice"), []id.UserID{bot1})
	e.Handle(context.Background(), msg("!twice"), []id.UserID{bot1}) // same event again (a replay after a crash)
	if len(f.Actions) != 6 {
		t.Fatalf("sent %d", len(f.Actions))
	}
	ids := map[string]bool{}
	for i := 0; i < 3; i++ {
		if f.Actions[i].TxnID != f.Actions[i+3].TxnID {
			t.Errorf("action %d: txn IDs differ between runs: %s vs %s", i, f.Actions[i].TxnID, f.Actions[i+3].TxnID)
		}
		ids[f.Actions[i].TxnID] = true
	}
	if len(ids) != 3 {
		t.Errorf("actions of one run share txn IDs: %v", ids)
	}
	if f.Actions[1].Type != event.EventReaction {
		t.Errorf("second action should be a reaction, got %s", f.Actions[1].Type.Type)
	}
	if skills.TxnID("@a:x", "$e", "s", 1) == skills.TxnID("@b:x", "$e", "s", 1) {
		t.Error("two bots answering one event must not share txn IDs")
	}
}

func TestSetupErrors(t *testing.T) {
	f := &skilltest.Sender{}
	opts := skills.Options{Sender: f, Log: zerolog.Nop()}
	bots := []skills.BotSpec{testBots()}
	cases := []struct {
		name     string
		skill    *testSkill
		sections string
		bots     []skills.BotSpec
		want     string
	}{
		{"invalid regex", &testSkill{regex: "(unclosed"}, "", bots, `invalid regex "(unclosed"`},
		{"unknown skill", &testSkill{regex: "x"}, "", []skills.BotSpec{{ID: bot1, Skills: []string{"nope"}, ConfigKey: "bots[0]"}}, `bots[0].skills[0]: unknown skill "nope"`},
		{"unknown config key", &testSkill{regex: "x"}, "test: {greting: x}", bots, "skills.test.greting: unknown key"},
		{"section for unknown skill", &testSkill{regex: "x"}, "nope: {}", bots, `skills.nope: unknown skill "nope"`},
		{"section for unused skill", &testSkill{regex: "x"}, "echo: {}", bots, "skills.echo: no bot runs this skill"},
		{"setup error", &testSkill{regex: "x", setupErr: errors.New("needs a token")}, "", bots, "skill test: needs a token"},
		{"bad echo value", &testSkill{regex: "x"}, "echo: {max_length: 0}", []skills.BotSpec{{ID: bot1, Skills: []string{"echo"}, ConfigKey: "bots[0]"}}, "skills.echo.max_length: must be at least 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sections := map[string]yaml.Node{}
			if c.sections != "" {
				var root yaml.Node
				if err := yaml.Unmarshal([]byte(c.sections), &root); err != nil {
					t.Fatal(err)
				}
				m := root.Content[0]
				for i := 0; i < len(m.Content); i += 2 {
					sections[m.Content[i].Value] = *m.Content[i+1]
				}
			}
			_, err := skills.NewEngine(opts, []skills.Skill{c.skill, echo.New()}, sections, c.bots)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want %q, got %v", c.want, err)
			}
		})
	}
}

func TestThreadRepliesStayInThread(t *testing.T) {
	e, f := newEngine(t, nil, nil)
	ev := msg("!ping")
	ev.Content.Parsed.(*event.MessageEventContent).RelatesTo = (&event.RelatesTo{}).SetThread("$root", "$root")
	e.Handle(context.Background(), ev, []id.UserID{bot1})
	rel := f.Actions[0].Content["m.relates_to"].(map[string]any)
	if rel["rel_type"] != "m.thread" || rel["event_id"] != "$root" {
		t.Fatalf("reply left the thread: %v", rel)
	}
}

func TestEditsDoNotRerunByDefault(t *testing.T) {
	e, f := newEngine(t, nil, nil)
	ev := msg("* !ping")
	c := ev.Content.Parsed.(*event.MessageEventContent)
	c.SetEdit("$orig")
	c.NewContent = &event.MessageEventContent{MsgType: event.MsgText, Body: "!ping"}
	e.Handle(context.Background(), ev, []id.UserID{bot1})
	if len(f.Actions) != 0 {
		t.Fatalf("edit re-ran a command: %q", f.Bodies())
	}
}

func TestPermissionsAndRateLimit(t *testing.T) {
	f := &skilltest.Sender{}
	budget := 2
	e, err := skills.NewEngine(skills.Options{Sender: f, Log: zerolog.Nop(),
		Allow: func(ctx context.Context, skill string, room id.RoomID, sender id.UserID) bool {
			return !(skill == "echo" && sender == "@mallory:x")
		},
		Limit: func(room id.RoomID, sender id.UserID) (bool, bool) {
			budget--
			return budget >= 0, budget == -1
		},
	}, []skills.Skill{ping.New(), echo.New()}, nil, []skills.BotSpec{{ID: bot1, Prefix: "!", Skills: []string{"ping", "echo"}, ConfigKey: "bots[0]"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e.Handle(ctx, msgFrom("@mallory:x", "!echo hi"), []id.UserID{bot1})
	e.Handle(ctx, msg("!ping"), []id.UserID{bot1})
	e.Handle(ctx, msg("!ping"), []id.UserID{bot1})
	e.Handle(ctx, msg("!ping"), []id.UserID{bot1})
	want := []string{
		"@opsbot:x: You are not allowed to use !echo here.",
		"@opsbot:x: pong",
		"@opsbot:x: Slow down, please: I answer a limited number of commands per minute. Try again in a minute.",
	}
	if got := f.Bodies(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got %q", got)
	}
}
