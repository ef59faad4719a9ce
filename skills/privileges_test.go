package skills_test

import (
	"context"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/skilltest"
)

// A skill redacts and edits only the bot's own events, and pings only
// whom it names, unless the host grants it more.
func TestPrivileges(t *testing.T) {
	for _, tc := range []struct {
		name   string
		grant  skills.Privileges
		act    func(ctx context.Context, ev *skills.Event) (id.EventID, error)
		refuse string // "" when the action must go through
	}{
		{"redact own", skills.Privileges{}, func(ctx context.Context, ev *skills.Event) (id.EventID, error) {
			sent, _ := ev.Respond(ctx, "mine")
			return ev.Redact(ctx, sent, "")
		}, ""},
		{"redact another's", skills.Privileges{}, func(ctx context.Context, ev *skills.Event) (id.EventID, error) {
			return ev.Redact(ctx, "$alices", "spam")
		}, "skill s may redact only the bot's own events (permissions.skills.s.redact_others)"},
		{"redact another's, granted", skills.Privileges{RedactOthers: true}, func(ctx context.Context, ev *skills.Event) (id.EventID, error) {
			return ev.Redact(ctx, "$alices", "spam")
		}, ""},
		{"edit another's, even granted", skills.Privileges{RedactOthers: true}, func(ctx context.Context, ev *skills.Event) (id.EventID, error) {
			return ev.Edit(ctx, "$alices", "rewritten")
		}, "a bot edits only its own messages"},
		{"room mention", skills.Privileges{}, func(ctx context.Context, ev *skills.Event) (id.EventID, error) {
			return ev.Send(ctx, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgNotice, Body: "@room deploy", Mentions: &event.Mentions{Room: true}})
		}, "skill s may not mention the whole room (permissions.skills.s.room_mentions)"},
		{"room mention as raw JSON", skills.Privileges{}, func(ctx context.Context, ev *skills.Event) (id.EventID, error) {
			return ev.Send(ctx, event.EventMessage, map[string]any{"msgtype": "m.notice", "body": "@room", "m.mentions": map[string]any{"room": true}})
		}, "may not mention the whole room"},
		{"room mention, granted", skills.Privileges{RoomMentions: true}, func(ctx context.Context, ev *skills.Event) (id.EventID, error) {
			return ev.Send(ctx, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgNotice, Body: "@room deploy", Mentions: &event.Mentions{Room: true}})
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var actErr error
			s := funcSkill{"s", func(r *skills.Router) error {
				r.Command("go", func(ctx context.Context, ev *skills.Event) error {
					_, actErr = tc.act(ctx, ev)
					return nil
				})
				return nil
			}}
			f := &skilltest.Sender{Events: map[id.EventID]*event.Event{"$alices": {Sender: "@alice:x"}}}
			e, err := skills.NewEngine(skills.Options{Sender: f, Rooms: f, Log: zerolog.Nop(), Memory: skilltest.NewMemory(),
				Privileges: func(skill string) skills.Privileges { return tc.grant }},
				[]skills.Skill{s}, nil, []skills.BotSpec{{ID: "@bot:x", Prefix: "!", Skills: []string{"s"}, ConfigKey: "bots[0]"}})
			if err != nil {
				t.Fatal(err)
			}
			e.Handle(context.Background(), msg("!go"), []id.UserID{"@bot:x"})
			if tc.refuse == "" && actErr != nil {
				t.Fatalf("refused: %v", actErr)
			}
			if tc.refuse != "" {
				if actErr == nil || !strings.Contains(actErr.Error(), tc.refuse) {
					t.Fatalf("error %v, want %q", actErr, tc.refuse)
				}
				for _, a := range f.Actions {
					if a.Type == event.EventRedaction || strings.Contains(a.Body(), "room") || a.Content["m.new_content"] != nil {
						t.Fatalf("the refused action was sent: %v", a.Content)
					}
				}
			}
		})
	}
}

// The trust hook is asked before a matched command runs; a refusal's
// answer goes to the sender, and the handler does not run.
func TestTrustHook(t *testing.T) {
	ran := 0
	s := funcSkill{"s", func(r *skills.Router) error {
		r.Command("go", func(ctx context.Context, ev *skills.Event) error { ran++; return nil })
		return nil
	}}
	trust := false
	var asked []string
	f := &skilltest.Sender{}
	e, err := skills.NewEngine(skills.Options{Sender: f, Log: zerolog.Nop(), Memory: skilltest.NewMemory(),
		Trust: func(ctx context.Context, skill string, evt *event.Event) (bool, string) {
			asked = append(asked, skill+" "+string(evt.Sender))
			if trust {
				return true, ""
			}
			return false, "verify this session from another one"
		}},
		[]skills.Skill{s}, nil, []skills.BotSpec{{ID: "@bot:x", Prefix: "!", Skills: []string{"s"}, ConfigKey: "bots[0]"}})
	if err != nil {
		t.Fatal(err)
	}
	e.Handle(context.Background(), msg("!go"), []id.UserID{"@bot:x"})
	e.Handle(context.Background(), msg("hello"), []id.UserID{"@bot:x"}) // no match: not asked
	if ran != 0 || strings.Join(f.Bodies(), "|") != "@bot:x: verify this session from another one" {
		t.Fatalf("refused: ran %d, said %q", ran, f.Bodies())
	}
	trust = true
	e.Handle(context.Background(), msg("!go"), []id.UserID{"@bot:x"})
	if ran != 1 || len(asked) != 2 || asked[0] != "s @alice:x" {
		t.Fatalf("trusted: ran %d, asked %q", ran, asked)
	}
}

// A message the bot just sent can be edited and redacted at once, without
// asking the homeserver who sent it (it may not serve it yet); another
// bot's message cannot.
func TestOwnRecentEvents(t *testing.T) {
	var errs []error
	s := funcSkill{"s", func(r *skills.Router) error {
		r.Command("go", func(ctx context.Context, ev *skills.Event) error {
			sent, _ := ev.Respond(ctx, "draft")
			_, err := ev.Edit(ctx, sent, "final")
			errs = append(errs, err)
			_, err = ev.Redact(ctx, sent, "")
			errs = append(errs, err)
			return nil
		})
		r.Command("other {id}", func(ctx context.Context, ev *skills.Event) error {
			_, err := ev.Redact(ctx, id.EventID(ev.Arg("id")), "")
			errs = append(errs, err)
			return nil
		})
		return nil
	}}
	f := &skilltest.Sender{} // and no Rooms: nobody to ask
	e, err := skills.NewEngine(skills.Options{Sender: f, Log: zerolog.Nop(), Memory: skilltest.NewMemory()}, []skills.Skill{s}, nil,
		[]skills.BotSpec{{ID: "@a:x", Prefix: "!", Skills: []string{"s"}, ConfigKey: "bots[0]"}, {ID: "@b:x", Prefix: "?", Skills: []string{"s"}, ConfigKey: "bots[1]"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e.Handle(ctx, msg("!go"), []id.UserID{"@a:x", "@b:x"})
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("edit and redact of the bot's own new message: %v", errs)
	}
	// @a:x's message ($sent1), redacted as @b:x.
	e.Handle(ctx, msg("?other $sent1"), []id.UserID{"@a:x", "@b:x"})
	if len(errs) != 3 || errs[2] == nil || !strings.Contains(errs[2].Error(), "cannot check who sent $sent1") {
		t.Fatalf("another bot's message: %v", errs)
	}
}
