package integration

import (
	"strings"
	"testing"

	"github.com/opsbot/opsbot/integration/peers"
)

// Synapse as installed, without the experimental appservice features that
// push keys in transactions: it refuses /sync for the appservice's sender
// user, so that bot (opsbot) cannot receive keys, while other bots
// (echobot) run their own /sync and decrypt for every bot in their rooms. opsbot must say so at start-up, in check,
// in !status and in the encrypted room, and never claim it works.
func TestSynapseWithoutKeyFeatures(t *testing.T) {
	w := newWorldWith(t, worldOptions{HS: synapseDefaultHS, DB: "sqlite", Bots: `
  - localpart: opsbot
    skills: [ping, echo, admin]
  - localpart: echobot
    command_prefix: "?"
    skills: [echo]
`, Extra: "permissions:\n  admins: ['@alice:localhost']\n"})
	w.Bot.WaitForLog(t, wait, `"mode":"sync"`, "Encryption key delivery mode", "neither advertises nor pushed")
	w.Bot.WaitForLog(t, wait, "This bot's device cannot receive encryption keys", `"bot":"`+botID+`"`,
		"msc2409_to_device_messages_enabled: true", "msc3202_transaction_extensions: true")
	if n := w.Bot.CountLog("This bot's device cannot receive encryption keys", `"bot":"`+echobotID+`"`); n != 0 {
		t.Errorf("echobot, which is not the sender, was reported unable to receive keys")
	}
	w.Bot.WaitMetric(t, `opsbot_bot_key_delivery{bot="`+echobotID+`"}`, 1)
	if v := w.Bot.Metric(t, `opsbot_bot_key_delivery{bot="`+botID+`"}`); v != 0 {
		t.Errorf("opsbot_bot_key_delivery for the sender = %v, want 0", v)
	}

	out, err := w.Bot.Run("check")
	if err == nil {
		t.Errorf("check passed although the sender bot cannot receive keys:\n%s", out)
	}
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "encryption") {
			line = l
		}
	}
	for _, want := range []string{"FAIL", "refuses /sync for the appservice's sender user " + botID, "msc2409_to_device_messages_enabled: true", "msc3202_transaction_extensions: true"} {
		if !strings.Contains(line, want) {
			t.Errorf("check's encryption line lacks %q:\n%s", want, out)
		}
	}

	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	room := nio.CreateRoom(true, botID, echobotID)
	botJoined(t, alice, room, botID)
	botJoined(t, alice, room, echobotID)

	// echobot reads and answers encrypted messages through its own /sync.
	nio.Send(room, "?echo through sync")
	if m := nio.WaitMessage(room, echobotID, wait); m.Body != "through sync" || !m.Encrypted {
		t.Fatalf("echobot answered %+v", m)
	}
	// Where echobot is, its device decrypts for opsbot too.
	nio.Send(room, "!ping")
	if m := nio.WaitMessage(room, botID, wait); m.Body != "pong" || !m.Encrypted {
		t.Fatalf("opsbot answered %+v in a room with echobot", m)
	}
	// Alone, opsbot says at once (not after decrypt_wait) why it cannot
	// read, encrypted: it can send keys, only not receive them.
	alone := nio.CreateRoom(true, botID)
	botJoined(t, alice, alone, botID)
	nio.Send(alone, "!ping")
	m := nio.WaitMessage(alone, botID, wait)
	if !strings.Contains(m.Body, "cannot read encrypted messages on this homeserver") || !m.Encrypted {
		t.Fatalf("opsbot alone answered %+v", m)
	}

	// In a plain room it works as ever, and !status says what is wrong.
	plain := joinedRoom(t, alice, botID)
	if pong := ask(t, alice, plain, "!ping", botID); pong.Body() != "pong" {
		t.Fatalf("plain !ping answered %s", pong)
	}
	status := ask(t, alice, plain, "!status", botID)
	if !strings.Contains(status.Body(), botID+":") || !strings.Contains(status.Body(), "receives no encryption keys") {
		t.Errorf("!status does not say the bot receives no keys:\n%s", status.Body())
	}
}
