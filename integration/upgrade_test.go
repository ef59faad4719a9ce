package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

const notesBots = `
  - localpart: opsbot
    displayname: Ops Bot
    skills: [ping, help, echo, notes]
`

// botLeft waits until u sees bot leave room.
func botLeft(t *testing.T, u *harness.User, room, bot string) {
	t.Helper()
	u.WaitForEvent(t, room, wait, harness.All(harness.OfType("m.room.member"), harness.From(bot), func(e harness.Event) bool {
		return e.Membership() == "leave"
	}))
}

// A public room is upgraded: the bot follows the tombstone into the new
// room by itself, its notes come along, and it leaves the old room.
func TestRoomUpgradePlain(t *testing.T) { onHomeservers(t, testRoomUpgradePlain) }

func testRoomUpgradePlain(t *testing.T, hs homeserver) {
	w := newWorldWith(t, worldOptions{HS: hs, DB: "sqlite", Bots: notesBots})
	alice := w.HS.RegisterUser(t, "alice")
	room := alice.CreateRoom(t, harness.RoomOptions{Preset: "public_chat", Invite: []string{botID}})
	botJoined(t, alice, room, botID)
	if ev := ask(t, alice, room, "!note add before the upgrade", botID); ev.Body() != "Noted (1)." {
		t.Fatalf("got %s", ev)
	}
	newRoom := alice.UpgradeRoom(t, room, "10")
	botJoined(t, alice, newRoom, botID)
	botLeft(t, alice, room, botID)
	if ev := ask(t, alice, newRoom, "!note list", botID); ev.Body() != "1. before the upgrade" {
		t.Fatalf("notes in the new room: %s", ev)
	}
	if ev := ask(t, alice, newRoom, "!ping", botID); ev.Body() != "pong" {
		t.Fatalf("got %s", ev)
	}
}

// An encrypted, invite-only room is upgraded: the bot cannot join the new
// room until invited, then accepts the invite, takes its notes along, and
// answers encrypted there.
func TestRoomUpgradeEncrypted(t *testing.T) { onHomeservers(t, testRoomUpgradeEncrypted) }

func testRoomUpgradeEncrypted(t *testing.T, hs homeserver) {
	w := newWorldWith(t, worldOptions{HS: hs, DB: "sqlite", Bots: notesBots})
	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	room := nio.CreateRoom(true, botID)
	botJoined(t, alice, room, botID)
	nio.Send(room, "!note add secret plan")
	if m := nio.WaitMessage(room, botID, wait); m.Body != "Noted (1)." || !m.Encrypted {
		t.Fatalf("got %+v", m)
	}
	newRoom := alice.UpgradeRoom(t, room, "10")
	w.Bot.WaitForLog(t, wait, "Cannot join the replacement room yet")
	alice.Invite(t, newRoom, botID)
	botJoined(t, alice, newRoom, botID)
	botLeft(t, alice, room, botID)
	nio.Join(newRoom) // nio's client follows the upgrade like Element does
	nio.Send(newRoom, "!note list")
	if m := nio.WaitMessage(newRoom, botID, wait); m.Body != "1. secret plan" || !m.Encrypted {
		t.Fatalf("notes in the new room: %+v", m)
	}
}

// Memory kept in room state survives losing opsbot's database entirely.
func TestRoomStateMemorySurvivesDatabaseLoss(t *testing.T) {
	w := newWorld(t, "sqlite", notesBots, "memory:\n  in_room_state: [notes]\n")
	alice := w.HS.RegisterUser(t, "alice")
	room := alice.CreateRoom(t, harness.RoomOptions{Invite: []string{botID},
		PowerLevels: map[string]any{"users": map[string]any{alice.ID: 100, botID: 50}}})
	botJoined(t, alice, room, botID)
	if ev := ask(t, alice, room, "!note add kept in the room", botID); ev.Body() != "Noted (1)." {
		t.Fatalf("got %s", ev)
	}
	var state map[string]any
	alice.State(t, room, "org.opsbot.memory", "notes:notes", &state)
	if !strings.Contains(strings.Join(strings.Fields(toJSON(state)), ""), "keptintheroom") {
		t.Fatalf("memory is not in the room state: %v", state)
	}
	w.Bot.Stop()
	matches, _ := filepath.Glob(w.Bot.Cfg.Database.URI + "*")
	for _, f := range matches {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	w.Bot.Start()
	w.Bot.WaitForLog(t, wait, "Learned rooms the bot was already in")
	if ev := ask(t, alice, room, "!note list", botID); ev.Body() != "1. kept in the room" {
		t.Fatalf("after losing the database: %s", ev)
	}
}

// Whoever may send a tombstone can point it at any room. The bot follows
// only a room whose create event names the old room as its predecessor:
// pointed at someone else's public room it joins, sees the lie, leaves
// again and moves nothing; pointed at an invite-only room, an invite from
// a user permissions.invite does not allow is refused as always.
func TestTombstoneToAnotherRoom(t *testing.T) {
	w := newWorld(t, "sqlite", notesBots, "permissions:\n  invite:\n    users: [\"@alice:localhost\"]\n")
	alice := w.HS.RegisterUser(t, "alice")
	mallory := w.HS.RegisterUser(t, "mallory")
	room := alice.CreateRoom(t, harness.RoomOptions{Preset: "public_chat", Invite: []string{botID}})
	botJoined(t, alice, room, botID)
	if ev := ask(t, alice, room, "!note add stays here", botID); ev.Body() != "Noted (1)." {
		t.Fatalf("got %s", ev)
	}

	elsewhere := mallory.CreateRoom(t, harness.RoomOptions{Preset: "public_chat"})
	alice.SendState(t, room, "m.room.tombstone", "", map[string]any{"body": "moved", "replacement_room": elsewhere})
	w.Bot.WaitForLog(t, wait, "does not name this room as its predecessor", elsewhere)
	botLeft(t, mallory, elsewhere, botID)
	if ev := ask(t, alice, room, "!note list", botID); ev.Body() != "1. stays here" {
		t.Fatalf("notes after the false tombstone: %s", ev)
	}

	closed := mallory.CreateRoom(t, harness.RoomOptions{})
	alice.SendState(t, room, "m.room.tombstone", "", map[string]any{"body": "moved again", "replacement_room": closed})
	w.Bot.WaitForLog(t, wait, "Cannot join the replacement room yet", closed)
	mallory.Invite(t, closed, botID)
	w.Bot.WaitForLog(t, wait, "Rejected invite from a user not allowed by permissions.invite", closed)
}
