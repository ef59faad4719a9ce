package peers

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opsbot/opsbot/integration/harness"
)

// TestJSVerification has matrix-js-sdk peers cross-sign and verify each
// other through Dendrite: SAS by to-device messages (alice and bob) and in a
// DM (carol and dave), both ending with the other user's identity and device
// cross-signing verified; then a SAS one side rejects (m.mismatched_sas) and
// a request cancelled before the SAS (m.user).
func TestJSVerification(t *testing.T) {
	t0 := time.Now()
	step := func(what string) { t.Logf("%6.2fs %s", time.Since(t0).Seconds(), what) }

	hs := harness.Start(t, harness.Options{})
	a, b, c, d := StartJS(t), StartJS(t), StartJS(t), StartJS(t)
	alice, bob := hs.RegisterUser(t, "alice"), hs.RegisterUser(t, "bob")
	carol, dave := hs.RegisterUser(t, "carol"), hs.RegisterUser(t, "dave")
	a.Login(hs.URL, alice.ID, alice.Password, "ALICEJS")
	b.Login(hs.URL, bob.ID, bob.Password, "BOBJS")
	c.Login(hs.URL, carol.ID, carol.Password, "CAROLJS")
	d.Login(hs.URL, dave.ID, dave.Password, "DAVEJS")
	step("homeserver up, four peers logged in")

	room := a.CreateRoom(true, bob.ID)
	b.Join(room)
	dm := c.CreateRoom(true, dave.ID)
	d.Join(dm)
	step("encrypted DMs alice-bob and carol-dave")

	// Without cross-signing keys nobody's device is signed by its owner.
	if got := a.DeviceTrust(bob.ID, b.DeviceID); !got.Known || got.SignedByOwner || got.CrossSigningVerified || got.Verified {
		t.Fatalf("before cross-signing, alice sees bob's device as %+v; want known, nothing else", got)
	}
	if got := a.UserTrust(bob.ID); got.HasMasterKey || got.CrossSigningVerified {
		t.Fatalf("before cross-signing, alice sees bob as %+v; want no master key", got)
	}
	if got := a.DeviceTrust(bob.ID, "NOSUCHDEVICE"); got.Known {
		t.Fatalf("alice knows bob's device NOSUCHDEVICE: %+v", got)
	}

	keys := map[string]bool{}
	for _, pu := range []struct {
		p *Peer
		u *harness.User
	}{{a, alice}, {b, bob}, {c, carol}, {d, dave}} {
		k := pu.p.BootstrapCrossSigning(pu.u.Password)
		if k == "" || keys[k] {
			t.Fatalf("%s: master key %q (empty or not new)", pu.u.ID, k)
		}
		keys[k] = true
	}
	step("all four bootstrapped cross-signing")

	// Now bob's device is signed by bob, but alice has verified neither.
	if got := a.DeviceTrust(bob.ID, b.DeviceID); !got.Known || !got.SignedByOwner || got.CrossSigningVerified || got.Verified {
		t.Fatalf("after bob's bootstrap, alice sees bob's device as %+v; want signed by owner, not verified", got)
	}
	if got := a.UserTrust(bob.ID); !got.HasMasterKey || got.CrossSigningVerified || got.Verified {
		t.Fatalf("after bob's bootstrap, alice sees bob as %+v; want a master key, not verified", got)
	}
	if got := b.DeviceTrust(bob.ID, b.DeviceID); !got.SignedByOwner || !got.CrossSigningVerified {
		t.Fatalf("bob sees his own device as %+v; want cross-signed and verified", got)
	}

	// (1) To-device SAS: alice asks bob's device and starts the SAS.
	txn := a.VerifyRequestDevice(bob.ID, b.DeviceID)
	in := b.VerifyAccept(30 * time.Second)
	if in.TransactionID != txn || in.From != alice.ID || in.FromDevice != a.DeviceID {
		t.Fatalf("bob accepted %+v; want transaction %s from %s/%s", in, txn, alice.ID, a.DeviceID)
	}
	sasMatch(t, a, b)
	a.VerifyConfirm()
	b.VerifyConfirm()
	for _, p := range []*Peer{a, b} {
		if out := p.VerifyWaitDone(30 * time.Second); out.Phase != "done" {
			t.Fatalf("%s: to-device verification ended %+v, want done", p.UserID, out)
		}
	}
	step("to-device SAS alice-bob done")
	if got := a.UserTrust(bob.ID); !got.CrossSigningVerified || !got.Verified {
		t.Fatalf("after verifying, alice sees bob as %+v; want cross-signing verified", got)
	}
	if got := a.DeviceTrust(bob.ID, b.DeviceID); !got.CrossSigningVerified || !got.Verified {
		t.Fatalf("after verifying, alice sees bob's device as %+v; want cross-signing verified", got)
	}
	if got := b.UserTrust(alice.ID); !got.CrossSigningVerified {
		t.Fatalf("after verifying, bob sees alice as %+v; want cross-signing verified (SAS goes both ways)", got)
	}

	// (2) In-room SAS in the carol-dave DM.
	txn = c.VerifyRequestDM(dave.ID, dm)
	in = d.VerifyAccept(30 * time.Second)
	if in.TransactionID != txn || in.From != carol.ID {
		t.Fatalf("dave accepted %+v; want transaction %s from %s", in, txn, carol.ID)
	}
	sasMatch(t, c, d)
	c.VerifyConfirm()
	d.VerifyConfirm()
	for _, p := range []*Peer{c, d} {
		if out := p.VerifyWaitDone(30 * time.Second); out.Phase != "done" {
			t.Fatalf("%s: in-room verification ended %+v, want done", p.UserID, out)
		}
	}
	step("in-room SAS carol-dave done")
	if got := c.UserTrust(dave.ID); !got.CrossSigningVerified {
		t.Fatalf("after verifying, carol sees dave as %+v; want cross-signing verified", got)
	}
	if got := c.DeviceTrust(dave.ID, d.DeviceID); !got.CrossSigningVerified {
		t.Fatalf("after verifying, carol sees dave's device as %+v; want cross-signing verified", got)
	}
	if got := d.UserTrust(carol.ID); !got.CrossSigningVerified {
		t.Fatalf("after verifying, dave sees carol as %+v; want cross-signing verified", got)
	}
	// Bob is nothing to carol.
	if got := c.UserTrust(bob.ID); !got.HasMasterKey || got.CrossSigningVerified {
		t.Fatalf("carol sees bob as %+v; want a master key, not verified", got)
	}

	// (3) Bob says the SAS does not match: both sides end cancelled, m.mismatched_sas.
	a.VerifyRequestDevice(bob.ID, b.DeviceID)
	b.VerifyAccept(30 * time.Second)
	sasMatch(t, a, b)
	b.VerifyMismatch()
	for _, p := range []*Peer{a, b} {
		out := p.VerifyWaitDone(30 * time.Second)
		if out.Phase != "cancelled" || out.Code != "m.mismatched_sas" || out.By != bob.ID {
			t.Fatalf("%s: after bob's mismatch the verification ended %+v; want cancelled m.mismatched_sas by %s", p.UserID, out, bob.ID)
		}
		t.Logf("%s: %+v", p.UserID, out)
	}
	step("mismatched SAS cancelled on both sides")

	// (4) Dave cancels an in-room request before the SAS: carol's verify_sas fails naming m.user.
	c.VerifyRequestDM(dave.ID, dm)
	d.VerifyAccept(30 * time.Second)
	d.VerifyCancel()
	if _, err := c.TryVerifySAS(true, 15*time.Second); err == nil || !strings.Contains(err.Error(), "m.user") {
		t.Fatalf("carol's SAS after dave cancelled: error %v, want one naming m.user", err)
	}
	if out := c.VerifyWaitDone(10 * time.Second); out.Phase != "cancelled" || out.Code != "m.user" || out.By != dave.ID {
		t.Fatalf("carol: cancelled verification ended %+v; want cancelled m.user by %s", out, dave.ID)
	}
	step("request cancelled before the SAS")
}

// sasMatch takes an accepted request on to SAS, starter starting it, and
// checks that both sides show the same seven emojis and three numbers.
func sasMatch(t *testing.T, starter, other *Peer) {
	t.Helper()
	s1 := starter.VerifySAS(true, 30*time.Second)
	s2 := other.VerifySAS(false, 30*time.Second)
	if len(s1.Emojis) != 7 || len(s1.Decimals) != 3 || !reflect.DeepEqual(s1, s2) {
		t.Fatalf("SAS differs or is incomplete:\n%s: %v\n%s: %v", starter.UserID, s1, other.UserID, s2)
	}
	t.Logf("SAS %s-%s: %v %v", starter.UserID, other.UserID, s1.Emojis, s1.Decimals)
}
