package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
)

const (
	botID = "@opsbot:localhost"
	wait  = 30 * time.Second
)

// joinedRoom has alice create a room, invite the bot, and wait for it to join.
func joinedRoom(t *testing.T, alice *harness.User, bots ...string) string {
	t.Helper()
	room := alice.CreateRoom(t, harness.RoomOptions{Invite: bots})
	for _, b := range bots {
		botJoined(t, alice, room, b)
	}
	return room
}

// ask sends a command and returns the bot's answer.
func ask(t *testing.T, u *harness.User, room, text, from string) harness.Event {
	t.Helper()
	u.SendText(t, room, text)
	return u.WaitForMessage(t, room, wait, harness.From(from))
}

// sentinel proves the bot has handled everything sent before it: events of
// one room are handled in order, so any earlier (duplicate) answer arrives
// before the sentinel's. It returns the bot's messages seen before it.
func sentinel(t *testing.T, u *harness.User, room, from string) []harness.Event {
	t.Helper()
	tag := fmt.Sprintf("sentinel-%d", time.Now().UnixNano())
	u.SendText(t, room, "!echo "+tag)
	var before []harness.Event
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		ev := u.WaitForMessage(t, room, time.Until(deadline), harness.From(from))
		if ev.Body() == tag {
			return before
		}
		before = append(before, ev)
	}
	t.Fatalf("no answer to the sentinel %s", tag)
	return nil
}

func TestCoreConversation(t *testing.T) {
	onEachWorld(t, func(t *testing.T, hs homeserver, dbType string) {
		testCoreConversation(t, newWorldWith(t, worldOptions{HS: hs, DB: dbType, Bots: defaultBots}))
	})
}

func testCoreConversation(t *testing.T, w *world) {
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID)

	// The bot's profile is set from the config.
	var profile struct {
		Displayname string `json:"displayname"`
	}
	alice.Get(t, "/_matrix/client/v3/profile/"+botID, &profile)
	if profile.Displayname != "Ops Bot" {
		t.Errorf("bot displayname %q, want %q", profile.Displayname, "Ops Bot")
	}

	pong := ask(t, alice, room, "!ping", botID)
	if pong.Body() != "pong" || pong.MsgType() != "m.notice" {
		t.Fatalf("!ping answered %s", pong)
	}
	help := ask(t, alice, room, "!help", botID)
	for _, want := range []string{"!ping", "!echo <text...>", "!help [command]"} {
		if !strings.Contains(help.Body(), want) {
			t.Errorf("!help lacks %q: %q", want, help.Body())
		}
	}
	if hint := ask(t, alice, room, "!deploy now", botID); !strings.Contains(hint.Body(), "Unknown command !deploy") {
		t.Errorf("unknown command answered %s", hint)
	}
	if usage := ask(t, alice, room, "!echo", botID); usage.Body() != "Usage: !echo <text...>" {
		t.Errorf("bad usage answered %s", usage)
	}

	// check reports every line; Dendrite has no appservice ping, which is a
	// skip, and Synapse reaches the running opsbot.
	ping := map[harness.Server]string{harness.Dendrite: "appservice  skip", harness.Synapse: "appservice  ok"}[w.HS.Server]
	w.Bot.checkSays(t, "config      ok", "database    ok", "homeserver  ok", "as_token    ok", ping)

	// The user query is answered for our namespace only (through Dendrite).
	var resp map[string]any
	if err := alice.Do(t.Context(), "GET", "/_matrix/client/v3/profile/@nobody:localhost", nil, &resp); err == nil {
		t.Errorf("profile of a user nobody registered: %v", resp)
	}

	// Metrics count what happened, with bounded labels.
	if n := w.Bot.Metric(t, `opsbot_transactions_total{outcome="ok"}`); n < 1 {
		t.Errorf("opsbot_transactions_total{outcome=\"ok\"} = %v", n)
	}
	if n := w.Bot.Metric(t, `opsbot_skill_invocations_total{outcome="ok",skill="ping"}`); n != 1 {
		t.Errorf("ping invocations = %v, want 1", n)
	}
	if n := w.Bot.Metric(t, `opsbot_events_total{type="m.room.message"}`); n < 4 {
		t.Errorf("message events = %v", n)
	}

	testReplayedTransaction(t, w, alice, room)
	testCrashBetweenCommands(t, w, alice, room)
}

// A transaction pushed again, even after a restart, runs no skill twice.
func testReplayedTransaction(t *testing.T, w *world, alice *harness.User, room string) {
	body := fmt.Sprintf(`{"events":[{"type":"m.room.message","event_id":"$replayed-%d:localhost","room_id":%q,"sender":"@alice:localhost","origin_server_ts":%d,"content":{"msgtype":"m.text","body":"!echo replayed"}}]}`,
		time.Now().UnixNano(), room, time.Now().UnixMilli())
	if code := w.Bot.PutTransaction(t, "replay-1", body); code != 200 {
		t.Fatalf("first push: HTTP %d", code)
	}
	alice.WaitForMessage(t, room, wait, harness.All(harness.From(botID), harness.BodyIs("replayed")))
	if code := w.Bot.PutTransaction(t, "replay-1", body); code != 200 {
		t.Fatalf("replay: HTTP %d", code)
	}
	// The same event in another transaction is not handled twice either.
	if code := w.Bot.PutTransaction(t, "replay-2", body); code != 200 {
		t.Fatalf("same event, new transaction: HTTP %d", code)
	}
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("replayed transaction answered again: %v", extra)
	}
	w.Bot.Stop()
	w.Bot.Start()
	if code := w.Bot.PutTransaction(t, "replay-1", body); code != 200 {
		t.Fatalf("replay after restart: HTTP %d", code)
	}
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("replayed transaction answered again after restart: %v", extra)
	}
}

// kill -9 between two commands loses nothing: the homeserver retries the
// second command's transaction until opsbot is back.
func testCrashBetweenCommands(t *testing.T, w *world, alice *harness.User, room string) {
	cmd := alice.SendText(t, room, "!echo before the crash")
	if ev := alice.WaitForMessage(t, room, wait, harness.From(botID)); ev.Body() != "before the crash" {
		t.Fatalf("got %s", ev)
	}
	// "Between two commands": the first one is fully handled (its reply
	// acknowledged by the homeserver, the event marked done). A kill while a
	// send is still in flight is the fault-injection suite's business.
	w.Bot.WaitForLog(t, wait, `"event_id":"`+cmd+`"`, `"message":"Handled event"`)
	w.Bot.Kill()
	alice.SendText(t, room, "!echo while down")
	time.Sleep(time.Second) // let Dendrite try (and fail) to push it
	w.Bot.Start()
	ev := alice.WaitForMessage(t, room, 90*time.Second, harness.From(botID))
	if ev.Body() != "while down" {
		t.Fatalf("after restart the bot said %s, want the answer to the command sent while it was down", ev)
	}
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("answers repeated after the crash: %v", extra)
	}
}

func TestInvitePolicy(t *testing.T) {
	w := newWorld(t, "sqlite", defaultBots, "permissions:\n  invite:\n    users: ['@alice:localhost']\n")
	alice := w.HS.RegisterUser(t, "alice")
	bob := w.HS.RegisterUser(t, "bob")

	// bob may not invite the bot: it declines, with a reason.
	bobRoom := bob.CreateRoom(t, harness.RoomOptions{Invite: []string{botID}})
	leave := bob.WaitForEvent(t, bobRoom, wait, harness.All(harness.OfType("m.room.member"), harness.From(botID)))
	// opsbot gives a reason, but Dendrite v0.13.8 drops the reason of /leave.
	if leave.Membership() != "leave" {
		t.Fatalf("bot answered bob's invite with %s (%v)", leave, leave.Content)
	}
	if !strings.Contains(w.Bot.Log(), "Rejected invite from a user not allowed by permissions.invite") {
		t.Error("rejected invite not logged")
	}

	// alice may, and the bot works there.
	room := joinedRoom(t, alice, botID)
	if ev := ask(t, alice, room, "!ping", botID); ev.Body() != "pong" {
		t.Fatalf("got %s", ev)
	}

	// When alice leaves, the bot does not stay alone in the room.
	alice.Leave(t, room)
	botUser := w.HS.AppServiceUser(w.Bot.Cfg.AppService.ASToken, botID)
	deadline := time.Now().Add(wait)
	for {
		rooms := botUser.JoinedRooms(t)
		if !contains(rooms, room) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bot still in the empty room %s", room)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestTwoBots(t *testing.T) {
	bots := defaultBots + `
  - localpart: echobot
    displayname: Echo Bot
    command_prefix: "?"
    skills: [echo, help]
`
	w := newWorld(t, "sqlite", bots, "")
	alice := w.HS.RegisterUser(t, "alice")
	room := joinedRoom(t, alice, botID, "@echobot:localhost")
	if ev := ask(t, alice, room, "?echo hi there", "@echobot:localhost"); ev.Body() != "hi there" {
		t.Fatalf("echobot said %s", ev)
	}
	if ev := ask(t, alice, room, "!ping", botID); ev.Body() != "pong" {
		t.Fatalf("opsbot said %s", ev)
	}
	help := ask(t, alice, room, "?help", "@echobot:localhost")
	if !strings.Contains(help.Body(), "?echo") || strings.Contains(help.Body(), "ping") {
		t.Fatalf("echobot's help must list its own commands only: %q", help.Body())
	}
	// Neither bot answered the other's command.
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("opsbot said more than expected: %v", extra)
	}
}

func TestBadConfigRefusesToStart(t *testing.T) {
	bin := opsbotBinary(t)
	dir := t.TempDir()
	cases := map[string]string{
		"unknown skill": `bots: [{localpart: opsbot, skills: [ping, pnig]}]`,
		"unknown key":   `bots: [{localpart: opsbot, skils: [ping]}]`,
	}
	want := map[string]string{
		"unknown skill": `bots[0].skills[1]: unknown skill "pnig"`,
		"unknown key":   `bots[0].skils: unknown key`,
	}
	for name, bots := range cases {
		path := dir + "/" + strings.ReplaceAll(name, " ", "_") + ".yaml"
		text := "homeserver: {domain: localhost, address: 'http://127.0.0.1:1'}\n" +
			"appservice: {as_token: aaaaaaaaaaaaaaaaaaaaaa, hs_token: bbbbbbbbbbbbbbbbbbbbbb}\n" +
			"database: {type: sqlite, uri: '" + dir + "/x.db'}\n" + bots + "\n"
		if err := writeFile(path, text); err != nil {
			t.Fatal(err)
		}
		out, err := runCmd(bin, "-c", path)
		if err == nil || !strings.Contains(out, want[name]) {
			t.Errorf("%s: want refusal naming %q, got err=%v\n%s", name, want[name], err, out)
		}
	}
}
