package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

// encryption.command_trust as people meet it, with both client families:
// matrix-js-sdk (Rust crypto, as in Element) and matrix-nio (libolm, which
// never sets up cross-signing itself). Commands need a cross-signed
// device; echo needs a person the bot verified.

const commandTrustBots = `
  - localpart: opsbot
    displayname: Ops Bot
    skills: [ping, help, echo]
permissions:
  skills:
    echo: {command_trust: verified}
`

func TestCommandTrust(t *testing.T) {
	onHomeservers(t, testCommandTrust)
}

func testCommandTrust(t *testing.T, hs homeserver) {
	w := newWorldWith(t, worldOptions{HS: hs, DB: "sqlite", Bots: commandTrustBots, Extra: trustConfig("  command_trust: cross-signed\n")})
	w.Bot.WaitForLog(t, wait, "Bot identity is cross-signed", `"bot":"`+botID+`"`)
	dev := botDevice(t, w.Bot, botID)
	refused := func(reason string) float64 {
		return w.Bot.Metric(t, `opsbot_commands_refused_total{reason="`+reason+`"}`)
	}

	t.Run("js", func(t *testing.T) {
		// alice logs in with a new session and has not cross-signed it.
		alice := w.HS.RegisterUser(t, "alice")
		a := peers.StartJS(t)
		a.Login(w.HS.URL, alice.ID, alice.Password, "ALICEJS")
		room := a.CreateRoom(true, botID)
		botJoined(t, alice, room, botID)
		before := refused("not_cross_signed")
		a.Send(room, "!ping")
		m := a.WaitMessage(room, botID, wait)
		if !strings.Contains(m.Body, "verify this session from another one") || !strings.Contains(m.Body, "ALICEJS") || !m.Encrypted {
			t.Fatalf("answer to an unsigned session's !ping: %+v, want the explanation", m)
		}
		w.Bot.WaitForLog(t, wait, "Refused a command", `"device_id":"ALICEJS"`, `"reason":"not_cross_signed"`, `"skill":"ping"`)
		// Again within the hour: refused, counted, not explained again
		// (the next thing alice sees from the bot is the pong below).
		a.Send(room, "!ping")
		waitMetric(t, w.Bot, `opsbot_commands_refused_total{reason="not_cross_signed"}`, before+2)

		// alice cross-signs the session (as Element does when she sets up
		// or verifies it); the bot learns of it from the device list
		// change and obeys her next command.
		a.BootstrapCrossSigning(alice.Password)
		obeyed(t, a, room, "!ping", "pong")

		// A plain room: no device to check, refused
		// (command_trust_plain_rooms: refuse by default), and explained.
		plain := a.CreateRoom(false, botID)
		botJoined(t, alice, plain, botID)
		a.Send(plain, "!ping")
		if m := a.WaitMessage(plain, botID, wait); !strings.Contains(m.Body, "only take this command in encrypted rooms") || m.Encrypted {
			t.Fatalf("answer in a plain room: %+v", m)
		}
		waitMetric(t, w.Bot, `opsbot_commands_refused_total{reason="plain_room"}`, 1)
	})

	t.Run("nio", func(t *testing.T) {
		// bob's Python client has no cross-signing of its own.
		bob := w.HS.RegisterUser(t, "bob")
		b := peers.StartNio(t)
		b.Login(w.HS.URL, bob.ID, bob.Password, "BOBNIO")
		room := b.CreateRoom(true, botID)
		botJoined(t, bob, room, botID)
		b.Send(room, "!ping")
		if m := b.WaitMessage(room, botID, wait); !strings.Contains(m.Body, "verify this session from another one") || !strings.Contains(m.Body, "BOBNIO") || !m.Encrypted {
			t.Fatalf("answer to an unsigned nio session's !ping: %+v, want the explanation", m)
		}
		w.Bot.WaitForLog(t, wait, "Refused a command", `"device_id":"BOBNIO"`, `"reason":"not_cross_signed"`)
		// bob cross-signs the nio session from another session of his (a
		// client with his cross-signing keys, as Element after "verify
		// this session"); the bot obeys the nio session from then on.
		crossSignDevice(t, w.HS, bob, "BOBNIO")
		obeyed(t, b, room, "!ping", "pong")
	})

	t.Run("verified", func(t *testing.T) {
		// carol's session is cross-signed from the start, but she has not
		// verified the bot: ping (cross-signed) works, echo (verified) not.
		carol := w.HS.RegisterUser(t, "carol")
		c := peers.StartJS(t)
		c.Login(w.HS.URL, carol.ID, carol.Password, "CAROLJS")
		c.BootstrapCrossSigning(carol.Password)
		room := c.CreateRoom(true, botID)
		botJoined(t, carol, room, botID)
		obeyed(t, c, room, "!ping", "pong")
		before := refused("not_verified")
		c.Send(room, "!echo before")
		if m := c.WaitMessage(room, botID, wait); !strings.Contains(m.Body, "only take this command from people who verified me") {
			t.Fatalf("answer to an unverified person's !echo: %+v", m)
		}
		waitMetric(t, w.Bot, `opsbot_commands_refused_total{reason="not_verified"}`, before+1)
		w.Bot.WaitForLog(t, wait, "Refused a command", `"device_id":"CAROLJS"`, `"reason":"not_verified"`, `"skill":"echo"`)
		// She verifies the bot by SAS (the operator confirms): the bot signs
		// her identity, and her session is now verified in its eyes.
		verifyBot(t, w, c, dev, "")
		obeyed(t, c, room, "!echo after", "after")
	})
}

// obeyed sends text until the bot answers want: the bot may act on a
// person's cross-signing a moment after the homeserver told it (refusals
// in between are silent, the person was told already this hour).
func obeyed(t *testing.T, p *peers.Peer, room, text, want string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		p.Send(room, text)
		m, err := p.TryWaitMessage(room, botID, 4*time.Second)
		if err == nil && m.Body == want {
			return
		}
		if err == nil {
			t.Fatalf("%s sent %q, the bot answered %+v, want %q", p.UserID, text, m, want)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s sent %q, no %q from the bot within %v", p.UserID, text, want, wait)
		}
	}
}

// crossSignDevice gives user cross-signing keys and signs one of the
// user's devices with them, from a session of its own: what a person's
// other client does when it verifies a new session.
func crossSignDevice(t *testing.T, hs *harness.Homeserver, user *harness.User, device string) {
	t.Helper()
	ctx := context.Background()
	cli, err := mautrix.NewClient(hs.URL, id.UserID(user.ID), user.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	cli.DeviceID = id.DeviceID(user.DeviceID)
	newKey := func() olm.PKSigning {
		k, err := olm.NewPKSigning()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	master, self, userSigning := newKey(), newKey(), newKey()
	uid := cli.UserID
	keyOf := func(k olm.PKSigning, usage id.CrossSigningUsage) mautrix.CrossSigningKeys {
		return mautrix.CrossSigningKeys{UserID: uid, Usage: []id.CrossSigningUsage{usage},
			Keys: map[id.KeyID]id.Ed25519{id.NewKeyID(id.KeyAlgorithmEd25519, k.PublicKey().String()): k.PublicKey()}}
	}
	signed := func(k olm.PKSigning, usage id.CrossSigningUsage) mautrix.CrossSigningKeys {
		key := keyOf(k, usage)
		sig, err := master.SignJSON(key)
		if err != nil {
			t.Fatal(err)
		}
		key.Signatures = signatures.NewSingleSignature(uid, id.KeyAlgorithmEd25519, master.PublicKey().String(), sig)
		return key
	}
	req := &mautrix.UploadCrossSigningKeysReq[any]{Master: keyOf(master, id.XSUsageMaster),
		SelfSigning: signed(self, id.XSUsageSelfSigning), UserSigning: signed(userSigning, id.XSUsageUserSigning)}
	err = cli.UploadCrossSigningKeys(ctx, req, func(resp *mautrix.RespUserInteractive) any {
		return &mautrix.ReqUIAuthLogin{BaseAuthData: mautrix.BaseAuthData{Type: mautrix.AuthTypePassword, Session: resp.Session},
			User: user.ID, Password: user.Password}
	})
	if err != nil {
		t.Fatalf("uploading %s's cross-signing keys: %v", user.ID, err)
	}
	resp, err := cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{uid: mautrix.DeviceIDList{id.DeviceID(device)}}})
	if err != nil {
		t.Fatal(err)
	}
	dk, ok := resp.DeviceKeys[uid][id.DeviceID(device)]
	if !ok {
		t.Fatalf("the homeserver has no keys of %s's device %s", user.ID, device)
	}
	obj := mautrix.ReqKeysSignatures{UserID: uid, DeviceID: id.DeviceID(device), Algorithms: dk.Algorithms, Keys: map[id.KeyID]string{}}
	for k, v := range dk.Keys {
		obj.Keys[id.KeyID(k)] = v
	}
	sig, err := self.SignJSON(obj)
	if err != nil {
		t.Fatal(err)
	}
	obj.Signatures = signatures.NewSingleSignature(uid, id.KeyAlgorithmEd25519, self.PublicKey().String(), sig)
	up, err := cli.UploadSignatures(ctx, &mautrix.ReqUploadSignatures{uid: {device: obj}})
	if err != nil || len(up.Failures) > 0 {
		t.Fatalf("uploading the signature of %s's device %s: %v %+v", user.ID, device, err, up)
	}
}
