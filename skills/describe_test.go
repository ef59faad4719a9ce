package skills_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/event/cmdschema"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/skilltest"
)

// diceSkill declares typed, described arguments and a subcommand.
func diceSkill(got *[]string) skills.Skill {
	return funcSkill{"dice", func(r *skills.Router) error {
		r.Command("roll {sides:integer} {times:integer?}", func(ctx context.Context, ev *skills.Event) error {
			*got = append(*got, "roll "+ev.Arg("sides")+" "+ev.Arg("times"))
			return nil
		}, skills.Help("roll a die"), skills.ArgHelp("sides", "how many sides"))
		r.Command("dice say {who:user_id} {text...}", func(ctx context.Context, ev *skills.Event) error {
			*got = append(*got, "say "+ev.Arg("who")+" "+ev.Arg("text"))
			return nil
		})
		return nil
	}}
}

func TestCommandDescriptions(t *testing.T) {
	var got []string
	e, _ := newEngine(t, []skills.Skill{diceSkill(&got)}, nil,
		skills.BotSpec{ID: bot1, Prefix: "!", Skills: []string{"ping", "dice"}, ConfigKey: "bots[0]"})
	var names []string
	byName := map[string]*cmdschema.EventContent{}
	for _, d := range e.Descriptions(bot1) {
		if err := d.Validate(); err != nil {
			t.Errorf("%s: %v", d.Command, err)
		}
		names = append(names, d.Command)
		byName[d.Command] = d
	}
	if strings.Join(names, ",") != "dice say,ping,roll" {
		t.Fatalf("described %v", names)
	}
	roll, _ := json.Marshal(byName["roll"])
	want := `{"command":"roll","parameters":[{"key":"sides","schema":{"schema_type":"primitive","type":"integer"},"description":{"m.text":[{"mimetype":"text/plain","body":"how many sides"}]}},` +
		`{"key":"times","schema":{"schema_type":"primitive","type":"integer"},"optional":true}],"description":{"m.text":[{"mimetype":"text/plain","body":"roll a die"}]}}`
	if string(roll) != want {
		t.Errorf("roll described as\n%s\nwant\n%s", roll, want)
	}
	if say := byName["dice say"]; say.TailParam != "text" || say.Parameters[0].Schema.Type != cmdschema.PrimitiveTypeUserID {
		t.Errorf("dice say: %+v", say)
	}
	// A typed placeholder refuses a word of another type, as text.
	e.Handle(context.Background(), msg("!roll six"), []id.UserID{bot1})
	e.Handle(context.Background(), msg("!roll 6"), []id.UserID{bot1})
	if strings.Join(got, "|") != "roll 6 " {
		t.Fatalf("runs: %q", got)
	}
}

func structured(to []id.UserID, body, command string, args any) *event.Event {
	raw, _ := json.Marshal(args)
	c := &event.MessageEventContent{MsgType: event.MsgText, Body: body, Mentions: &event.Mentions{UserIDs: to},
		MSC4391BotCommand: &event.MSC4391BotCommandInput{Command: command, Arguments: raw}}
	return &event.Event{Type: event.EventMessage, ID: id.EventID("$s" + command), RoomID: "!room:x", Sender: "@alice:x", Content: event.Content{Parsed: c}}
}

func TestStructuredInvocation(t *testing.T) {
	var got []string
	const bot2 = id.UserID("@other:x")
	e, f := newEngine(t, []skills.Skill{diceSkill(&got)}, nil,
		skills.BotSpec{ID: bot1, Prefix: "!", Skills: []string{"ping", "dice"}, ConfigKey: "bots[0]"},
		skills.BotSpec{ID: bot2, Prefix: "!", Skills: []string{"ping"}, ConfigKey: "bots[1]"})
	both := []id.UserID{bot1, bot2}
	ctx := context.Background()
	e.Handle(ctx, structured([]id.UserID{bot1}, "!roll 20 2", "roll", map[string]any{"sides": 20, "times": 2}), both)
	e.Handle(ctx, structured([]id.UserID{bot1}, "/dice say", "dice say", map[string]any{"who": "@bob:x", "text": "hello there"}), both)
	// Addressed to the other bot: only it answers, though the text is a
	// command for both.
	e.Handle(ctx, structured([]id.UserID{bot2}, "!ping", "ping", nil), both)
	if strings.Join(got, "|") != "roll 20 2|say @bob:x hello there" {
		t.Fatalf("runs: %q", got)
	}
	if b := f.Bodies(); len(b) != 1 || b[0] != "@other:x: pong" {
		t.Fatalf("answers: %q", b)
	}
	// What does not fit is answered, not run.
	for args, want := range map[string]string{
		`{"times":2}`:            `I could not run that: the argument "sides" is missing.`,
		`{"sides":"many sides"}`: `I could not run that: the argument "sides" must be one word.`,
		`{"sides":{"n":1}}`:      `I could not run that: the argument "sides" must be a string, number or boolean.`,
		`{"sides":"six"}`:        `Usage: !roll <sides:integer> [times:integer]`,
	} {
		f.Actions = nil
		var a map[string]any
		_ = json.Unmarshal([]byte(args), &a)
		e.Handle(ctx, structured([]id.UserID{bot1}, "!roll", "roll", a), both)
		if b := f.Bodies(); len(b) != 1 || b[0] != "@opsbot:x: "+want {
			t.Errorf("%s: answered %q, want %q", args, b, want)
		}
	}
	if len(got) != 2 {
		t.Fatalf("a bad invocation ran: %q", got)
	}
}

func TestArgHelpNamesAPlaceholder(t *testing.T) {
	_, err := skilltest.Setup([]skills.Skill{funcSkill{"x", func(r *skills.Router) error {
		r.Command("go {where}", func(context.Context, *skills.Event) error { return nil }, skills.ArgHelp("wehre", "typo"))
		return nil
	}}}, nil)
	if err == nil || !strings.Contains(err.Error(), `command "go {where}" has no placeholder {wehre} to describe`) {
		t.Fatalf("setup: %v", err)
	}
	_, err = skilltest.Setup([]skills.Skill{funcSkill{"x", func(r *skills.Router) error {
		r.Command("go {n:number}", func(context.Context, *skills.Event) error { return nil })
		return nil
	}}}, nil)
	if err == nil || !strings.Contains(err.Error(), `{n} has unknown type "number" (one of boolean, event_id, integer, room_alias, room_id, server_name, string, user_id)`) {
		t.Fatalf("setup: %v", err)
	}
}
