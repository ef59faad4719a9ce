package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opsbot/opsbot/appservice/store/storetest"
	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

// These tests are the event path as people notice it: a room waiting for a
// room key holds back only itself, a late key resumes it at once, and a key
// never waits behind the message that needs it.

const pathBots = `
  - localpart: opsbot
    displayname: Ops Bot
    skills: [ping, help, echo, admin]
`

// undecryptable is a well-formed Megolm event from a session nobody shares,
// as an unverified or key-withholding device produces them.
func undecryptable() map[string]any {
	b := func(n int) string {
		buf := make([]byte, n)
		_, _ = rand.Read(buf)
		return base64.RawStdEncoding.EncodeToString(buf)
	}
	return map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "sender_key": b(32), "session_id": b(32),
		"device_id": "WITHHOLDER", "ciphertext": b(120)}
}

// One message whose room key never arrives, and !ping in a dozen other
// rooms right after it: every other room answers at once; the waiting room
// is visible (metrics, !status, one log line) and, at the end of
// decrypt_wait, answers that it could not decrypt.
func TestUndecryptableMessageHoldsOnlyItsRoom(t *testing.T) {
	for _, d := range storetest.Dialects {
		t.Run(d, func(t *testing.T) { testUndecryptable(t, d) })
	}
}

func testUndecryptable(t *testing.T, dbType string) {
	const decryptWait = 8 * time.Second
	w := newWorldWith(t, worldOptions{DB: dbType, Bots: pathBots, Extra: fmt.Sprintf(`encryption:
  enabled: true
  pickle_key: %s
  decrypt_wait: %s
permissions:
  admins: ['@alice:localhost']
  rate_limit: {user_per_minute: 0, room_per_minute: 0}
`, strings.Repeat("k", 32), decryptWait)})
	alice := w.HS.RegisterUser(t, "alice")
	stuck := alice.CreateRoom(t, harness.RoomOptions{Encrypted: true, Invite: []string{botID}})
	botJoined(t, alice, stuck, botID)
	var rooms []string
	for i := 0; i < 12; i++ {
		rooms = append(rooms, joinedRoom(t, alice, botID))
	}
	status := joinedRoom(t, alice, botID)

	sentAt := time.Now()
	alice.SendEvent(t, stuck, "m.room.encrypted", undecryptable())
	for _, r := range rooms {
		alice.SendText(t, r, "!ping")
	}
	var slowest time.Duration
	for _, r := range rooms {
		if pong := alice.WaitForMessage(t, r, wait, harness.From(botID)); pong.Body() != "pong" {
			t.Fatalf("room %s answered %s", r, pong)
		}
		slowest = max(slowest, time.Since(sentAt))
	}
	t.Logf("the 12 other rooms answered within %v of the undecryptable message", slowest.Round(time.Millisecond))
	if slowest > decryptWait/2 {
		t.Fatalf("the other rooms took %v: they waited for the undecryptable message", slowest)
	}
	// The waiting room shows: metrics, !status, one log line.
	w.Bot.WaitMetric(t, "opsbot_parked_rooms", 1)
	if age := w.Bot.Metric(t, "opsbot_parked_oldest_seconds"); age <= 0 {
		t.Errorf("opsbot_parked_oldest_seconds = %v while a room waits", age)
	}
	st := ask(t, alice, status, "!status", botID)
	if !strings.Contains(st.Body(), "rooms waiting: 1") || !strings.Contains(st.Body(), stuck) {
		t.Errorf("!status does not show the waiting room:\n%s", st.Body())
	}
	if n := w.Bot.CountLog("Room waits for the room key of this message", stuck); n != 1 {
		t.Errorf("%d log lines say why the room waits, want 1", n)
	}
	// At the end of decrypt_wait the sender is told, and the room goes on.
	notice := alice.WaitForEvent(t, stuck, 2*decryptWait, harness.From(botID))
	if took := time.Since(sentAt); notice.Type != "m.room.encrypted" || took < decryptWait-time.Second {
		t.Fatalf("the waiting room answered %s after %v, want an encrypted notice after decrypt_wait (%v)", notice, took, decryptWait)
	}
	w.Bot.WaitForLog(t, wait, "Could not decrypt event", `"reason":"no_session"`)
	w.Bot.WaitMetric(t, "opsbot_parked_rooms", 0)
}

// syncDelay sits between opsbot and the homeserver and holds back the
// answers of /sync that carry to-device events (room keys) by delay: the
// key reaches the bot seconds after the message it unlocks.
type syncDelay struct {
	delay time.Duration
	mu    sync.Mutex
	held  int
}

func (d *syncDelay) via(t *testing.T) func(hs *harness.Homeserver) string {
	return func(hs *harness.Homeserver) string {
		target, _ := url.Parse(hs.URL)
		p := httputil.NewSingleHostReverseProxy(target)
		p.ModifyResponse = func(resp *http.Response) error {
			if !strings.HasSuffix(resp.Request.URL.Path, "/sync") || resp.StatusCode != 200 {
				return nil
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
			if bytes.Contains(body, []byte(`"m.room.encrypted"`)) {
				d.mu.Lock()
				d.held++
				d.mu.Unlock()
				time.Sleep(d.delay)
			}
			return nil
		}
		srv := httptest.NewServer(p)
		t.Cleanup(srv.Close)
		return srv.URL
	}
}

// A room key that comes seconds after its message (sync key delivery):
// the room parks, and the moment the key arrives the bot answers that
// message, decrypted, and the room's later messages after it, in order.
func TestLateRoomKey(t *testing.T) {
	const delay = 4 * time.Second
	d := &syncDelay{delay: delay}
	w := newWorldVia(t, "sqlite", pathBots, "permissions:\n  admins: ['@alice:localhost']\n", d.via(t))
	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	room := nio.CreateRoom(true, botID)
	botJoined(t, alice, room, botID)
	other := joinedRoom(t, alice, botID)

	start := time.Now()
	nio.Send(room, "!echo first")
	nio.Send(room, "!echo second")
	// Another room is not held back meanwhile.
	if pong := ask(t, alice, other, "!ping", botID); pong.Body() != "pong" || time.Since(start) > delay {
		t.Fatalf("another room answered %s after %v", pong, time.Since(start))
	}
	first := nio.WaitMessage(room, botID, wait)
	took := time.Since(start)
	second := nio.WaitMessage(room, botID, wait)
	if first.Body != "first" || second.Body != "second" || !first.Encrypted {
		t.Fatalf("answers %q then %q, want first then second, encrypted", first.Body, second.Body)
	}
	if took < delay-500*time.Millisecond {
		t.Fatalf("answered after %v, before the key could have come (held %v): the test did not hold it back", took, delay)
	}
	if took > delay+5*time.Second {
		t.Fatalf("answered %v after the key came: the room did not resume at once", took-delay)
	}
	d.mu.Lock()
	held := d.held
	d.mu.Unlock()
	if held == 0 {
		t.Fatal("no /sync with a room key was held back")
	}
	w.Bot.WaitForLog(t, wait, "Room waits for the room key of this message")
	if n := w.Bot.Metric(t, `opsbot_decryptions_total{bot="`+botID+`",outcome="late_key"}`); n < 1 {
		t.Errorf("late_key decryptions = %v", n)
	}
	t.Logf("answered %v after the message, the key held back %v", took.Round(time.Millisecond), delay)
}
