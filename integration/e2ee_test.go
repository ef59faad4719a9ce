package integration

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

const echobotID = "@echobot:localhost"

// e2eeBots: opsbot with the files skill, and a second bot, so that every
// check also covers two bots sharing one crypto store.
const e2eeBots = `
  - localpart: opsbot
    displayname: Ops Bot
    skills: [ping, help, echo, files]
  - localpart: echobot
    command_prefix: "?"
    skills: [echo]
`

// botJoined waits until bot has joined room, as seen by u.
func botJoined(t *testing.T, u *harness.User, room, bot string) {
	t.Helper()
	botsJoined(t, u, room, bot)
}

// lastSessionFrom returns the Megolm session ID of the next encrypted event
// from sender that u sees, failing if the sender sent anything in plaintext.
func lastSessionFrom(t *testing.T, u *harness.User, room, sender string) string {
	t.Helper()
	ev := u.WaitForEvent(t, room, wait, harness.All(harness.From(sender), func(e harness.Event) bool {
		return e.Type == "m.room.message" || e.Type == "m.room.encrypted"
	}))
	if ev.Type != "m.room.encrypted" {
		t.Fatalf("%s sent plaintext into an encrypted room: %s", sender, ev)
	}
	sid, _ := ev.Content["session_id"].(string)
	return sid
}

func TestEncryptedConversation(t *testing.T) {
	onEachWorld(t, testEncryptedConversation)
}

func testEncryptedConversation(t *testing.T, hs homeserver, dbType string) {
	w := newWorldWith(t, worldOptions{HS: hs, DB: dbType, Bots: e2eeBots})
	switch hs.Server {
	case harness.Dendrite:
		// Dendrite has neither MSC2409 nor MSC3202: auto must pick sync mode and say why.
		w.Bot.WaitForLog(t, wait, `"mode":"sync"`, "Encryption key delivery mode", "MSC3202")
		// Without encryption.dendrite_admin_token, Dendrite refuses the bots'
		// cross-signing keys: they run unsigned, and say how to fix it.
		w.Bot.WaitForLog(t, wait, "The bot's identity is not cross-signed", "encryption.dendrite_admin_token", `"bot":"`+botID+`"`)
		if v := w.Bot.Metric(t, `opsbot_bot_cross_signed{bot="`+botID+`"}`); v != 0 {
			t.Errorf("opsbot_bot_cross_signed = %v without an admin token, want 0", v)
		}
		if strings.Contains(w.Bot.Log(), "account_data/m.secret_storage") {
			t.Error("a refused cross-signing upload left secret storage behind")
		}
	case harness.Synapse:
		// Synapse advertises neither MSC2409 nor MSC3202 even with them on:
		// auto finds out from what it pushes, and says so.
		w.Bot.WaitForLog(t, wait, `"mode":"appservice"`, "Encryption key delivery mode", "pushed a to-device event")
		// No admin token needed: the first cross-signing upload needs no UIA (MSC3967).
		w.Bot.WaitForLogs(t, wait, 2, "Bot identity is cross-signed")
		for _, b := range []string{botID, echobotID} {
			w.Bot.WaitMetric(t, `opsbot_bot_cross_signed{bot="`+b+`"}`, 1)
		}
	}
	for _, b := range []string{botID, echobotID} {
		w.Bot.WaitMetric(t, `opsbot_bot_key_delivery{bot="`+b+`"}`, 1)
	}

	alice := w.HS.RegisterUser(t, "alice") // raw view of alice's account, for ciphertext checks
	bob := w.HS.RegisterUser(t, "bob")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	js := peers.StartJS(t)
	js.Login(w.HS.URL, bob.ID, bob.Password, "BOBJS")

	room := nio.CreateRoom(true, botID, echobotID, bob.ID)
	botJoined(t, alice, room, botID)
	botJoined(t, alice, room, echobotID)

	// Commands from both kinds of client, answered encrypted, many times.
	for i := 0; i < 5; i++ {
		want := fmt.Sprintf("nio says %d", i)
		nio.Send(room, "!echo "+want)
		if m := nio.WaitMessage(room, botID, wait); m.Body != want || !m.Encrypted {
			t.Fatalf("nio round %d: got %+v", i, m)
		}
	}
	// bob joins now, so the bot must share a key with a new member.
	js.Join(room)
	js.Send(room, "!ping")
	if m := js.WaitMessage(room, botID, wait); m.Body != "pong" || !m.Encrypted {
		t.Fatalf("js !ping: got %+v", m)
	}
	if m := nio.WaitMessage(room, botID, wait); m.Body != "pong" {
		t.Fatalf("nio should see the bot's answer to bob too, got %+v", m)
	}
	// The second bot has its own device and keys.
	js.Send(room, "?echo from the second bot")
	if m := js.WaitMessage(room, echobotID, wait); m.Body != "from the second bot" || !m.Encrypted {
		t.Fatalf("echobot: got %+v", m)
	}
	if m := nio.WaitMessage(room, echobotID, wait); m.Body != "from the second bot" {
		t.Fatalf("nio from echobot: got %+v", m)
	}

	if n := w.Bot.Metric(t, `opsbot_one_time_keys{bot="`+botID+`"}`); n < 10 {
		t.Errorf("one-time keys of the bot's device: %v, want them topped up", n)
	}

	// Restart: same devices, old and new sessions still work.
	before := botDevice(t, w.Bot, botID)
	w.Bot.Stop()
	w.Bot.Start()
	w.Bot.WaitForLog(t, wait, "Reusing the bot's encryption device", `"bot":"`+botID+`"`)
	if after := botDevice(t, w.Bot, botID); after != before {
		t.Fatalf("device changed across restart: %q -> %q", before, after)
	}
	if hs.Server == harness.Synapse {
		// What Synapse pushed is remembered: no probe on the second start.
		w.Bot.WaitForLog(t, wait, `"mode":"appservice"`, "has pushed to-device events, device lists and one-time-key counts in transactions")
	}
	nio.Send(room, "!echo after restart")
	if m := nio.WaitMessage(room, botID, wait); m.Body != "after restart" || !m.Encrypted {
		t.Fatalf("after restart: got %+v", m)
	}

	// alice adds a device: both bots' next replies must decrypt there.
	nio2 := peers.StartNio(t)
	nio2.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO2")
	nio.Send(room, "!echo two devices")
	if m := nio.WaitMessage(room, botID, wait); m.Body != "two devices" {
		t.Fatalf("first device: got %+v", m)
	}
	if m := nio2.WaitMessage(room, botID, wait); m.Body != "two devices" || !m.Encrypted {
		t.Fatalf("second device: got %+v", m)
	}
	nio.Send(room, "?echo both bots know the new device")
	if m := nio2.WaitMessage(room, echobotID, wait); m.Body != "both bots know the new device" {
		t.Fatalf("second device from echobot: got %+v", m)
	}

	// bob leaves: the bot's next message uses a new Megolm session.
	nio.Send(room, "!echo before leave")
	nio.WaitMessage(room, botID, wait)
	drain := alice.Collect(t, room, 2*time.Second, harness.From(botID))
	if len(drain) == 0 {
		t.Fatal("alice's raw view saw nothing from the bot")
	}
	oldSession := drain[len(drain)-1].Content["session_id"]
	for _, ev := range drain {
		if ev.Type != "m.room.encrypted" {
			t.Fatalf("bot sent plaintext into the encrypted room: %s", ev)
		}
	}
	js.Leave(room)
	alice.WaitForEvent(t, room, wait, harness.All(harness.OfType("m.room.member"), harness.From(bob.ID)))
	nio.Send(room, "!echo after leave")
	if m := nio.WaitMessage(room, botID, wait); m.Body != "after leave" {
		t.Fatalf("after leave: got %+v", m)
	}
	if newSession := lastSessionFrom(t, alice, room, botID); newSession == "" || newSession == oldSession {
		t.Fatalf("bob left but the bot kept Megolm session %v", oldSession)
	}

	// An encrypted file: the bot decrypts it, and sends it back encrypted.
	data := make([]byte, 100<<10)
	_, _ = rand.Read(data)
	sum := sha256.Sum256(data)
	path := filepath.Join(t.TempDir(), "blob.bin")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	nio.SendFile(room, path, "application/octet-stream")
	nio.Send(room, "!sha256")
	if m := nio.WaitMessage(room, botID, wait); !strings.Contains(m.Body, hex.EncodeToString(sum[:])) {
		t.Fatalf("!sha256 answered %+v", m)
	}
	nio.Send(room, "!mirror")
	f := nio.WaitFile(room, botID, filepath.Join(t.TempDir(), "back.bin"), wait)
	if f.SHA256 != hex.EncodeToString(sum[:]) || !f.Encrypted {
		t.Fatalf("mirrored file: %+v", f)
	}
}

// A stop at any moment of start-up (SIGTERM or SIGKILL, while devices,
// keys and cross-signing are being set up) leaves nothing that keeps the
// next start from finishing the job: same device, cross-signed, answering.
func TestStopDuringStartUp(t *testing.T) {
	w := newWorldWith(t, worldOptions{HS: synapseHS, DB: "sqlite", Bots: defaultBots})
	alice := w.HS.RegisterUser(t, "alice")
	// Ready comes before the devices are up: stop at once, or a little
	// later, each time somewhere else in the set-up.
	for i, delay := range []time.Duration{0, 0, 40, 80, 120, 160, 220, 300} {
		time.Sleep(delay * time.Millisecond)
		if i%2 == 0 {
			w.Bot.Kill()
		} else {
			w.Bot.Stop()
		}
		w.Bot.Start()
	}
	w.Bot.WaitForLog(t, wait, "Bot identity is cross-signed")
	w.Bot.WaitMetric(t, `opsbot_bot_cross_signed{bot="`+botID+`"}`, 1)
	if n := w.Bot.CountLog("Created the bot's encryption device"); n != 1 {
		t.Errorf("the bot's device was created %d times, want once", n)
	}
	room := joinedRoom(t, alice, botID)
	if pong := ask(t, alice, room, "!ping", botID); pong.Body() != "pong" {
		t.Fatalf("!ping answered %s", pong)
	}
}
