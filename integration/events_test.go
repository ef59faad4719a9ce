package integration

import (
	"strings"
	"testing"

	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

const tourBots = `
  - localpart: opsbot
    displayname: Ops Bot
    skills: [ping, help, echo, tour]
`

func relOf(e harness.Event) map[string]any {
	rel, _ := e.Content["m.relates_to"].(map[string]any)
	return rel
}

// botEvent waits for the next event of a type from the bot, as u sees it.
func botEvent(t *testing.T, u *harness.User, room, typ string) harness.Event {
	t.Helper()
	return u.WaitForEvent(t, room, wait, harness.All(harness.From(botID), harness.OfType(typ)))
}

// Every event type out (sent by a skill) and in (seen by a skill), in a
// plain room, against Dendrite.
func TestEventsPlainRoom(t *testing.T) {
	w := newWorld(t, "sqlite", tourBots, "")
	alice := w.HS.RegisterUser(t, "alice")
	bob := w.HS.RegisterUser(t, "bob")
	room := alice.CreateRoom(t, harness.RoomOptions{Invite: []string{botID, bob.ID},
		PowerLevels: map[string]any{"users": map[string]any{alice.ID: 100, botID: 50}}})
	botJoined(t, alice, room, botID)

	// Out.
	cmd := alice.SendText(t, room, "!tour react")
	if r := botEvent(t, alice, room, "m.reaction"); relOf(r)["event_id"] != cmd || relOf(r)["key"] != "👍" {
		t.Fatalf("reaction: %v", r.Content)
	}
	alice.SendText(t, room, "!tour edit")
	draft := botEvent(t, alice, room, "m.room.message")
	edit := botEvent(t, alice, room, "m.room.message")
	if draft.Body() != "tour: draft" || relOf(edit)["rel_type"] != "m.replace" || relOf(edit)["event_id"] != draft.EventID ||
		edit.Content["m.new_content"].(map[string]any)["body"] != "tour: final" {
		t.Fatalf("edit: %v then %v", draft.Content, edit.Content)
	}
	alice.SendText(t, room, "!tour redact")
	gone := botEvent(t, alice, room, "m.room.message")
	if red := botEvent(t, alice, room, "m.room.redaction"); red.Redacts != gone.EventID && red.Content["redacts"] != gone.EventID {
		t.Fatalf("redaction %v does not redact %s", red, gone.EventID)
	}
	cmd = alice.SendText(t, room, "!tour thread")
	if m := botEvent(t, alice, room, "m.room.message"); relOf(m)["rel_type"] != "m.thread" || relOf(m)["event_id"] != cmd {
		t.Fatalf("thread: %v", m.Content)
	}
	cmd = alice.SendText(t, room, "!tour reply")
	if m := botEvent(t, alice, room, "m.room.message"); relOf(m)["m.in_reply_to"].(map[string]any)["event_id"] != cmd {
		t.Fatalf("reply: %v", m.Content)
	}
	alice.SendText(t, room, "!tour html")
	if m := botEvent(t, alice, room, "m.room.message"); m.Content["format"] != "org.matrix.custom.html" || !strings.Contains(m.Content["formatted_body"].(string), "<b>bold</b>") {
		t.Fatalf("html: %v", m.Content)
	}
	alice.SendText(t, room, "!tour typing")
	if m := botEvent(t, alice, room, "m.room.message"); m.Body() != "tour: done typing" {
		t.Fatalf("typing: %s", m)
	}
	alice.SendText(t, room, "!tour read")
	if m := botEvent(t, alice, room, "m.room.message"); m.Body() != "tour: marked read" {
		t.Fatalf("read: %s", m)
	}
	alice.SendText(t, room, "!tour poll")
	if p := botEvent(t, alice, room, "org.matrix.msc3381.poll.start"); p.Content["org.matrix.msc3381.poll.start"] == nil {
		t.Fatalf("poll: %v", p.Content)
	}
	alice.SendText(t, room, "!tour location")
	if m := botEvent(t, alice, room, "m.room.message"); m.MsgType() != "m.location" || m.Content["geo_uri"] != "geo:52.5163,13.3777" {
		t.Fatalf("location: %v", m.Content)
	}
	alice.SendText(t, room, "!tour file")
	if m := botEvent(t, alice, room, "m.room.message"); m.MsgType() != "m.file" || m.Body() != "tour.txt" || m.Content["url"] == nil {
		t.Fatalf("file: %v", m.Content)
	}
	alice.SendText(t, room, "!tour topic set by the bot")
	if s := botEvent(t, alice, room, "m.room.topic"); s.Content["topic"] != "set by the bot" {
		t.Fatalf("topic: %v", s.Content)
	}
	alice.SendText(t, room, "!tour name Bot Room")
	if s := botEvent(t, alice, room, "m.room.name"); s.Content["name"] != "Bot Room" {
		t.Fatalf("name: %v", s.Content)
	}
	quoted := alice.SendText(t, room, "hello quoted")
	alice.SendEvent(t, room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "!tour quote",
		"m.relates_to": map[string]any{"m.in_reply_to": map[string]any{"event_id": quoted}}})
	if m := botEvent(t, alice, room, "m.room.message"); m.Body() != `tour: @alice:localhost said "hello quoted"` {
		t.Fatalf("quote: %s", m)
	}

	// In.
	target := alice.SendText(t, room, "react to me")
	alice.SendEvent(t, room, "m.reaction", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": target, "key": "🎉"}})
	alice.Redact(t, room, target, "gone")
	alice.SendState(t, room, "m.room.topic", "", map[string]any{"topic": "by alice"})
	alice.SendState(t, room, "m.room.name", "", map[string]any{"name": "Alice Room"})
	alice.SendState(t, room, "m.room.avatar", "", map[string]any{"url": "mxc://localhost/avatar"})
	alice.SendEvent(t, room, "m.sticker", map[string]any{"body": "sticker", "url": "mxc://localhost/sticker", "info": map[string]any{}})
	poll := alice.SendEvent(t, room, "org.matrix.msc3381.poll.start", map[string]any{"org.matrix.msc3381.poll.start": map[string]any{
		"question": map[string]any{"org.matrix.msc1767.text": "q?"}, "kind": "org.matrix.msc3381.poll.disclosed", "max_selections": 1,
		"answers": []any{map[string]any{"id": "a", "org.matrix.msc1767.text": "a"}, map[string]any{"id": "b", "org.matrix.msc1767.text": "b"}}}})
	alice.SendEvent(t, room, "org.matrix.msc3381.poll.response", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": poll},
		"org.matrix.msc3381.poll.response": map[string]any{"answers": []string{"a"}}})
	alice.SendEvent(t, room, "org.matrix.msc3381.poll.end", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": poll}})
	alice.SendEvent(t, room, "m.room.message", map[string]any{"msgtype": "m.location", "body": "here", "geo_uri": "geo:1,2"})
	orig := alice.SendText(t, room, "typo")
	alice.SendEvent(t, room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* fixed",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "fixed"}, "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": orig}})
	alice.SendEvent(t, room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "in thread",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": orig}})
	bob.Join(t, room)
	alice.MustDo(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/typing/"+alice.ID, map[string]any{"typing": true, "timeout": 3000}, nil)
	alice.MustDo(t, "POST", "/_matrix/client/v3/rooms/"+room+"/receipt/m.read/"+orig, map[string]any{}, nil)
	// Give the bot's /sync a moment to bring typing and the receipt.
	w.Bot.WaitForLog(t, wait, `"type":"m.receipt"`)
	alice.SendText(t, room, "!tour seen")
	seen := botEvent(t, alice, room, "m.room.message").Body()
	// m.room.redaction is missing on purpose: Dendrite v0.13.8 never pushes
	// redactions to appservices (their routing is unit-tested in skills).
	for _, kind := range []string{"m.reaction", "m.room.member", "m.room.name", "m.room.topic", "m.room.avatar",
		"m.sticker", "org.matrix.msc3381.poll.start", "org.matrix.msc3381.poll.response", "org.matrix.msc3381.poll.end",
		"m.location", "edit", "thread", "m.typing", "m.receipt"} {
		if !strings.Contains(seen, kind) {
			t.Errorf("the skill did not see %s: %q", kind, seen)
		}
	}

	// Malformed content: wrong types and missing fields are survived.
	for i, content := range []string{
		`{"msgtype":"m.text","body":42}`,
		`{"msgtype":["m.text"],"body":"!ping"}`,
		`{"m.relates_to":"nope"}`,
		`"not an object"`,
		`{"msgtype":"m.hologram","body":"!ping"}`,
		`{"msgtype":"m.text","body":"` + strings.Repeat("huge ", 20000) + `"}`,
	} {
		typ := "m.room.message"
		if i == 2 {
			typ = "m.reaction"
		}
		w.Bot.PutTransaction(t, "malformed-"+string(rune('a'+i)), `{"events":[{"type":"`+typ+`","event_id":"$malformed`+string(rune('a'+i))+`:localhost","room_id":"`+room+`","sender":"@alice:localhost","origin_server_ts":1,"content":`+content+`}]}`)
	}
	if extra := sentinel(t, alice, room, botID); len(extra) != 0 {
		t.Fatalf("malformed events got answers: %v", extra)
	}
	w.Bot.WaitForLog(t, wait, "Event content does not fit its type", "$malformeda:localhost")
	w.Bot.WaitForLog(t, wait, "unknown msgtype", "m.hologram")
}

// The same kinds of events out of the bot in an encrypted room arrive
// encrypted (reactions, redactions and state excepted, as Matrix requires),
// and decrypt in a real client.
func TestEventsEncryptedRoom(t *testing.T) {
	w := newWorld(t, "sqlite", tourBots, "")
	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	room := nio.CreateRoom(true, botID)
	botJoined(t, alice, room, botID)
	expect := func(cmd string, bodies ...string) {
		t.Helper()
		nio.Send(room, cmd)
		for _, want := range bodies {
			if m := nio.WaitMessage(room, botID, wait); m.Body != want || !m.Encrypted {
				t.Fatalf("%s: got %+v, want %q encrypted", cmd, m, want)
			}
		}
	}
	expect("!tour edit", "tour: draft", "* tour: final")
	expect("!tour thread", "tour: in a thread")
	expect("!tour reply", "tour: a reply")
	expect("!tour html", "tour: bold")
	expect("!tour location", "tour: Brandenburg Gate")
	expect("!tour typing", "tour: done typing")
	nio.Send(room, "!tour file")
	if f := nio.WaitFile(room, botID, t.TempDir()+"/tour.txt", wait); !f.Encrypted {
		t.Fatalf("file sent into an encrypted room was not encrypted: %+v", f)
	}
	nio.Send(room, "!tour react")
	nio.Send(room, "!tour poll")
	nio.Send(room, "!tour redact")
	// The bot redacts its message at once: nio may get it before its
	// redaction or, in the same sync, only redacted (no message at all).
	alice.WaitForEvent(t, room, wait, harness.All(harness.From(botID), harness.OfType("m.room.redaction")))
	// alice's raw view of everything the bot sent: nothing readable but
	// reactions and redactions.
	for _, ev := range alice.Collect(t, room, 2*1e9, harness.From(botID)) {
		switch ev.Type {
		case "m.room.encrypted", "m.reaction", "m.room.redaction", "m.room.member":
		default:
			t.Errorf("the bot sent %s unencrypted into an encrypted room", ev.Type)
		}
	}
	// In: a file from nio, decrypted by the bot.
	path := t.TempDir() + "/in.txt"
	if err := writeFile(path, "encrypted file in"); err != nil {
		t.Fatal(err)
	}
	nio.SendFile(room, path, "text/plain")
	nio.Send(room, "!tour seen")
	m := nio.WaitMessage(room, botID, wait)
	if m.Body == "tour: this goes away" { // nio got it before its redaction
		m = nio.WaitMessage(room, botID, wait)
	}
	if !strings.Contains(m.Body, "m.file") {
		t.Fatalf("seen in the encrypted room: %q", m.Body)
	}
}
