package integration

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/integration/harness"
	"github.com/opsbot/opsbot/integration/peers"
)

// These tests are the bots' trust as people see it, with matrix-js-sdk 37.5
// (Rust crypto, as in Element) as the person: the bot's device cross-signed
// by its owner, interactive SAS verification confirmed by the operator with
// the CLI, and the ways a verification can go wrong.

const trustBots = `
  - localpart: opsbot
    displayname: Ops Bot
    skills: [ping, help, echo, tour, admin]
permissions:
  admins: ["@alice:localhost"]
`

// trustConfig is an encryption section with cross-signing through
// Dendrite's admin API and verification by alice and carol.
func trustConfig(extra string) string {
	return fmt.Sprintf(`encryption:
  enabled: true
  pickle_key: %s
  decrypt_wait: 5s
  dendrite_admin_token: "%s"
  verification:
    allowed_users: ["@alice:localhost", "@carol:*", "@dave:localhost"]
    timeout: 10s
%s`, config.RandomToken(), adminTokenPlaceholder, extra)
}

// botDevice is the bot's device ID from the last log line that names it.
func botDevice(t *testing.T, o *Opsbot, bot string) string {
	t.Helper()
	re := regexp.MustCompile(`"device_id":"(OPSBOT[A-Z]{10})"`)
	dev := ""
	for _, l := range strings.Split(o.Log(), "\n") {
		if strings.Contains(l, `"bot":"`+bot+`"`) && strings.Contains(l, "encryption device") {
			if m := re.FindStringSubmatch(l); m != nil {
				dev = m[1]
			}
		}
	}
	if dev == "" {
		t.Fatalf("no device ID of %s in the log", bot)
	}
	return dev
}

// pendingVerification waits until `verification list` shows one
// verification of the bot waiting for the operator, and returns its
// transaction ID and the line.
func pendingVerification(t *testing.T, o *Opsbot) (string, string) {
	t.Helper()
	return pendingVerificationOf(t, o, botID)
}

// pendingVerificationOf is pendingVerification for any bot.
func pendingVerificationOf(t *testing.T, o *Opsbot, bot string) (string, string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		out, err := o.Run("verification", "list")
		if err != nil {
			t.Fatalf("verification list: %v\n%s", err, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, bot) && strings.Contains(l, "waits for you") {
				return strings.Fields(l)[0], l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pending verification after %v; list:\n%s\nopsbot log:\n%s", wait, out, o.LogTail(30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// noPendingVerification checks that nothing is left behind.
func noPendingVerification(t *testing.T, o *Opsbot) {
	t.Helper()
	out, err := o.Run("verification", "list")
	if err != nil || !strings.Contains(out, "No verification waits") {
		t.Fatalf("verification list after the end: %v\n%s", err, out)
	}
}

// sasShown checks the operator sees the person's numbers and emoji.
func sasShown(t *testing.T, line string, sas peers.SAS) {
	t.Helper()
	nums := make([]string, len(sas.Decimals))
	for i, d := range sas.Decimals {
		nums[i] = strconv.Itoa(d)
	}
	if !strings.Contains(line, "| "+strings.Join(nums, " ")) {
		t.Fatalf("operator's list %q does not show the person's decimals %v", line, sas.Decimals)
	}
	// By name, in order: the symbols may differ in variation selectors
	// (☁️ and ☁).
	pos := 0
	for _, e := range sas.Emojis {
		i := strings.Index(line[pos:], " "+e[1])
		if i < 0 {
			t.Fatalf("operator's list %q does not show the person's emoji %v in order", line, sas.Emojis)
		}
		pos += i + len(e[1]) + 1
	}
}

// verifyBot runs a SAS verification of the bot from the person's device,
// to-device or (with a room) in that room, the operator comparing and
// confirming with the CLI.
func verifyBot(t *testing.T, w *world, p *peers.Peer, dev, room string) {
	t.Helper()
	verifyBotOf(t, w, p, botID, dev, room)
}

// verifyBotOf is verifyBot for any bot.
func verifyBotOf(t *testing.T, w *world, p *peers.Peer, bot, dev, room string) {
	t.Helper()
	knowsDeviceOf(t, p, bot, dev)
	if room == "" {
		p.VerifyRequestDevice(bot, dev)
	} else {
		p.VerifyRequestDM(bot, room)
	}
	sas := p.VerifySAS(true, wait)
	txn, line := pendingVerificationOf(t, w.Bot, bot)
	sasShown(t, line, sas)
	// What the operator's alert (OpsbotVerificationWaiting) reads.
	waitMetric(t, w.Bot, "opsbot_verifications_waiting", 1)
	if out, err := w.Bot.Run("verification", "confirm", txn); err != nil {
		t.Fatalf("verification confirm: %v\n%s", err, out)
	}
	p.VerifyConfirm()
	if o := p.VerifyWaitDone(wait); o.Phase != "done" {
		t.Fatalf("verification ended %+v, want done", o)
	}
	seesVerifiedOf(t, p, bot, dev)
	w.Bot.WaitForLog(t, wait, "Verification done", txn)
	noPendingVerification(t, w.Bot)
	waitMetric(t, w.Bot, "opsbot_verifications_waiting", 0)
}

// waitMetric waits until a series of opsbot's /metrics has the value want.
func waitMetric(t *testing.T, o *Opsbot, series string, want float64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		v := o.Metric(t, series)
		if v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v after %v, want %v", series, v, wait, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// threePeople logs alice, bob and carol in with matrix-js-sdk; alice and
// carol set up cross-signing, bob does not.
func threePeople(t *testing.T, w *world) (alice, bob, carol *harness.User, a, b, c *peers.Peer) {
	t.Helper()
	alice, bob, carol = w.HS.RegisterUser(t, "alice"), w.HS.RegisterUser(t, "bob"), w.HS.RegisterUser(t, "carol")
	a, b, c = peers.StartJS(t), peers.StartJS(t), peers.StartJS(t)
	a.Login(w.HS.URL, alice.ID, alice.Password, "ALICEJS")
	b.Login(w.HS.URL, bob.ID, bob.Password, "BOBJS")
	c.Login(w.HS.URL, carol.ID, carol.Password, "CAROLJS")
	a.BootstrapCrossSigning(alice.Password)
	c.BootstrapCrossSigning(carol.Password)
	return alice, bob, carol, a, b, c
}

// knowsDevice waits until the person's client knows the bot's device: it
// learns of it from /sync after the bot joined a room they share.
func knowsDevice(t *testing.T, p *peers.Peer, dev string) {
	t.Helper()
	knowsDeviceOf(t, p, botID, dev)
}

func knowsDeviceOf(t *testing.T, p *peers.Peer, bot, dev string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !p.DeviceTrust(bot, dev).Known {
		if time.Now().After(deadline) {
			t.Fatalf("%s does not know the bot's device %s after %v", p.UserID, dev, wait)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// seesVerified waits until the person's client shows the bot and its device
// as verified through cross-signing (the client signs the bot's master key
// and uploads the signature just after the verification ends).
func seesVerified(t *testing.T, p *peers.Peer, dev string) {
	t.Helper()
	seesVerifiedOf(t, p, botID, dev)
}

func seesVerifiedOf(t *testing.T, p *peers.Peer, bot, dev string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		ut, dt := p.UserTrust(bot), p.DeviceTrust(bot, dev)
		if ut.CrossSigningVerified && dt.CrossSigningVerified {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after verification %s sees the bot as %+v and its device as %+v, want both cross-signing verified", p.UserID, ut, dt)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func TestBotIdentityAndVerification(t *testing.T) {
	onHomeservers(t, testBotIdentityAndVerification)
}

func testBotIdentityAndVerification(t *testing.T, hs homeserver) {
	w := newWorldWith(t, worldOptions{HS: hs, DB: "sqlite", Bots: trustBots, Extra: trustConfig("")})
	w.Bot.WaitForLog(t, wait, "Bot identity is cross-signed", `"bot":"`+botID+`"`)
	w.Bot.WaitMetric(t, `opsbot_bot_cross_signed{bot="`+botID+`"}`, 1)
	dev := botDevice(t, w.Bot, botID)

	alice, bob, carol, a, b, c := threePeople(t, w)
	// People see the devices of those they share rooms with.
	room := a.CreateRoom(true, botID)
	botJoined(t, alice, room, botID)
	a.Send(room, "!status")
	if m := a.WaitMessage(room, botID, wait); !strings.Contains(m.Body, botID+": 1 rooms, cross-signed, key backup version 1") {
		t.Fatalf("!status: %q, want the bot cross-signed with a key backup", m.Body)
	}

	// What Element shows before any verification: the bot has a master
	// key and its device is signed by it.
	knowsDevice(t, a, dev)
	if tr := a.DeviceTrust(botID, dev); !tr.Known || !tr.SignedByOwner || tr.CrossSigningVerified {
		t.Fatalf("alice's view of the bot's device: %+v, want known and signed by its owner, not yet verified", tr)
	}
	if ut := a.UserTrust(botID); !ut.HasMasterKey || ut.CrossSigningVerified {
		t.Fatalf("alice's view of the bot: %+v, want a master key, not yet verified", ut)
	}

	// The operator can read the recovery key; it is a real one.
	out, err := w.Bot.Run("recovery-key", "show")
	if err != nil || !regexp.MustCompile(botID+`\t([1-9A-HJ-NP-Za-km-z]{4} ){11}[1-9A-HJ-NP-Za-km-z]{4}\n`).MatchString(out) {
		t.Fatalf("recovery-key show: %v\n%q", err, out)
	}

	// A full to-device SAS verification, confirmed by the operator.
	verifyBot(t, w, a, dev, "")

	// The same in a DM (in-room verification, as Element starts it).
	dm := c.CreateRoom(true, botID)
	botJoined(t, carol, dm, botID)
	verifyBot(t, w, c, dev, dm)
	// The bot's side of it went into the encrypted DM encrypted.
	if strings.Contains(w.Bot.Log(), "/send/m.key.verification.") {
		t.Fatal("the bot sent a verification event into the encrypted DM in plaintext")
	}
	dmLocal := strings.TrimPrefix(strings.SplitN(dm, ":", 2)[0], "!")
	if w.Bot.CountLog(`"method":"PUT"`, dmLocal, "/send/m.room.encrypted/") == 0 {
		t.Fatal("no encrypted sends into the DM in the bot's log")
	}
	// The bot still answers in the DM: the verification events did not
	// reach the skills, and the DM stays encrypted both ways.
	c.Send(dm, "!echo after verification")
	if m := c.WaitMessage(dm, botID, wait); m.Body != "after verification" || !m.Encrypted {
		t.Fatalf("echo in the DM: %+v", m)
	}

	// A user who is not allowed: refused with a reason, nothing kept.
	botJoined(t, bob, b.CreateRoom(true, botID), botID)
	knowsDevice(t, b, dev)
	b.VerifyRequestDevice(botID, dev)
	// (The reason goes on the wire too; the Rust SDK shows its own text
	// for m.user.)
	if o := b.VerifyWaitDone(wait); o.Phase != "cancelled" || o.Code != "m.user" || o.By != botID {
		t.Fatalf("bob's request ended %+v, want cancelled by the bot (m.user)", o)
	}
	w.Bot.WaitForLog(t, wait, "Refused a verification request", bob.ID)
	noPendingVerification(t, w.Bot)

	// The operator cancels.
	a.VerifyRequestDevice(botID, dev)
	a.VerifySAS(true, wait)
	txn, _ := pendingVerification(t, w.Bot)
	if out, err := w.Bot.Run("verification", "cancel", txn); err != nil {
		t.Fatalf("verification cancel: %v\n%s", err, out)
	}
	if o := a.VerifyWaitDone(wait); o.Phase != "cancelled" || o.Code != "m.user" {
		t.Fatalf("operator-cancelled verification ended %+v, want cancelled (m.user)", o)
	}
	noPendingVerification(t, w.Bot)
	if out, err := w.Bot.Run("verification", "confirm", txn); err == nil || !strings.Contains(out, "no pending verification") {
		t.Fatalf("confirming a finished verification: %v\n%s", err, out)
	}

	// Nobody decides: the bot cancels after encryption.verification.timeout.
	a.VerifyRequestDevice(botID, dev)
	a.VerifySAS(true, wait)
	pendingVerification(t, w.Bot)
	a.VerifyConfirm() // the person's side alone is not enough
	if o := a.VerifyWaitDone(wait); o.Phase != "cancelled" || o.Code != "m.timeout" {
		t.Fatalf("unconfirmed verification ended %+v, want cancelled (m.timeout)", o)
	}
	noPendingVerification(t, w.Bot)

	// The person cancels after seeing the emoji.
	a.VerifyRequestDevice(botID, dev)
	a.VerifySAS(true, wait)
	txn, _ = pendingVerification(t, w.Bot)
	a.VerifyCancel()
	w.Bot.WaitForLog(t, wait, "Verification cancelled", txn, `"code":"m.user"`)
	noPendingVerification(t, w.Bot)

	// The person says the emoji differ.
	a.VerifyRequestDevice(botID, dev)
	a.VerifySAS(true, wait)
	txn, _ = pendingVerification(t, w.Bot)
	a.VerifyMismatch()
	w.Bot.WaitForLog(t, wait, "Verification cancelled", txn, `"code":"m.mismatched_sas"`)
	noPendingVerification(t, w.Bot)

	// A MAC that does not match (a device that is not who it claims).
	dave := w.HS.RegisterUser(t, "dave")
	wrongMAC(t, w, dave, dev)

	for outcome, want := range map[string]float64{"done": 2, "refused": 1, "cancelled": 4, "timeout": 1} {
		if v := w.Bot.Metric(t, `opsbot_verifications_total{outcome="`+outcome+`"}`); v != want {
			t.Errorf("opsbot_verifications_total{outcome=%q} = %v, want %v", outcome, v, want)
		}
	}
}

// rawVerifier is a person's device speaking the to-device verification
// protocol by hand, to send what no real client sends (a wrong MAC).
type rawVerifier struct {
	t     *testing.T
	cli   *mautrix.Client
	since string
	txn   string
	bot   id.UserID
	dev   id.DeviceID
	queue []*event.Event // to-device events of txn not yet awaited
}

func (r *rawVerifier) send(typ string, content map[string]any) {
	r.t.Helper()
	content["transaction_id"] = r.txn
	_, err := r.cli.SendToDevice(context.Background(), event.Type{Type: typ, Class: event.ToDeviceEventType},
		&mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{r.bot: {r.dev: {Raw: content}}}})
	if err != nil {
		r.t.Fatalf("sending %s: %v", typ, err)
	}
}

// await returns the content of the next to-device event of this
// transaction, which must have the given type. Events that arrive together
// wait in a queue for the next call.
func (r *rawVerifier) await(typ string) map[string]any {
	r.t.Helper()
	deadline := time.Now().Add(wait)
	for len(r.queue) == 0 {
		if time.Now().After(deadline) {
			r.t.Fatalf("no %s within %v", typ, wait)
		}
		resp, err := r.cli.FullSyncRequest(context.Background(), mautrix.ReqSync{Since: r.since, Timeout: 2000})
		if err != nil {
			r.t.Fatalf("sync: %v", err)
		}
		r.since = resp.NextBatch
		for _, evt := range resp.ToDevice.Events {
			if evt.Content.Raw["transaction_id"] == r.txn {
				r.queue = append(r.queue, evt)
			}
		}
	}
	evt := r.queue[0]
	r.queue = r.queue[1:]
	if evt.Type.Type != typ {
		r.t.Fatalf("got %s %v, want %s", evt.Type.Type, evt.Content.Raw, typ)
	}
	return evt.Content.Raw
}

// wrongMAC runs a verification up to the short authentication string, lets
// the operator confirm, and answers with a MAC that cannot be right: the
// bot must cancel, trust nothing, and keep nothing.
func wrongMAC(t *testing.T, w *world, user *harness.User, botDev string) {
	cli, err := mautrix.NewClient(w.HS.URL, id.UserID(user.ID), user.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	cli.DeviceID = id.DeviceID(user.DeviceID)
	// The bot looks the device up: publish real, signed device keys.
	acc := crypto.NewOlmAccount()
	keys := &mautrix.DeviceKeys{UserID: cli.UserID, DeviceID: cli.DeviceID,
		Algorithms: []id.Algorithm{id.AlgorithmOlmV1, id.AlgorithmMegolmV1},
		Keys: mautrix.KeyMap{
			id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, id.DeviceID(user.DeviceID)): string(acc.IdentityKey()),
			id.NewDeviceKeyID(id.KeyAlgorithmEd25519, id.DeviceID(user.DeviceID)):    string(acc.SigningKey()),
		}}
	sig, err := acc.SignJSON(keys)
	if err != nil {
		t.Fatal(err)
	}
	keys.Signatures = signatures.NewSingleSignature(cli.UserID, id.KeyAlgorithmEd25519, user.DeviceID, sig)
	if _, err := cli.UploadKeys(context.Background(), &mautrix.ReqUploadKeys{DeviceKeys: keys}); err != nil {
		t.Fatal(err)
	}
	r := &rawVerifier{t: t, cli: cli, txn: "wrongmac" + config.RandomToken()[:8], bot: botID, dev: id.DeviceID(botDev)}
	first, err := cli.FullSyncRequest(context.Background(), mautrix.ReqSync{})
	if err != nil {
		t.Fatal(err)
	}
	r.since = first.NextBatch
	from := user.DeviceID
	r.send("m.key.verification.request", map[string]any{"from_device": from, "methods": []string{"m.sas.v1"}, "timestamp": time.Now().UnixMilli()})
	r.await("m.key.verification.ready")
	r.send("m.key.verification.start", map[string]any{"from_device": from, "method": "m.sas.v1",
		"key_agreement_protocols": []string{"curve25519-hkdf-sha256"}, "hashes": []string{"sha256"},
		"message_authentication_codes": []string{"hkdf-hmac-sha256.v2"}, "short_authentication_string": []string{"decimal", "emoji"}})
	r.await("m.key.verification.accept")
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r.send("m.key.verification.key", map[string]any{"key": base64.RawStdEncoding.EncodeToString(priv.PublicKey().Bytes())})
	r.await("m.key.verification.key")
	txn, _ := pendingVerification(t, w.Bot)
	if txn != r.txn {
		t.Fatalf("pending verification %s, want %s", txn, r.txn)
	}
	garbage := base64.RawStdEncoding.EncodeToString([]byte("not the MAC of anything at all!!"))
	r.send("m.key.verification.mac", map[string]any{"keys": garbage, "mac": map[string]string{"ed25519:" + from: garbage}})
	if out, err := w.Bot.Run("verification", "confirm", txn); err != nil {
		t.Fatalf("verification confirm: %v\n%s", err, out)
	}
	r.await("m.key.verification.mac") // the bot's, after the operator's confirmation
	if c := r.await("m.key.verification.cancel"); c["code"] != "m.mismatched_sas" {
		t.Fatalf("the bot cancelled with %v, want m.mismatched_sas", c)
	}
	w.Bot.WaitForLog(t, wait, "Verification cancelled", r.txn, "key list MAC mismatch")
	noPendingVerification(t, w.Bot)
}

// recoveryKeyOf reads the bot's recovery key with the CLI.
func recoveryKeyOf(t *testing.T, o *Opsbot) string {
	t.Helper()
	out, err := o.Run("recovery-key", "show", botID)
	m := regexp.MustCompile(botID + `\t(([1-9A-HJ-NP-Za-km-z]{4} ){11}[1-9A-HJ-NP-Za-km-z]{4})\n`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("recovery-key show: %v\n%s", err, out)
	}
	return m[1]
}

// masterKeyOf is the bot's master key from the last log line that names it.
func masterKeyOf(t *testing.T, o *Opsbot) string {
	t.Helper()
	re := regexp.MustCompile(`"master_key":"([A-Za-z0-9+/]{43})"`)
	key := ""
	for _, l := range strings.Split(o.Log(), "\n") {
		if strings.Contains(l, "Bot identity is cross-signed") {
			if m := re.FindStringSubmatch(l); m != nil {
				key = m[1]
			}
		}
	}
	if key == "" {
		t.Fatal("no master key in the log")
	}
	return key
}

// TestRecoveryKeyRestore loses the bot's database and brings the bot back
// from its recovery key: the same identity, its new device signed, and
// the room keys of earlier messages restored from the server-side backup.
// Then the operator gives the bot a new device, and resets its keys.
// On Synapse the bots' devices are MSC4190 devices, so replacing the keys
// (reset) needs no password.
func TestRecoveryKeyRestore(t *testing.T) {
	onHomeservers(t, testRecoveryKeyRestore)
}

func testRecoveryKeyRestore(t *testing.T, hs homeserver) {
	extra := ""
	if hs.Server == harness.Synapse {
		extra = "  msc4190: true\n"
	}
	w := newWorldWith(t, worldOptions{HS: hs, DB: "sqlite", Bots: trustBots, Extra: trustConfig(extra)})
	if hs.Server == harness.Synapse {
		w.Bot.WaitForLog(t, wait, `"mode":"appservice"`, "Encryption key delivery mode")
	}
	cross := `opsbot_bot_cross_signed{bot="` + botID + `"}`
	w.Bot.WaitForLog(t, wait, "Bot identity is cross-signed", `"bot":"`+botID+`"`)
	firstDev, master := botDevice(t, w.Bot, botID), masterKeyOf(t, w.Bot)
	key := recoveryKeyOf(t, w.Bot)

	alice := w.HS.RegisterUser(t, "alice")
	a := peers.StartJS(t)
	a.Login(w.HS.URL, alice.ID, alice.Password, "ALICEJS")
	room := a.CreateRoom(true, botID)
	botJoined(t, alice, room, botID)
	secret := a.Send(room, "the secret of history")
	a.Send(room, "!echo hello")
	if m := a.WaitMessage(room, botID, wait); m.Body != "hello" || !m.Encrypted {
		t.Fatalf("echo: %+v", m)
	}
	// The room key of those messages reaches the backup.
	backedUp := `opsbot_key_backup_uploaded_total{bot="` + botID + `"}`
	deadline := time.Now().Add(wait)
	for w.Bot.Metric(t, backedUp) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%s stayed 0", backedUp)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// A restart reuses the identity: no new keys, no new signature.
	w.Bot.Stop()
	w.Bot.Start()
	w.Bot.WaitForLogs(t, wait, 2, "Bot identity is cross-signed")
	if got := masterKeyOf(t, w.Bot); got != master {
		t.Fatalf("master key after restart %s, want %s", got, master)
	}
	if n := w.Bot.CountLog("Created the bot's cross-signing keys"); n != 1 {
		t.Fatalf("cross-signing keys created %d times, want once", n)
	}

	// The database is lost. Without the recovery key the bot runs, but
	// unsigned, and it does not replace its keys on the server.
	w.Bot.Stop()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(w.Bot.Cfg.Database.URI + suffix); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	w.Bot.Start()
	w.Bot.WaitForLog(t, wait, "The bot's identity is not cross-signed", "no recovery key", "recovery-key restore")
	if v := w.Bot.Metric(t, cross); v != 0 {
		t.Fatalf("%s = %v without the recovery key, want 0", cross, v)
	}
	if ut := a.UserTrust(botID); !ut.HasMasterKey {
		t.Fatalf("the bot's master key is gone from alice's view: %+v", ut)
	}
	w.Bot.Stop()

	// The operator restores the key; the next start signs the new device
	// and restores the room keys from the backup.
	restore := exec.Command(opsbotBinary(t), "-c", w.Bot.CfgPath, "recovery-key", "restore", botID)
	restore.Stdin = strings.NewReader(strings.ReplaceAll(key, " ", "") + "\n")
	if out, err := restore.CombinedOutput(); err != nil {
		t.Fatalf("recovery-key restore: %v\n%s", err, out)
	}
	w.Bot.Start()
	w.Bot.WaitForLog(t, wait, "Restored room keys from the server-side backup")
	if w.Bot.CountLog("Restored room keys from the server-side backup", `"room_keys":0,`) > 0 {
		t.Fatal("the restore found no room keys in the backup")
	}
	w.Bot.WaitForLog(t, wait, "Signed the bot's device with its self-signing key")
	if v := w.Bot.Metric(t, cross); v != 1 || masterKeyOf(t, w.Bot) != master {
		t.Fatalf("after restore: %s = %v, master key %s (want 1, %s)", cross, v, masterKeyOf(t, w.Bot), master)
	}
	dev := botDevice(t, w.Bot, botID)
	if dev == firstDev {
		t.Fatalf("device %s after losing the database, want a new one", dev)
	}
	// History: the bot quotes the message from before the loss, which
	// only the backed-up room key can decrypt.
	signedAndReadsHistory(t, a, dev, room, secret)

	// A new device on request (device new): the old one signed out (on
	// Synapse an MSC4190 device, deleted as the appservice; on Dendrite
	// with its own token), the new one signed by the same identity, and
	// the history still readable (the room keys stay with the bot).
	if out, err := w.Bot.Run("device", "new", botID); err != nil || !strings.Contains(out, "signs device "+dev+" out") {
		t.Fatalf("device new: %v\n%s", err, out)
	}
	w.Bot.Stop()
	w.Bot.Start()
	w.Bot.WaitForLog(t, wait, "Signed the bot's old device out and forgot it", dev)
	w.Bot.WaitForLogs(t, wait, 2, "Signed the bot's device with its self-signing key")
	newDev := botDevice(t, w.Bot, botID)
	// (The first device, whose database was lost, stays on the account.)
	if devs := userDevices(t, alice, botID); newDev == dev || devs[dev] != "" || devs[newDev] == "" {
		t.Fatalf("after device new the bot has devices %v (old %s, new %s), want the new one and not the old", devs, dev, newDev)
	}
	signedAndReadsHistory(t, a, newDev, room, secret)

	// A wrong key is refused, naming the problem.
	if out, err := w.Bot.Run("recovery-key", "restore", botID); err == nil || !strings.Contains(out, "not a recovery key") {
		t.Fatalf("restore with no key on stdin: %v\n%s", err, out)
	}

	// Reset: new keys and a new recovery key at the next start.
	w.Bot.Stop()
	if out, err := w.Bot.Run("recovery-key", "reset", botID); err != nil {
		t.Fatalf("recovery-key reset: %v\n%s", err, out)
	}
	w.Bot.Start()
	w.Bot.WaitForLogs(t, wait, 2, "Created the bot's cross-signing keys")
	w.Bot.WaitForLogs(t, wait, 5, "Bot identity is cross-signed")
	if got := masterKeyOf(t, w.Bot); got == master {
		t.Fatal("reset kept the master key")
	}
	if got := recoveryKeyOf(t, w.Bot); got == key {
		t.Fatal("reset kept the recovery key")
	}
	// The old backup key was kept under the old secret storage key: the
	// reset bot starts a new backup and is fully set up.
	w.Bot.WaitForLogs(t, wait, 2, "Created a server-side key backup")
	if v := w.Bot.Metric(t, cross); v != 1 {
		t.Fatalf("%s = %v after reset, want 1; log:\n%s", cross, v, w.Bot.LogTail(20))
	}
}

// signedAndReadsHistory checks that the person sees the bot's device dev
// signed by its owner, and that the bot, asked to quote the message
// secret ("the secret of history"), can decrypt it.
func signedAndReadsHistory(t *testing.T, p *peers.Peer, dev, room, secret string) {
	t.Helper()
	knowsDevice(t, p, dev)
	if tr := p.DeviceTrust(botID, dev); !tr.SignedByOwner {
		t.Fatalf("the person sees the bot's device %s as %+v, want signed by its owner", dev, tr)
	}
	p.SendReply(room, "!tour quote", secret)
	if m := p.WaitMessage(room, botID, wait); !strings.Contains(m.Body, `said "the secret of history"`) {
		t.Fatalf("quote by device %s: %+v, want the old message decrypted", dev, m)
	}
}

// TestKeySharingPolicy checks whose devices get the bot's room keys under
// each encryption.trust policy: alice is cross-signed and verified the bot,
// carol is cross-signed, bob's device is not cross-signed at all.
func TestKeySharingPolicy(t *testing.T) {
	w := newWorld(t, "postgres", trustBots, trustConfig("  trust: all\n"))
	w.Bot.WaitForLog(t, wait, "Bot identity is cross-signed", `"bot":"`+botID+`"`)
	dev := botDevice(t, w.Bot, botID)
	alice, bob, carol, a, b, c := threePeople(t, w)
	dm := a.CreateRoom(true, botID)
	botJoined(t, alice, dm, botID)
	verifyBot(t, w, a, dev, "")

	for _, tc := range []struct {
		policy     string
		carol, bob bool // can read the bot's answer
	}{
		{"all", true, true},
		{"cross-signed", true, false},
		{"verified", false, false},
	} {
		if tc.policy != "all" {
			w.Bot.Stop()
			text, err := os.ReadFile(w.Bot.CfgPath)
			if err != nil {
				t.Fatal(err)
			}
			text = regexp.MustCompile(`(?m)^  trust: .*$`).ReplaceAll(text, []byte("  trust: "+tc.policy))
			if err := os.WriteFile(w.Bot.CfgPath, text, 0o600); err != nil {
				t.Fatal(err)
			}
			w.Bot.Start()
		}
		// A new room per policy: a room key once shared stays shared.
		room := a.CreateRoom(true, botID, bob.ID, carol.ID)
		b.Join(room)
		c.Join(room)
		botJoined(t, alice, room, botID)
		a.Send(room, "!echo "+tc.policy)
		if m := a.WaitMessage(room, botID, wait); m.Body != tc.policy || !m.Encrypted {
			t.Fatalf("%s: alice got %+v", tc.policy, m)
		}
		for _, reader := range []struct {
			p    *peers.Peer
			want bool
		}{{c, tc.carol}, {b, tc.bob}} {
			// A reader gets the usual wait; for one who must not read,
			// 8 s is beyond the peer's 5 s grace for a late room key.
			timeout := wait
			if !reader.want {
				timeout = 8 * time.Second
			}
			m, err := reader.p.TryWaitMessage(room, botID, timeout)
			if reader.want && (err != nil || m.Body != tc.policy) {
				t.Fatalf("%s: %s should read the answer: %+v, %v", tc.policy, reader.p.UserID, m, err)
			}
			if !reader.want && err == nil {
				t.Fatalf("%s: %s read the answer %+v; the policy should have kept the room key from that device", tc.policy, reader.p.UserID, m)
			}
		}
	}
}
