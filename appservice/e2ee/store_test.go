package e2ee

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/store/storetest"
)

const testPickleKey = "pickle-key-for-tests-0123456789"

func openDB(t *testing.T, dbType string) *dbutil.Database {
	t.Helper()
	st, err := store.Open(storetest.Config(t, dbType), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	sql := crypto.NewSQLCryptoStore(st.DB, dbutil.ZeroLogger(zerolog.Nop()), "", "", []byte(testPickleKey))
	if err := sql.DB.Upgrade(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st.DB
}

func botStore(t *testing.T, sh *Shared, db *dbutil.Database, bot id.UserID) *Store {
	t.Helper()
	st, err := sh.NewStore(context.Background(), crypto.NewSQLCryptoStore(db, dbutil.ZeroLogger(zerolog.Nop()), bot.String(), "", []byte(testPickleKey)))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// machine is a bot's OlmMachine on a Store, as startDevice makes it (no
// homeserver: device keys are not fetched while decrypting).
func machine(t *testing.T, st *Store, bot id.UserID) *crypto.OlmMachine {
	t.Helper()
	client, err := mautrix.NewClient("http://127.0.0.1:1", bot, "token")
	if err != nil {
		t.Fatal(err)
	}
	client.DeviceID = "BOTDEVICE"
	st.DeviceID = "BOTDEVICE"
	log := zerolog.Nop()
	mach := crypto.NewOlmMachine(client, &log, st, mautrix.NewMemoryStateStore().(crypto.StateStore))
	mach.DisableRatchetTracking = true
	mach.DisableDecryptKeyFetching = true
	if err := mach.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return mach
}

// encrypted is a person's Megolm message in room, as the homeserver
// delivers it, with a given event ID.
func encrypted(t *testing.T, out olm.OutboundGroupSession, senderKey id.SenderKey, room id.RoomID, eventID id.EventID, ts int64, ciphertext []byte) *event.Event {
	t.Helper()
	evt := &event.Event{ID: eventID, RoomID: room, Sender: "@alice:x", Timestamp: ts, Type: event.EventEncrypted,
		Content: event.Content{Parsed: &event.EncryptedEventContent{Algorithm: id.AlgorithmMegolmV1, SenderKey: senderKey,
			DeviceID: "ALICE", SessionID: id.SessionID(out.ID()), MegolmCiphertext: ciphertext}}}
	return evt
}

// Replay protection holds with the caches: a message index seen with one
// event is refused for another event, in the same process, after a
// restart (empty caches), and for another replica leading after it, on
// both databases. The re-run of the same event is accepted.
func TestReplayProtection(t *testing.T) {
	for _, d := range storetest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			db := openDB(t, d)
			const bot = id.UserID("@bot:x")
			room := id.RoomID("!r:x")
			first := NewShared(db)
			mach := machine(t, botStore(t, first, db, bot), bot)

			out, err := olm.NewOutboundGroupSession()
			if err != nil {
				t.Fatal(err)
			}
			acc, _ := olm.NewAccount()
			signing, ident, err := acc.IdentityKeys()
			if err != nil {
				t.Fatal(err)
			}
			igs, err := crypto.NewInboundGroupSession(ident, signing, room, out.Key(), time.Hour, 100, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := mach.CryptoStore.PutGroupSession(ctx, igs); err != nil {
				t.Fatal(err)
			}
			plaintext := []byte(`{"room_id":"!r:x","type":"m.room.message","content":{"msgtype":"m.text","body":"deploy"}}`)
			ct, err := out.Encrypt(plaintext)
			if err != nil {
				t.Fatal(err)
			}
			original := encrypted(t, out, ident, room, "$original", 1000, ct)
			replay := encrypted(t, out, ident, room, "$replay", 2000, ct)
			if _, err := mach.DecryptMegolmEvent(ctx, original); err != nil {
				t.Fatalf("first decryption: %v", err)
			}
			if _, err := mach.DecryptMegolmEvent(ctx, original); err != nil {
				t.Fatalf("re-run of the same event refused: %v", err)
			}
			if _, err := mach.DecryptMegolmEvent(ctx, replay); !errors.Is(err, crypto.ErrDuplicateMessageIndex) {
				t.Fatalf("replay in the same process: %v, want ErrDuplicateMessageIndex", err)
			}
			// The original's event is marked done: its index goes with the mark.
			batch := first.TakeIndexes()
			if len(batch) != 1 {
				t.Fatalf("%d indexes to write, want 1", len(batch))
			}
			if err := db.DoTxn(ctx, nil, func(ctx context.Context) error { return first.WriteIndexes(ctx, batch) }); err != nil {
				t.Fatal(err)
			}
			// A restart, or another replica's leadership: empty caches.
			for _, name := range []string{"after a restart", "on another replica"} {
				later := machine(t, botStore(t, NewShared(db), db, bot), bot)
				if _, err := later.DecryptMegolmEvent(ctx, replay); !errors.Is(err, crypto.ErrDuplicateMessageIndex) {
					t.Fatalf("replay %s: %v, want ErrDuplicateMessageIndex", name, err)
				}
				if _, err := later.DecryptMegolmEvent(ctx, original); err != nil {
					t.Fatalf("re-run of the original %s refused: %v", name, err)
				}
			}
		})
	}
}

// A batch whose transaction fails is given back, not lost.
func TestIndexBatchRestored(t *testing.T) {
	db := openDB(t, "sqlite")
	sh := NewShared(db)
	ctx := context.Background()
	if ok, err := sh.validate(ctx, "S", "$a", 0, 1); !ok || err != nil {
		t.Fatal(ok, err)
	}
	batch := sh.TakeIndexes()
	_ = db.DoTxn(ctx, nil, func(ctx context.Context) error {
		_ = sh.WriteIndexes(ctx, batch)
		return errors.New("the mark failed")
	})
	sh.RestoreIndexes(batch)
	if err := sh.FlushIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM crypto_message_index WHERE session_id = 'S'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d rows written after the retry, %v", n, err)
	}
}

// The caches never serve what the database no longer says: a device or
// cross-signing key one bot's machine stores is seen by every bot's, and a
// redacted session is not decryptable from the cache.
func TestCachesFollowWrites(t *testing.T) {
	for _, d := range storetest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			db := openDB(t, d)
			sh := NewShared(db)
			a, b := botStore(t, sh, db, "@a:x"), botStore(t, sh, db, "@b:x")
			const user = id.UserID("@alice:x")
			// Keys as Matrix has them: 43 characters of unpadded base64.
			const master, ssk = id.Ed25519("MasterKeyOfAliceMasterKeyOfAliceMasterKeyOf"), id.Ed25519("SelfSigningKeyOfAliceSelfSigningKeyOfAliceS")
			key := id.IdentityKey("CurveKeyOfAlicesNewDeviceCurveKeyOfAlicesNe")
			if dev, err := a.FindDeviceByKey(ctx, user, key); err != nil || dev != nil {
				t.Fatalf("unknown device: %v %v", dev, err)
			}
			if err := b.PutDevices(ctx, user, map[id.DeviceID]*id.Device{"NEW": {UserID: user, DeviceID: "NEW", IdentityKey: key, SigningKey: "sig"}}); err != nil {
				t.Fatal(err)
			}
			if dev, err := a.FindDeviceByKey(ctx, user, key); err != nil || dev == nil || dev.DeviceID != "NEW" {
				t.Fatalf("bot a does not see the device bot b stored: %v %v", dev, err)
			}
			if keys, err := a.GetCrossSigningKeys(ctx, user); err != nil || len(keys) != 0 {
				t.Fatalf("keys before: %v %v", keys, err)
			}
			if err := b.PutCrossSigningKey(ctx, user, id.XSUsageMaster, master); err != nil {
				t.Fatal(err)
			}
			if keys, err := a.GetCrossSigningKeys(ctx, user); err != nil || keys[id.XSUsageMaster].Key != master {
				t.Fatalf("bot a does not see the master key bot b stored: %v %v", keys, err)
			}
			if signed, _ := a.IsKeySignedBy(ctx, user, ssk, user, master); signed {
				t.Fatal("signed before any signature")
			}
			if err := b.PutSignature(ctx, user, ssk, user, master, "sig"); err != nil {
				t.Fatal(err)
			}
			if signed, _ := a.IsKeySignedBy(ctx, user, ssk, user, master); !signed {
				t.Fatal("bot a does not see the signature bot b stored")
			}

			out, _ := olm.NewOutboundGroupSession()
			igs, err := crypto.NewInboundGroupSession("sender", "signing", "!r:x", out.Key(), time.Hour, 100, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := a.PutGroupSession(ctx, igs); err != nil {
				t.Fatal(err)
			}
			if got, err := a.GetGroupSession(ctx, "!r:x", igs.ID()); err != nil || got == nil {
				t.Fatalf("stored session: %v %v", got, err)
			}
			if err := a.RedactGroupSession(ctx, "!r:x", igs.ID(), "test"); err != nil {
				t.Fatal(err)
			}
			if got, _ := a.GetGroupSession(ctx, "!r:x", igs.ID()); got != nil && got.Internal != nil {
				t.Fatal("a redacted session still comes from the cache")
			}
		})
	}
}

// An outbound Megolm session is never read back from the database: one an
// earlier process stored (or left behind a ratchet it had advanced) would
// make the next process encrypt with message indexes already sent.
func TestOutboundSessionsLiveInOneProcess(t *testing.T) {
	for _, d := range storetest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			db := openDB(t, d)
			const bot, room = id.UserID("@bot:x"), id.RoomID("!r:x")
			earlier := botStore(t, NewShared(db), db, bot)
			left, err := crypto.NewOutboundGroupSession(room, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			// What an earlier version of opsbot wrote after each encryption.
			if err := earlier.SQLCryptoStore.AddOutboundGroupSession(ctx, left); err != nil {
				t.Fatal(err)
			}
			mine, err := crypto.NewOutboundGroupSession(room, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := earlier.AddOutboundGroupSession(ctx, mine); err != nil {
				t.Fatal(err)
			}
			if got, _ := earlier.GetOutboundGroupSession(ctx, room); got != mine {
				t.Fatal("the process does not get back the session it made")
			}

			restarted := botStore(t, NewShared(db), db, bot)
			if got, err := restarted.GetOutboundGroupSession(ctx, room); err != nil || got != nil {
				t.Fatalf("a new process got an outbound session of an earlier one: %v %v", got, err)
			}
			var rows int
			if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM crypto_megolm_outbound_session WHERE account_id = $1`, bot).Scan(&rows); err != nil || rows != 0 {
				t.Fatalf("%d outbound sessions left in the database, %v", rows, err)
			}
		})
	}
}
