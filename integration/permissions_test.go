package integration

import (
	"strings"
	"testing"

	"github.com/opsbot/opsbot/integration/harness"
)

// Per-skill permissions, rate limits with a polite notice, and the
// admin-only !status, against Dendrite.
func TestPermissionsRateLimitsAndStatus(t *testing.T) {
	bots := `
  - localpart: opsbot
    skills: [ping, help, echo, admin]
`
	extra := `permissions:
  admins: ['@alice:localhost']
  skills:
    echo: {deny_users: ['@bob:localhost']}
  rate_limit: {user_per_minute: 5, room_per_minute: 100}
`
	w := newWorld(t, "sqlite", bots, extra)
	alice := w.HS.RegisterUser(t, "alice")
	bob := w.HS.RegisterUser(t, "bob")
	carol := w.HS.RegisterUser(t, "carol")
	room := alice.CreateRoom(t, harness.RoomOptions{Invite: []string{botID, bob.ID, carol.ID}})
	botJoined(t, alice, room, botID)
	bob.Join(t, room)
	carol.Join(t, room)

	if ev := ask(t, alice, room, "!status", botID); !strings.Contains(ev.Body(), "leader: true") || !strings.Contains(ev.Body(), botID+": 1 rooms") {
		t.Fatalf("!status for an admin: %s", ev)
	}
	// bob also sees the bot's answers to alice: wait for the one meant for him.
	bob.SendText(t, room, "!status")
	bob.WaitForMessage(t, room, wait, harness.All(harness.From(botID), harness.BodyIs("You are not allowed to use !status here.")))
	bob.SendText(t, room, "!echo hi")
	bob.WaitForMessage(t, room, wait, harness.All(harness.From(botID), harness.BodyIs("You are not allowed to use !echo here.")))
	// alice has used 1 of her 5 answers a minute.
	for i := 0; i < 4; i++ {
		alice.SendText(t, room, "!ping")
		alice.WaitForMessage(t, room, wait, harness.All(harness.From(botID), harness.BodyIs("pong")))
	}
	alice.SendText(t, room, "!ping")
	alice.WaitForMessage(t, room, wait, harness.All(harness.From(botID), harness.BodyContains("Slow down, please")))
	alice.SendText(t, room, "!ping") // over the limit again: silence
	// carol saw everything the bot said; nothing may follow the notice.
	seen := sentinel(t, carol, room, botID)
	if len(seen) == 0 || !strings.HasPrefix(seen[len(seen)-1].Body(), "Slow down, please") {
		t.Fatalf("the bot answered past the limit: %v", seen)
	}
}
