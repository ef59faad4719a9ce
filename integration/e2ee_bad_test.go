package integration

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

// Bad input on the encryption path: each case is logged (and answered where
// a person should know), nothing crashes, and other rooms carry on.
func TestEncryptionBadInput(t *testing.T) {
	enc := "encryption:\n  enabled: true\n  mode: sync\n  decrypt_wait: 2s\n  pickle_key: " + config.RandomToken() + "\n"
	w := newWorld(t, "sqlite", defaultBots, enc)
	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	room := nio.CreateRoom(true, botID)
	other := nio.CreateRoom(true, botID)
	botJoined(t, alice, room, botID)
	botJoined(t, alice, other, botID)
	nio.Send(room, "!ping")
	if m := nio.WaitMessage(room, botID, wait); m.Body != "pong" {
		t.Fatalf("got %+v", m)
	}

	// A real encrypted command, as alice's raw view saw it.
	nio.Send(room, "!echo genuine")
	raw := alice.WaitForEvent(t, room, wait, harness.All(harness.From(alice.ID), harness.OfType("m.room.encrypted")))
	if m := nio.WaitMessage(room, botID, wait); m.Body != "genuine" {
		t.Fatalf("got %+v", m)
	}
	push := func(name string, evt map[string]any) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"events": []any{evt}})
		if code := w.Bot.PutTransaction(t, fmt.Sprintf("bad-%s-%d", name, time.Now().UnixNano()), string(body)); code != 200 {
			t.Fatalf("%s: HTTP %d", name, code)
		}
	}
	copyOf := func(ev harness.Event, sender string) map[string]any {
		var m map[string]any
		_ = json.Unmarshal(ev.Raw, &m)
		m["event_id"] = fmt.Sprintf("$forged-%d:localhost", time.Now().UnixNano())
		m["room_id"] = room
		m["sender"] = sender
		return m
	}

	// 1. The same ciphertext replayed under a new event ID: Megolm's replay
	// protection refuses it, so the command does not run again.
	push("replay", copyOf(raw, alice.ID))
	// 2. alice's ciphertext claimed by bob: the session belongs to alice's
	// device, so it must not decrypt as bob's command.
	push("forged", copyOf(raw, "@bob:localhost"))
	nio.Send(room, "!echo after forgeries")
	if m := nio.WaitMessage(room, botID, wait); m.Body != "after forgeries" {
		t.Fatalf("a replayed or forged ciphertext was answered: %+v", m)
	}
	w.Bot.WaitForLog(t, wait, "Could not decrypt event", "duplicate")

	// 3. A message whose room key never comes: after decrypt_wait the bot
	// says so (encrypted), and keeps working.
	fake := copyOf(raw, alice.ID)
	content := fake["content"].(map[string]any)
	content["session_id"] = strings.Repeat("A", 43)
	push("nokey", fake)
	if m := nio.WaitMessage(room, botID, wait); !strings.Contains(m.Body, "could not decrypt your message") || !m.Encrypted {
		t.Fatalf("undecryptable message answered with %+v", m)
	}
	w.Bot.WaitForLog(t, wait, "Could not decrypt event", `"reason":"no_session"`)
	if n := w.Bot.Metric(t, `opsbot_decryptions_total{bot="`+botID+`",outcome="no_session"}`); n != 1 {
		t.Errorf("opsbot_decryptions_total{bot=%q,outcome=\"no_session\"} = %v, want 1", botID, n)
	}
	if n := w.Bot.Metric(t, `opsbot_decryptions_total{bot="`+botID+`",outcome="ok"}`); n < 2 {
		t.Errorf("successful decryptions = %v", n)
	}

	// 4. A corrupted crypto row: the room's inbound session is damaged while
	// opsbot is down. That room's next message cannot be decrypted (logged),
	// the other room is unaffected.
	w.Bot.Stop()
	db, err := sql.Open("sqlite", store.SQLiteDSN(w.Bot.Cfg.Database.URI))
	if err != nil {
		t.Fatal(err)
	}
	res, err := db.ExecContext(context.Background(), `UPDATE crypto_megolm_inbound_session SET session = X'00FF00' WHERE room_id = ?`, room)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		t.Fatal("no inbound session row to corrupt")
	}
	db.Close()
	w.Bot.Start()
	nio.Send(room, "!echo into the damaged session")
	w.Bot.WaitForLog(t, wait, "Could not decrypt event", room)
	nio.Send(other, "!echo other room")
	if m := nio.WaitMessage(other, botID, wait); m.Body != "other room" {
		t.Fatalf("other room after a corrupted session: %+v", m)
	}
	if strings.Contains(w.Bot.Log(), "panic") {
		t.Fatal("opsbot panicked on bad input")
	}
}

// A to-device event for a device opsbot does not run is dropped and logged.
func TestToDeviceForUnknownDevice(t *testing.T) {
	r := newRelay(t, botID)
	enc := "encryption:\n  enabled: true\n  mode: appservice\n  pickle_key: " + config.RandomToken() + "\n"
	w := newWorldVia(t, "sqlite", defaultBots, enc, r.via(t))
	body := `{"events":[],"de.sorunome.msc2409.to_device":[{"type":"m.room_key_request","sender":"@alice:localhost","to_user_id":"@opsbot:localhost","to_device_id":"NOTOURS","content":{"action":"request_cancellation","request_id":"x","requesting_device_id":"Y"}}]}`
	if code := w.Bot.PutTransaction(t, "unknown-device", body); code != 200 {
		t.Fatalf("HTTP %d", code)
	}
	w.Bot.WaitForLog(t, wait, "Dropped a to-device event for a device opsbot does not run", "NOTOURS")
	// Missing recipient fields: dropped at intake, the transaction still acknowledged.
	body = `{"events":[],"de.sorunome.msc2409.to_device":[{"type":"m.dummy","sender":"@alice:localhost","content":{}}]}`
	if code := w.Bot.PutTransaction(t, "no-recipient", body); code != 200 {
		t.Fatalf("HTTP %d", code)
	}
	w.Bot.WaitForLog(t, wait, "Dropped malformed event", "to_device")
}
