package integration

import (
	"net/url"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
)

// Commands that clients can offer (MSC4391): the bot describes each
// command in the room's state once it may, answers structured invocations
// like typed ones, and takes back the descriptions of commands a reload
// removed.
func TestCommandDescriptions(t *testing.T) {
	onHomeservers(t, testCommandDescriptions)
}

const describedType = "org.matrix.msc4391.command_description"

// descriptions reads the command descriptions in a room's state, by
// command; emptied ones (taken back) are left out.
func descriptions(t *testing.T, u *harness.User, room string) map[string]map[string]any {
	t.Helper()
	var state []struct {
		Type     string         `json:"type"`
		StateKey string         `json:"state_key"`
		Sender   string         `json:"sender"`
		Content  map[string]any `json:"content"`
	}
	u.Get(t, "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state", &state)
	out := map[string]map[string]any{}
	for _, ev := range state {
		if ev.Type != describedType || len(ev.Content) == 0 {
			continue
		}
		if ev.Sender != botID {
			t.Errorf("description %s sent by %s", ev.StateKey, ev.Sender)
		}
		cmd, _ := ev.Content["command"].(string)
		out[cmd] = ev.Content
	}
	return out
}

func commandNames(d map[string]map[string]any) []string {
	var names []string
	for n := range d {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func testCommandDescriptions(t *testing.T, hs homeserver) {
	bots := `
  - localpart: opsbot
    skills: [ping, help, echo, notes, remind]
`
	w := newWorldWith(t, worldOptions{HS: hs, DB: "sqlite", Bots: bots})
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)

	// Joined with no power to send state: the log says so, commands work.
	w.Bot.WaitForLog(t, wait, "The bot may not publish its command descriptions here")
	if ev := ask(t, alice, room, "!ping", botID); ev.Body() != "pong" {
		t.Fatalf("!ping: %s", ev)
	}
	// Given the power, the bot publishes them.
	var power map[string]any
	alice.State(t, room, "m.room.power_levels", "", &power)
	power["users"].(map[string]any)[botID] = 50
	alice.SendState(t, room, "m.room.power_levels", "", power)
	want := []string{"echo", "help", "note add", "note clear", "note forget", "note list", "ping", "remind", "remind cancel", "remind list"}
	var got map[string]map[string]any
	for deadline := time.Now().Add(wait); ; time.Sleep(200 * time.Millisecond) {
		got = descriptions(t, alice, room)
		if slices.Equal(commandNames(got), want) || time.Now().After(deadline) {
			break
		}
	}
	if !slices.Equal(commandNames(got), want) {
		t.Fatalf("described %v, want %v\n%s", commandNames(got), want, w.Bot.LogTail(20))
	}
	params := func(cmd string) string {
		var out []string
		list, _ := got[cmd]["parameters"].([]any)
		for _, p := range list {
			p := p.(map[string]any)
			schema, _ := p["schema"].(map[string]any)
			s := p["key"].(string) + ":" + schema["type"].(string)
			if p["optional"] == true {
				s += "?"
			}
			out = append(out, s)
		}
		return strings.Join(out, " ")
	}
	for cmd, wantParams := range map[string]string{"ping": "", "echo": "text:string", "note forget": "n:integer", "remind": "when:string text:string", "help": "command:string?"} {
		if p := params(cmd); p != wantParams {
			t.Errorf("%s parameters %q, want %q", cmd, p, wantParams)
		}
	}
	if got["remind"]["fi.mau.tail_parameter"] != "text" {
		t.Errorf("remind's tail parameter: %v", got["remind"])
	}
	desc, _ := got["note forget"]["description"].(map[string]any)
	if texts, _ := desc["m.text"].([]any); len(texts) == 0 || texts[0].(map[string]any)["body"] != "remove note number n" {
		t.Errorf("note forget's description: %v", got["note forget"]["description"])
	}

	// Structured invocations, as a client sends them: the same handlers.
	structured := func(body, command string, args map[string]any) harness.Event {
		c := map[string]any{"msgtype": "m.text", "body": body, "m.mentions": map[string]any{"user_ids": []string{botID}},
			"org.matrix.msc4391.command": map[string]any{"command": command, "arguments": args}}
		alice.SendEvent(t, room, "m.room.message", c)
		return alice.WaitForMessage(t, room, wait, harness.From(botID))
	}
	if ev := structured("/ping", "ping", nil); ev.Body() != "pong" {
		t.Fatalf("structured ping: %s", ev)
	}
	if ev := structured("/echo", "echo", map[string]any{"text": "said by structure"}); ev.Body() != "said by structure" {
		t.Fatalf("structured echo: %s", ev)
	}
	if ev := structured("/note add", "note add", map[string]any{"text": "typed by a client"}); !strings.Contains(ev.Body(), "Noted") {
		t.Fatalf("structured note add: %s", ev)
	}
	if ev := structured("/note forget", "note forget", map[string]any{}); !strings.Contains(ev.Body(), `the argument "n" is missing`) {
		t.Fatalf("structured note forget without n: %s", ev)
	}

	// A reload that drops a skill takes its descriptions back.
	data, err := os.ReadFile(w.Bot.CfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(data), "skills: [ping, help, echo, notes, remind]", "skills: [ping, help, echo, remind]", 1)
	if err := os.WriteFile(w.Bot.CfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := w.Bot.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	want = []string{"echo", "help", "ping", "remind", "remind cancel", "remind list"}
	for deadline := time.Now().Add(wait); ; time.Sleep(200 * time.Millisecond) {
		got = descriptions(t, alice, room)
		if slices.Equal(commandNames(got), want) || time.Now().After(deadline) {
			break
		}
	}
	if !slices.Equal(commandNames(got), want) {
		t.Fatalf("after the reload: described %v, want %v", commandNames(got), want)
	}
}
