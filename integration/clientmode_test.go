package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/store/storetest"
	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

// helperID is the client-mode bot of these tests: an ordinary account,
// registered like any person's.
const helperID = "@helper:localhost"

// registerHelper registers the helper account and returns the environment
// that gives opsbot its password.
func registerHelper(t *testing.T, hs *harness.Homeserver, password string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := hs.RegisterAccount(ctx, "helper", password, false); err != nil {
		t.Fatalf("registering the helper account: %v", err)
	}
	return []string{"OPSBOT_BOT_HELPER_PASSWORD=" + password}
}

// newClientWorld starts a homeserver with no appservice installed and an
// opsbot whose config has no appservice section: one client-mode bot, its
// password from the environment.
func newClientWorld(t *testing.T, hs homeserver, dbType string) (w *world, password string) {
	t.Helper()
	h := harness.Start(t, harness.Options{ServerName: "localhost", Server: hs.Server, KeysInTransactions: hs.KeysInTransactions})
	password = config.RandomToken()
	env := registerHelper(t, h, password)
	dir := t.TempDir()
	db := storetest.Config(t, dbType)
	metricsPort := freePort(t)
	text := fmt.Sprintf(`homeserver:
  domain: localhost
  address: %s
database:
  type: %s
  uri: %q
bots:
  - localpart: helper
    displayname: Helper
    skills: [ping, help, echo]
    account: {}
encryption:
  enabled: true
  pickle_key: %s
  verification:
    allowed_users: ["@bob:localhost"]
permissions:
  # The burst below is more commands a minute than the default allows.
  rate_limit: {user_per_minute: 100}
metrics:
  listen: 127.0.0.1:%d
logging:
  level: debug
  format: json
`, h.URL, db.Type, db.URI, config.RandomToken(), metricsPort)
	cfgPath := filepath.Join(dir, "opsbot.yaml")
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err == nil || !strings.Contains(err.Error(), "OPSBOT_BOT_HELPER_PASSWORD") {
		t.Fatalf("a client-mode bot without a password must be refused, naming the variable; got %v", err)
	}
	t.Setenv("OPSBOT_BOT_HELPER_PASSWORD", password)
	if cfg, err = config.Load(cfgPath); err != nil {
		t.Fatal(err)
	}
	if cfg.HasAppServiceBots() {
		t.Fatal("the config has no appservice bots")
	}
	// No appservice section: the listener is at its default address.
	ob := newOpsbot(t, dir, cfgPath, cfg, 29333, metricsPort)
	ob.Env = env
	ob.Start()
	return &world{HS: h, Bot: ob}, password
}

// removeDevice deletes one of the account's devices from another session
// of it, as a person does in their client's session list (the password
// answers the homeserver's prompt).
func removeDevice(t *testing.T, u *harness.User, device, password string) {
	t.Helper()
	path := "/_matrix/client/v3/devices/" + device
	err := u.Do(t.Context(), http.MethodDelete, path, map[string]any{}, nil)
	var uia *harness.HTTPError
	if !errors.As(err, &uia) || uia.Status != http.StatusUnauthorized {
		t.Fatalf("deleting device %s: %v, want a password prompt", device, err)
	}
	var prompt struct {
		Session string `json:"session"`
	}
	if err := json.Unmarshal(uia.Body, &prompt); err != nil {
		t.Fatal(err)
	}
	u.MustDo(t, http.MethodDelete, path, map[string]any{"auth": map[string]any{
		"type": "m.login.password", "session": prompt.Session, "password": password,
		"identifier": map[string]string{"type": "m.id.user", "user": u.ID},
	}}, nil)
}

// botsJoined waits until every bot has joined room, in whatever order they
// do (botJoined one after the other would consume the first bot's join
// while waiting for the second's).
func botsJoined(t *testing.T, u *harness.User, room string, bots ...string) {
	t.Helper()
	missing := map[string]bool{}
	for _, b := range bots {
		missing[b] = true
	}
	for len(missing) > 0 {
		ev := u.WaitForEvent(t, room, wait, harness.All(harness.OfType("m.room.member"), func(e harness.Event) bool {
			return missing[e.Sender] && e.Membership() == "join"
		}))
		delete(missing, ev.Sender)
	}
}

// userDevices is what a person's client learns of user's devices: device
// ID to Ed25519 key.
func userDevices(t *testing.T, u *harness.User, user string) map[string]string {
	t.Helper()
	var resp struct {
		DeviceKeys map[string]map[string]struct {
			Keys map[string]string `json:"keys"`
		} `json:"device_keys"`
	}
	u.MustDo(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string][]string{user: {}}}, &resp)
	out := map[string]string{}
	for dev, keys := range resp.DeviceKeys[user] {
		out[dev] = keys.Keys["ed25519:"+dev]
	}
	return out
}

// An ordinary account runs the same bot without any admin: plain and
// encrypted conversations with both client families, its device
// cross-signed with its own password, kept across restarts, and a SIGKILL
// in a burst of commands answers each exactly once.
func TestClientMode(t *testing.T) { onEachWorld(t, testClientMode) }

func testClientMode(t *testing.T, hs homeserver, dbType string) {
	w, password := newClientWorld(t, hs, dbType)
	w.Bot.WaitForLog(t, wait, "Client-mode bot logged in", `"how":"password, new device"`)
	// Dendrite asks for the password to upload cross-signing keys: the bot
	// answers with its own, no admin token.
	w.Bot.WaitForLog(t, wait, "Bot identity is cross-signed", `"bot":"`+helperID+`"`)
	w.Bot.WaitMetric(t, `opsbot_bot_cross_signed{bot="`+helperID+`"}`, 1)
	device := strings.Trim(w.Bot.LastLogField(t, "Client-mode bot logged in", "device_id"), `"`)

	// No registration, so nothing may push transactions.
	resp, err := http.Post(w.Bot.URL+"/_matrix/app/v1/transactions/t1", "application/json", strings.NewReader(`{"events":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("a transaction to a client-mode-only opsbot got HTTP %d, want 404", resp.StatusCode)
	}

	// check says the bot runs in client mode and its login works, without
	// logging in (no second device), and that no appservice is involved.
	w.Bot.checkSays(t, "bot         ok   "+helperID+": client mode, its stored login works (device "+device+")",
		"as_token    skip no appservice bots", "appservice  skip no appservice bots")

	alice := w.HS.RegisterUser(t, "alice")
	bob := w.HS.RegisterUser(t, "bob")
	// A command from before the bot was in the room is history: an
	// appservice bot is not sent it, and neither is it run here.
	plain := alice.CreateRoom(t, harness.RoomOptions{})
	alice.SendText(t, plain, "!echo from before the bot came")
	alice.Invite(t, plain, helperID)
	botJoined(t, alice, plain, helperID)
	if ev := ask(t, alice, plain, "!ping", helperID); ev.Body() != "pong" {
		t.Fatalf("plain !ping: got %s", ev)
	}

	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	js := peers.StartJS(t)
	js.Login(w.HS.URL, bob.ID, bob.Password, "BOBJS")
	room := nio.CreateRoom(true, helperID, bob.ID)
	botJoined(t, alice, room, helperID)
	nio.Send(room, "!echo from nio")
	if m := nio.WaitMessage(room, helperID, wait); m.Body != "from nio" || !m.Encrypted {
		t.Fatalf("nio: got %+v", m)
	}
	// bob joins now: the bot shares its room key with a new member.
	js.Join(room)
	js.Send(room, "!ping")
	if m := js.WaitMessage(room, helperID, wait); m.Body != "pong" || !m.Encrypted {
		t.Fatalf("js: got %+v", m)
	}
	if m := nio.WaitMessage(room, helperID, wait); m.Body != "pong" {
		t.Fatalf("nio should see the answer to bob too, got %+v", m)
	}
	// The person's client sees the bot's device signed by its owner.
	if tr := js.DeviceTrust(helperID, device); !tr.Known || !tr.SignedByOwner {
		t.Fatalf("bob's client sees the bot's device %s as %+v, want it signed by its owner", device, tr)
	}
	// bob (with a cross-signing identity of his own) verifies the bot with
	// emoji, the operator confirming.
	js.BootstrapCrossSigning(bob.Password)
	verifyBotOf(t, w, js, helperID, device, "")
	before := userDevices(t, alice, helperID)
	if len(before) != 1 || before[device] == "" {
		t.Fatalf("the bot's account has devices %v, want only %s", before, device)
	}

	// SIGKILL in the middle of a burst: every command answered once.
	const n = 20
	for i := range n {
		alice.SendText(t, plain, fmt.Sprintf("!echo burst %d", i))
	}
	answers := map[string]int{}
	first := alice.WaitForMessage(t, plain, wait, harness.From(helperID))
	answers[first.Body()]++
	w.Bot.Kill()
	w.Bot.Start()
	w.Bot.WaitForLogs(t, wait, 1, "Client-mode bot logged in", `"how":"its stored login"`)
	w.Bot.WaitForLog(t, wait, "Reusing the bot's encryption device", `"bot":"`+helperID+`"`)
	deadline := time.Now().Add(90 * time.Second)
	for len(answers) < n && time.Now().Before(deadline) {
		for _, ev := range alice.Collect(t, plain, 2*time.Second, harness.From(helperID)) {
			answers[ev.Body()]++
		}
	}
	for _, ev := range sentinel(t, alice, plain, helperID) {
		answers[ev.Body()]++
	}
	for i := range n {
		if got := answers[fmt.Sprintf("burst %d", i)]; got != 1 {
			t.Errorf("command %d answered %d times, want once (answers: %v)", i, got, answers)
		}
	}

	// Same device, same keys: nothing new uploaded, nothing to verify again.
	if after := userDevices(t, alice, helperID); len(after) != 1 || after[device] != before[device] {
		t.Fatalf("the bot's devices changed across restarts: %v -> %v", before, after)
	}
	nio.Send(room, "!echo after the crash")
	if m := nio.WaitMessage(room, helperID, wait); m.Body != "after the crash" || !m.Encrypted {
		t.Fatalf("after restart: got %+v", m)
	}
	if m := js.WaitMessage(room, helperID, wait); m.Body != "after the crash" {
		t.Fatalf("bob after restart: got %+v", m)
	}
	if tr := js.DeviceTrust(helperID, device); !tr.SignedByOwner || !tr.CrossSigningVerified {
		t.Fatalf("after restart bob's client sees %+v, want it signed and verified", tr)
	}

	// The bot's owner removes its session (from another session of the
	// account) while opsbot runs: opsbot stops rather than stay deaf, and
	// the next start logs in again as the same device, with the same keys,
	// signed again, and talks as before.
	owner := w.HS.Login(t, "helper", password, "OWNER")
	removeDevice(t, owner, device, password)
	if err := owner.Logout(t.Context()); err != nil {
		t.Fatal(err)
	}
	// (A /sync already waiting may be held for its whole 30 s first.)
	w.Bot.WaitForLog(t, 2*wait, "The bot's login ended; stopping so that the next start logs in again")
	w.Bot.WaitExit(t, wait)
	w.Bot.Start()
	w.Bot.WaitForLog(t, wait, "Client-mode bot logged in", `"how":"password, same device"`)
	w.Bot.WaitForLog(t, wait, "forgot this device's keys", "uploading them again")
	// (The line comes just before the upload.)
	deadline = time.Now().Add(wait)
	for after := userDevices(t, alice, helperID); len(after) != 1 || after[device] != before[device]; after = userDevices(t, alice, helperID) {
		if time.Now().After(deadline) {
			t.Fatalf("after the device was removed: %v, want %s with its old key", after, device)
		}
		time.Sleep(200 * time.Millisecond)
	}
	js.Send(room, "!echo after the removal")
	if m := js.WaitMessage(room, helperID, wait); m.Body != "after the removal" || !m.Encrypted {
		t.Fatalf("after the device was removed: got %+v", m)
	}
	if tr := js.DeviceTrust(helperID, device); !tr.SignedByOwner {
		t.Fatalf("after the device was removed bob's client sees %+v", tr)
	}

	// matrix-nio keeps a removed device as gone for good, so the operator
	// gives the bot a new device: asked for while opsbot runs, done at its
	// next start, which signs the old device out and makes a new one,
	// signed by the bot's unchanged identity. nio talks to it, and bob,
	// who verified the bot, sees it verified without verifying again.
	out, err := w.Bot.Run("device", "new", helperID)
	if err != nil || !strings.Contains(out, "at its next start opsbot signs device "+device+" out") {
		t.Fatalf("device new: %v\n%s", err, out)
	}
	w.Bot.Stop()
	w.Bot.Start()
	w.Bot.WaitForLog(t, wait, "Signed the bot's old device out and forgot it", device)
	w.Bot.WaitForLogs(t, wait, 2, "Client-mode bot logged in", `"how":"password, new device"`)
	newDevice := strings.Trim(w.Bot.LastLogField(t, "Client-mode bot logged in", "device_id"), `"`)
	w.Bot.WaitForLog(t, wait, "Signed the bot's device with its self-signing key", newDevice)
	if after := userDevices(t, alice, helperID); len(after) != 1 || after[newDevice] == "" || newDevice == device {
		t.Fatalf("after device new the bot has devices %v (old %s, new %s), want only the new one", after, device, newDevice)
	}
	nio.Send(room, "!echo to the new device")
	m := nio.WaitMessage(room, helperID, wait)
	if m.Body == "after the removal" { // the answer to bob, which nio saw too
		m = nio.WaitMessage(room, helperID, wait)
	}
	if m.Body != "to the new device" || !m.Encrypted {
		t.Fatalf("nio after device new: got %+v", m)
	}
	if m := js.WaitMessage(room, helperID, wait); m.Body != "to the new device" {
		t.Fatalf("bob after device new: got %+v", m)
	}
	if tr := js.DeviceTrust(helperID, newDevice); !tr.SignedByOwner || !tr.CrossSigningVerified {
		t.Fatalf("bob's client sees the new device as %+v, want it signed by the bot's identity and verified", tr)
	}
}

// An appservice bot and a client-mode bot share a room and one opsbot:
// each answers its own commands, once, though both see every event.
func TestClientAndAppserviceBots(t *testing.T) { onHomeservers(t, testClientAndAppserviceBots) }

func testClientAndAppserviceBots(t *testing.T, hs homeserver) {
	// The password in the file this time (TestClientMode gives it in the
	// environment).
	password := config.RandomToken()
	w := newWorldWith(t, worldOptions{HS: hs, DB: "sqlite", Bots: defaultBots + `
  - localpart: helper
    command_prefix: "?"
    skills: [echo, notes]
    account:
      password: ` + password + `
`, BeforeStart: func(h *harness.Homeserver) []string { registerHelper(t, h, password); return nil }})
	w.Bot.WaitForLog(t, wait, "Bot ready", `"mode":"client"`, `"bot":"`+helperID+`"`)
	w.Bot.checkSays(t, "bot         ok   "+botID+": appservice bot", "bot         ok   "+helperID+": client mode, its stored login works",
		"as_token    ok")
	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	room := nio.CreateRoom(true, botID, helperID)
	botsJoined(t, alice, room, botID, helperID)

	nio.Send(room, "!echo for the appservice bot")
	if m := nio.WaitMessage(room, botID, wait); m.Body != "for the appservice bot" || !m.Encrypted {
		t.Fatalf("appservice bot: got %+v", m)
	}
	nio.Send(room, "?echo for the client bot")
	if m := nio.WaitMessage(room, helperID, wait); m.Body != "for the client bot" || !m.Encrypted {
		t.Fatalf("client-mode bot: got %+v", m)
	}
	// Each command once, by its own bot: the raw view counts what each
	// bot sent (both see both commands: an event both bring in is handled
	// once).
	sent := map[string]int{}
	for _, ev := range alice.Collect(t, room, 3*time.Second, harness.OfType("m.room.encrypted")) {
		sent[ev.Sender]++
	}
	if sent[botID] != 1 || sent[helperID] != 1 {
		t.Fatalf("messages sent by each bot: %v, want one each", sent)
	}

	// A room upgrade: both bots follow the tombstone, the client-mode
	// bot's notes come along, and both leave the old room.
	public := alice.CreateRoom(t, harness.RoomOptions{Preset: "public_chat", Invite: []string{botID, helperID}})
	botsJoined(t, alice, public, botID, helperID)
	if ev := ask(t, alice, public, "?note add before the upgrade", helperID); ev.Body() != "Noted (1)." {
		t.Fatalf("got %s", ev)
	}
	newRoom := alice.UpgradeRoom(t, public, "10")
	botsJoined(t, alice, newRoom, botID, helperID)
	botLeft(t, alice, public, helperID)
	if ev := ask(t, alice, newRoom, "?note list", helperID); ev.Body() != "1. before the upgrade" {
		t.Fatalf("notes in the new room: %s", ev)
	}
	if ev := ask(t, alice, newRoom, "!ping", botID); ev.Body() != "pong" {
		t.Fatalf("got %s", ev)
	}

	// New devices for both, in one command: at the next start each old
	// device is signed out, each bot comes back with a new one and talks
	// in the encrypted room.
	oldDevices := map[string]map[string]string{botID: userDevices(t, alice, botID), helperID: userDevices(t, alice, helperID)}
	out, err := w.Bot.Run("device", "new", botID, helperID)
	if err != nil || strings.Count(out, "at its next start opsbot signs device") != 2 {
		t.Fatalf("device new: %v\n%s", err, out)
	}
	w.Bot.Stop()
	w.Bot.Start()
	w.Bot.WaitForLogs(t, wait, 2, "Signed the bot's old device out and forgot it")
	w.Bot.WaitForLogs(t, wait, 2, "Created the bot's encryption device", `"bot":"`+botID+`"`)
	w.Bot.WaitForLogs(t, wait, 2, "Client-mode bot logged in", `"how":"password, new device"`)
	for bot, old := range oldDevices {
		now := userDevices(t, alice, bot)
		for dev := range old {
			if now[dev] != "" {
				t.Errorf("%s still has its old device %s (devices now %v)", bot, dev, now)
			}
		}
		if len(now) != 1 {
			t.Errorf("%s has devices %v after device new, want one new one", bot, now)
		}
	}
	nio.Send(room, "!echo from the new appservice device")
	if m := nio.WaitMessage(room, botID, wait); m.Body != "from the new appservice device" || !m.Encrypted {
		t.Fatalf("appservice bot after device new: got %+v", m)
	}
	nio.Send(room, "?echo from the new client device")
	if m := nio.WaitMessage(room, helperID, wait); m.Body != "from the new client device" || !m.Encrypted {
		t.Fatalf("client-mode bot after device new: got %+v", m)
	}
}

// Client-mode bots fail over like appservice bots: only the leader syncs;
// a standby takes over a killed leader's login and /sync position and
// answers every command once; a leader that froze and wakes up records
// nothing more.
func TestClientModeFailover(t *testing.T) { onHomeservers(t, testClientModeFailover) }

func testClientModeFailover(t *testing.T, hs homeserver) {
	w, _ := newClientWorld(t, hs, "postgres")
	a := w.Bot
	b := a.Replica(t)
	b.StartStandby()
	b.WaitForLog(t, wait, "standing by")
	alice := w.HS.RegisterUser(t, "alice")
	nio := peers.StartNio(t)
	nio.Login(w.HS.URL, alice.ID, alice.Password, "ALICENIO")
	room := nio.CreateRoom(true, helperID)
	botJoined(t, alice, room, helperID)

	answered := map[string]int{}
	send := func(from, to int) {
		for i := from; i < to; i++ {
			nio.Send(room, fmt.Sprintf("!echo command %d", i))
		}
	}
	collect := func(n int) {
		for len(answered) < n {
			m := nio.WaitMessage(room, helperID, 60*time.Second)
			answered[m.Body]++
		}
	}
	send(0, 5)
	collect(5)
	if strings.Contains(b.Log(), "/sync") {
		t.Fatal("the standby syncs the bot")
	}

	// The leader dies mid-conversation.
	a.Kill()
	send(5, 10)
	b.WaitForLog(t, wait, "This opsbot is the leader")
	b.WaitForLog(t, wait, "Client-mode bot logged in", `"how":"its stored login"`)
	b.WaitForLog(t, wait, "Resuming the bot's /sync where it stopped")
	collect(10)

	// The new leader freezes; a third replica takes over; the frozen one
	// wakes up and records nothing more.
	c := a.Replica(t)
	c.StartStandby()
	c.WaitForLog(t, wait, "standing by")
	b.Signal(syscall.SIGSTOP)
	send(10, 15)
	c.WaitForLog(t, 30*time.Second, "This opsbot is the leader")
	collect(15)
	b.Signal(syscall.SIGCONT)
	b.WaitExit(t, wait)
	nio.Send(room, "!echo sentinel")
	for {
		m := nio.WaitMessage(room, helperID, wait)
		if m.Body == "sentinel" {
			break
		}
		answered[m.Body]++
	}
	for i := range 15 {
		if n := answered[fmt.Sprintf("command %d", i)]; n != 1 {
			t.Errorf("command %d answered %d times", i, n)
		}
	}
}
