package peers

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
)

// TestJSPeers has two matrix-js-sdk peers talk in an encrypted room through
// Dendrite: text both ways and an encrypted file, each decrypted by the other.
func TestJSPeers(t *testing.T) {
	t0 := time.Now()
	step := func(what string) { t.Logf("%6.2fs %s", time.Since(t0).Seconds(), what) }

	// Dendrite first, so that it is still running when the peers log out at
	// cleanup; the peers compile their crypto WASM while the users register.
	hs := harness.Start(t, harness.Options{})
	a, b := StartJS(t), StartJS(t)
	alice, bob := hs.RegisterUser(t, "alice"), hs.RegisterUser(t, "bob")
	step("homeserver and users ready")

	a.Login(hs.URL, alice.ID, alice.Password, "ALICEJS")
	b.Login(hs.URL, bob.ID, bob.Password, "BOBJS")
	if a.UserID != alice.ID || a.DeviceID != "ALICEJS" || b.UserID != bob.ID || b.DeviceID != "BOBJS" {
		t.Fatalf("logins: alice %s/%s, bob %s/%s", a.UserID, a.DeviceID, b.UserID, b.DeviceID)
	}
	step("peers logged in")

	room := a.CreateRoom(true, bob.ID)
	b.Join(room)
	if !a.IsEncrypted(room) || !b.IsEncrypted(room) {
		t.Fatalf("room %s: encrypted for alice %v, for bob %v", room, a.IsEncrypted(room), b.IsEncrypted(room))
	}
	step("encrypted room created and joined")

	sent := a.Send(room, "hello 1")
	got := b.WaitMessage(room, alice.ID, 30*time.Second)
	if got.EventID != sent || got.Body != "hello 1" || got.MsgType != "m.text" || !got.Encrypted || got.Sender != alice.ID {
		t.Fatalf("bob got %+v, want event %s from %s, encrypted text \"hello 1\"", got, sent, alice.ID)
	}
	step("alice -> bob decrypted")

	sent = b.Send(room, "hello 2")
	got = a.WaitMessage(room, bob.ID, 30*time.Second)
	if got.EventID != sent || got.Body != "hello 2" || !got.Encrypted || got.Sender != bob.ID {
		t.Fatalf("alice got %+v, want event %s from %s, encrypted \"hello 2\"", got, sent, bob.ID)
	}
	step("bob -> alice decrypted")

	dir := t.TempDir()
	data := make([]byte, 100*1024)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "random.bin")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	sent = a.SendFile(room, src, "application/octet-stream")
	dst := filepath.Join(dir, "received", "random.bin")
	f := b.WaitFile(room, alice.ID, dst, 30*time.Second)
	if f.EventID != sent || f.Name != "random.bin" || !f.Encrypted || f.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("bob got file %+v, want event %s, random.bin, encrypted, sha256 %x", f, sent, sum)
	}
	if saved, err := os.ReadFile(dst); err != nil || !bytes.Equal(saved, data) {
		t.Fatalf("saved file %s differs from what was sent (read error %v)", dst, err)
	}
	step("encrypted file alice -> bob")

	// A plaintext room: the file goes up as is, with a plain url.
	plain := b.CreateRoom(false, alice.ID)
	a.Join(plain)
	if a.IsEncrypted(plain) || b.IsEncrypted(plain) {
		t.Fatalf("room %s should be unencrypted", plain)
	}
	sent = b.SendFile(plain, src, "image/png")
	f = a.WaitFile(plain, bob.ID, filepath.Join(dir, "plain.bin"), 30*time.Second)
	if f.EventID != sent || f.Encrypted || f.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("alice got file %+v, want event %s, unencrypted, sha256 %x", f, sent, sum)
	}
	sent = b.Send(plain, "plain text")
	got = a.WaitMessage(plain, bob.ID, 30*time.Second)
	if got.EventID != sent || got.Body != "plain text" || got.Encrypted {
		t.Fatalf("alice got %+v, want event %s, unencrypted \"plain text\"", got, sent)
	}
	step("plaintext room: file and text bob -> alice")

	// Logging out removes the peer's device.
	a.Do(map[string]any{"cmd": "logout"}, nil)
	var devices struct {
		Devices []struct {
			DeviceID string `json:"device_id"`
		} `json:"devices"`
	}
	alice.Get(t, "/_matrix/client/v3/devices", &devices)
	for _, d := range devices.Devices {
		if d.DeviceID == "ALICEJS" {
			t.Fatalf("device ALICEJS is still there after logout: %+v", devices)
		}
	}
	step("alice logged out")
}

// TestJSPeerNewDevice checks the js peer's view of history and of a device
// that logs in late: what came before the device logged in or joined is not
// returned, and the next message reaches the new device decrypted.
func TestJSPeerNewDevice(t *testing.T) {
	hs := harness.Start(t, harness.Options{})
	a, b := StartJS(t), StartJS(t)
	alice, bob := hs.RegisterUser(t, "alice"), hs.RegisterUser(t, "bob")
	a.Login(hs.URL, alice.ID, alice.Password, "ALICEJS")
	b.Login(hs.URL, bob.ID, bob.Password, "BOBJS")

	room := a.CreateRoom(true, bob.ID)
	if !b.IsEncrypted(room) { // bob is only invited: the invite state says so
		t.Fatalf("invited bob does not see %s as encrypted", room)
	}
	a.Send(room, "before bob joined")
	b.Join(room)
	sent := a.Send(room, "after bob joined")
	if m := b.WaitMessage(room, alice.ID, 30*time.Second); m.EventID != sent || !m.Encrypted {
		t.Fatalf("bob got %+v, want %s (\"after bob joined\")", m, sent)
	}

	// bob logs in on a second device; alice's very next message must reach it.
	b2 := StartJS(t)
	b2.Login(hs.URL, bob.ID, bob.Password, "BOBJS2")
	sent = a.Send(room, "for both devices")
	for _, p := range []*Peer{b2, b} {
		if m := p.WaitMessage(room, alice.ID, 30*time.Second); m.EventID != sent || m.Body != "for both devices" || !m.Encrypted {
			t.Fatalf("%s: got %+v, want %s (\"for both devices\")", p.DeviceID, m, sent)
		}
	}
}
