package harness_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
)

func TestConversationSurvivesRestart(t *testing.T) { onEachServer(t, conversationSurvivesRestart) }

func conversationSurvivesRestart(t *testing.T, server harness.Server) {
	hs := harness.Start(t, harness.Options{Server: server})
	alice := hs.RegisterUser(t, "alice")
	bob := hs.RegisterUser(t, "bob")
	if alice.ID != "@alice:localhost" {
		t.Fatalf("alice.ID = %q", alice.ID)
	}

	room := alice.CreateRoom(t, harness.RoomOptions{Name: "harness", Invite: []string{bob.ID}})
	if got := bob.WaitForInvite(t, 10*time.Second); got != room {
		t.Fatalf("bob invited to %q, want %q", got, room)
	}
	bob.Join(t, room)
	alice.WaitForEvent(t, room, 10*time.Second, func(e harness.Event) bool {
		return e.Type == "m.room.member" && e.Sender == bob.ID && e.Membership() == "join"
	})
	if members := alice.JoinedMembers(t, room); len(members) != 2 {
		t.Fatalf("joined members = %v, want alice and bob", members)
	}

	sent := alice.SendText(t, room, "hello")
	got := bob.WaitForMessage(t, room, 10*time.Second, harness.BodyIs("hello"))
	if got.Sender != alice.ID || got.EventID != sent {
		t.Fatalf("bob got %s, want %s from %s", got, sent, alice.ID)
	}

	// Consecutive waits see only new events: the same "hello" is not seen twice.
	alice.SendText(t, room, "second")
	if got := bob.WaitForMessage(t, room, 10*time.Second, harness.From(alice.ID)); got.Body() != "second" {
		t.Fatalf("bob's next message from alice = %s, want \"second\"", got)
	}

	began := time.Now()
	hs.Restart(t)
	t.Logf("restart took %s", time.Since(began).Round(time.Millisecond))

	sent = alice.SendText(t, room, "after restart")
	got = bob.WaitForMessage(t, room, 10*time.Second, harness.From(alice.ID))
	if got.Body() != "after restart" || got.EventID != sent {
		t.Fatalf("after restart bob got %s, want %q (%s)", got, "after restart", sent)
	}
	bob.ExpectNoEvent(t, room, 500*time.Millisecond, harness.OfType("m.room.message"))
}

func TestCrashRestart(t *testing.T) { onEachServer(t, crashRestart) }

func crashRestart(t *testing.T, server harness.Server) {
	hs := harness.Start(t, harness.Options{Server: server})
	alice := hs.RegisterUser(t, "alice")
	room := alice.CreateRoom(t, harness.RoomOptions{})
	before := alice.SendText(t, room, "before crash")
	// See Homeserver.Kill: let the event through before pulling the plug.
	alice.WaitForMessage(t, room, 10*time.Second, harness.BodyIs("before crash"))
	hs.Kill()
	if hs.Running() {
		t.Fatal("still running after Kill")
	}
	hs.Restart(t)
	// What the harness promises after a crash: the same server with its
	// data, accepting and storing new events. Whether new events reach a
	// /sync position from before the crash is up to Dendrite, so the events
	// are read back directly, for a few seconds: Dendrite answers a send
	// before the event can be read.
	after := alice.SendText(t, room, "after crash")
	for id, body := range map[string]string{before: "before crash", after: "after crash"} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			var ev struct {
				Content struct {
					Body string `json:"body"`
				} `json:"content"`
			}
			err := alice.Do(t.Context(), http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/event/"+url.PathEscape(id), nil, &ev)
			if err == nil && ev.Content.Body == body {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("event %s after the crash: body %q, error %v; want %q", id, ev.Content.Body, err, body)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func TestAppServiceRegistration(t *testing.T) { onEachServer(t, appServiceRegistration) }

func appServiceRegistration(t *testing.T, server harness.Server) {
	// A port nothing listens on: Dendrite must start although the
	// appservice is not up yet.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	asURL := "http://" + l.Addr().String()
	l.Close()

	reg := filepath.Join(t.TempDir(), "registration.yaml")
	const asToken = "as-token-harness-test"
	err = os.WriteFile(reg, fmt.Appendf(nil, `id: harness-test
url: %s
as_token: %s
hs_token: hs-token-harness-test
sender_localpart: opsbot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: '@opsbot_.*:localhost'
  aliases: []
  rooms: []
`, asURL, asToken), 0o600)
	if err != nil {
		t.Fatal(err)
	}

	hs := harness.Start(t, harness.Options{Server: server, AppServiceRegistrations: []string{reg}})

	sender := hs.AppServiceUser(asToken, hs.UserID("opsbot"))
	if id, dev := sender.WhoAmI(t); id != "@opsbot:localhost" {
		t.Fatalf("whoami as sender = %q", id)
	} else {
		t.Logf("whoami as sender: %s device %q", id, dev)
	}
	// Without ?user_id= the as_token is the sender itself.
	if id, dev := hs.AppServiceUser(asToken, "").WhoAmI(t); id != "@opsbot:localhost" {
		t.Fatalf("whoami with bare as_token = %q", id)
	} else {
		t.Logf("whoami with bare as_token: %s device %q", id, dev)
	}

	// The sender can act in rooms, and a person sees it.
	alice := hs.RegisterUser(t, "alice")
	room := alice.CreateRoom(t, harness.RoomOptions{Invite: []string{sender.ID}})
	sender.Join(t, room)
	sender.SendText(t, room, "hi from the appservice")
	got := alice.WaitForMessage(t, room, 10*time.Second, harness.From(sender.ID))
	if got.Body() != "hi from the appservice" {
		t.Fatalf("alice got %s", got)
	}
}

func TestPostgres(t *testing.T) { onEachServer(t, postgres) }

func postgres(t *testing.T, server harness.Server) {
	// Postgres is part of the test world: missing, it fails the test (in
	// harness.Start), never skips it.
	hs := harness.Start(t, harness.Options{Server: server, Postgres: true})
	alice := hs.RegisterUser(t, "alice")
	room := alice.CreateRoom(t, harness.RoomOptions{})
	alice.SendText(t, room, "on postgres")
	alice.WaitForMessage(t, room, 10*time.Second, harness.BodyIs("on postgres"))
}

func TestRoomHelpers(t *testing.T) { onEachServer(t, roomHelpers) }

func roomHelpers(t *testing.T, server harness.Server) {
	hs := harness.Start(t, harness.Options{Server: server})
	admin := hs.RegisterAdmin(t, "root")
	alice := hs.RegisterUser(t, "alice")
	alice.SetDisplayName(t, "Alice")

	room := alice.CreateRoom(t, harness.RoomOptions{
		Name: "helpers", Encrypted: true, AliasLocalpart: "helpers", Invite: []string{admin.ID},
		InitialState: []harness.StateEvent{{Type: "org.example.memory", Content: map[string]any{"k": "v"}}},
	})
	if got := admin.Join(t, "#helpers:localhost"); got != room {
		t.Fatalf("join by alias gave %q, want %q", got, room)
	}
	if m := alice.JoinedMembers(t, room); m[alice.ID].DisplayName != "Alice" || len(m) != 2 {
		t.Fatalf("joined members = %v", m)
	}
	var enc struct {
		Algorithm string `json:"algorithm"`
	}
	alice.State(t, room, "m.room.encryption", "", &enc)
	var mem map[string]any
	alice.State(t, room, "org.example.memory", "", &mem)
	if enc.Algorithm != "m.megolm.v1.aes-sha2" || mem["k"] != "v" {
		t.Fatalf("state: encryption %+v, memory %v", enc, mem)
	}

	// A second device of alice sees what the first sends.
	phone := alice.NewDevice(t)
	if phone.DeviceID == alice.DeviceID {
		t.Fatal("NewDevice reused the device ID")
	}
	id := alice.SendText(t, room, "to be redacted")
	phone.WaitForMessage(t, room, 10*time.Second, harness.BodyIs("to be redacted"))
	alice.Redact(t, room, id, "test")
	phone.WaitForEvent(t, room, 10*time.Second, func(e harness.Event) bool {
		return e.Type == "m.room.redaction" && e.Redacts == id
	})

	// Upgrades leave a tombstone pointing at the new room.
	newRoom := alice.UpgradeRoom(t, room, "10")
	tomb := phone.WaitForEvent(t, room, 10*time.Second, harness.OfType("m.room.tombstone"))
	if tomb.Content["replacement_room"] != newRoom {
		t.Fatalf("tombstone %s, want replacement %s", tomb.Raw, newRoom)
	}

	alice.Kick(t, room, admin.ID, "bye")
	admin.WaitForEvent(t, room, 10*time.Second, func(e harness.Event) bool {
		return e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey == admin.ID && e.Membership() == "leave"
	})
	for _, r := range admin.JoinedRooms(t) {
		if r == room {
			t.Fatal("admin still joined after kick")
		}
	}
}

func TestLaunchReusesDir(t *testing.T) { onEachServer(t, launchReusesDir) }

func launchReusesDir(t *testing.T, server harness.Server) {
	dir := filepath.Join(t.TempDir(), "hs")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	opts := harness.Options{Server: server, Dir: dir, Port: port}

	hs, err := harness.Launch(opts, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Stop()
	if want := fmt.Sprintf("http://127.0.0.1:%d", port); hs.URL != want {
		t.Fatalf("URL = %q, want %q", hs.URL, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	carol, err := hs.RegisterAccount(ctx, "carol", "carol's secret", false)
	if err != nil {
		t.Fatal(err)
	}
	room := carol.CreateRoom(t, harness.RoomOptions{Name: "kept"})
	carol.SendText(t, room, "before")
	if _, err := carol.AwaitEvent(ctx, room, harness.BodyIs("before")); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = carol.AwaitEvent(short, room, harness.BodyIs("never sent"))
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AwaitEvent of nothing: %v, want a deadline error", err)
	}
	if err := carol.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	secret := hs.SharedSecret
	hs.Stop()

	// A second Launch on the same Dir keeps the secret, accounts and rooms.
	hs, err = harness.Launch(opts, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Stop()
	if hs.SharedSecret != secret {
		t.Fatalf("shared secret changed across launches")
	}
	_, err = hs.RegisterAccount(ctx, "carol", "another password", false)
	if he, ok := err.(*harness.HTTPError); !ok || he.ErrCode != "M_USER_IN_USE" {
		t.Fatalf("registering carol again: %v, want M_USER_IN_USE", err)
	}
	if _, err := hs.LoginAccount(ctx, "carol", "wrong password", ""); err == nil {
		t.Fatal("login with a wrong password worked")
	}
	carol, err = hs.LoginAccount(ctx, "carol", "carol's secret", "")
	if err != nil {
		t.Fatal(err)
	}
	if rooms := carol.JoinedRooms(t); len(rooms) != 1 || rooms[0] != room {
		t.Fatalf("joined rooms after relaunch = %v, want [%s]", rooms, room)
	}
	carol.SendText(t, room, "after")
	if _, err := carol.AwaitEvent(ctx, room, harness.BodyIs("after")); err != nil {
		t.Fatal(err)
	}

	// A fixed port that is taken is a clear error.
	if _, err := harness.Launch(harness.Options{Server: server, Dir: t.TempDir(), Port: port}, nil); err == nil || !strings.Contains(err.Error(), "not free") {
		t.Fatalf("Launch on a taken port: %v", err)
	}
}

// onEachServer runs a test against Dendrite and against Synapse.
func onEachServer(t *testing.T, test func(t *testing.T, server harness.Server)) {
	for _, s := range []harness.Server{harness.Dendrite, harness.Synapse} {
		t.Run(string(s), func(t *testing.T) { test(t, s) })
	}
}
