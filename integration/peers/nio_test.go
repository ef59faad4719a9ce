package peers

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
)

// TestNioPeers has two matrix-nio (libolm) peers talk in an encrypted room
// through Dendrite: text both ways and an encrypted file, each decrypted by
// the other side.
func TestNioPeers(t *testing.T) {
	t0 := time.Now()
	step := func(what string) { t.Helper(); t.Logf("%6.2fs %s", time.Since(t0).Seconds(), what) }

	// Dendrite first, so that it still runs when the peers log out at cleanup
	// (cleanups run last-registered first).
	hs := harness.Start(t, harness.Options{})
	a, b := StartNio(t), StartNio(t)
	alice, bob := hs.RegisterUser(t, "alice"), hs.RegisterUser(t, "bob")
	step("homeserver and users ready")

	a.Login(hs.URL, alice.ID, alice.Password, "ALICENIO")
	b.Login(hs.URL, bob.ID, bob.Password, "BOBNIO")
	if a.UserID != alice.ID || a.DeviceID != "ALICENIO" || b.UserID != bob.ID || b.DeviceID != "BOBNIO" {
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
	if got.EventID != sent || got.Body != "hello 2" || got.MsgType != "m.text" || !got.Encrypted || got.Sender != bob.ID {
		t.Fatalf("alice got %+v, want event %s from %s, encrypted text \"hello 2\"", got, sent, bob.ID)
	}
	step("bob -> alice decrypted")

	// A message already received before the wait counts, and one returned
	// is not returned again.
	first, second := a.Send(room, "early 1"), a.Send(room, "early 2")
	for _, want := range []struct{ id, body string }{{first, "early 1"}, {second, "early 2"}} {
		got = b.WaitMessage(room, alice.ID, 30*time.Second)
		if got.EventID != want.id || got.Body != want.body || !got.Encrypted {
			t.Fatalf("bob got %+v, want %s %q (encrypted, in order)", got, want.id, want.body)
		}
	}
	step("buffered messages in timeline order")

	dir := t.TempDir()
	src := filepath.Join(dir, "report.bin")
	data := make([]byte, 100*1024)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	sent = a.SendFile(room, src, "application/octet-stream")
	dst := filepath.Join(dir, "received.bin")
	f := b.WaitFile(room, alice.ID, dst, 30*time.Second)
	if f.EventID != sent || f.SHA256 != hex.EncodeToString(sum[:]) || !f.Encrypted || f.Name != "report.bin" {
		t.Fatalf("bob got file %+v, want event %s, encrypted report.bin with sha256 %x", f, sent, sum)
	}
	saved, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(saved) != sum {
		t.Fatalf("the file saved to %s differs from the one sent", dst)
	}
	step("encrypted file alice -> bob, sha256 matches")

	// The same in a plain room: nothing arrives encrypted.
	plain := a.CreateRoom(false, bob.ID)
	b.Join(plain)
	if a.IsEncrypted(plain) || b.IsEncrypted(plain) {
		t.Fatalf("plain room %s: encrypted for alice %v, for bob %v", plain, a.IsEncrypted(plain), b.IsEncrypted(plain))
	}
	sent = a.Send(plain, "in the clear")
	got = b.WaitMessage(plain, alice.ID, 30*time.Second)
	if got.EventID != sent || got.Body != "in the clear" || got.Encrypted {
		t.Fatalf("bob got %+v in the plain room, want %s \"in the clear\" unencrypted", got, sent)
	}
	sent = b.SendFile(plain, src, "image/png")
	f = a.WaitFile(plain, bob.ID, filepath.Join(dir, "plain.bin"), 30*time.Second)
	if f.EventID != sent || f.SHA256 != hex.EncodeToString(sum[:]) || f.Encrypted {
		t.Fatalf("alice got file %+v in the plain room, want event %s, unencrypted, sha256 %x", f, sent, sum)
	}
	step("plain room: text and file, unencrypted")
}
