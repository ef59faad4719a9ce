package e2ee

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/store/storetest"
)

// ForgetDevice takes what belongs to the bot's device (account, Olm
// sessions, outbound sessions, device token, the request to replace it)
// and leaves what belongs to the bot (its secrets, the room keys it
// received) and to other bots.
func TestForgetDevice(t *testing.T) {
	for _, d := range storetest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			db := openDB(t, d)
			const bot, other = id.UserID("@bot:x"), id.UserID("@other:x")
			if dev, token, err := StoredDevice(ctx, db, bot, []byte(testPickleKey)); err != nil || dev != "" || token != "" {
				t.Fatalf("a bot that never started: %q %q %v", dev, token, err)
			}
			var received id.SessionID
			for _, b := range []id.UserID{bot, other} {
				cs := crypto.NewSQLCryptoStore(db, dbutil.ZeroLogger(zerolog.Nop()), b.String(), "DEV"+id.DeviceID(b[1:4]), []byte(testPickleKey))
				if err := cs.PutAccount(ctx, crypto.NewOlmAccount()); err != nil {
					t.Fatal(err)
				}
				for name, value := range map[id.Secret]string{SecretDeviceToken: "token of " + b.String(), id.SecretXSMaster: "master of " + b.String()} {
					if err := cs.PutSecret(ctx, name, value); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := db.Exec(ctx, `INSERT INTO crypto_olm_session (account_id, session_id, sender_key, session, created_at, last_decrypted, last_encrypted)
					VALUES ($1, $2, 'peer', '\x00', $3, $3, $3)`, b, "olm-"+b.String(), time.Now()); err != nil {
					t.Fatal(err)
				}
				out, _ := crypto.NewOutboundGroupSession("!r:x", nil, nil)
				if err := cs.AddOutboundGroupSession(ctx, out); err != nil {
					t.Fatal(err)
				}
				key, _ := olm.NewOutboundGroupSession()
				igs, err := crypto.NewInboundGroupSession("sender", "signing", "!r:x", key.Key(), time.Hour, 100, nil, false)
				if err != nil {
					t.Fatal(err)
				}
				if err := cs.PutGroupSession(ctx, igs); err != nil {
					t.Fatal(err)
				}
				if b == bot {
					received = igs.ID()
				}
			}
			if dev, token, err := StoredDevice(ctx, db, bot, []byte(testPickleKey)); err != nil || dev != "DEVbot" || token != "token of @bot:x" {
				t.Fatalf("stored device: %q %q %v", dev, token, err)
			}

			if asked, err := NewDevicesRequested(ctx, db); err != nil || len(asked) != 0 {
				t.Fatalf("a new device requested before anyone asked: %v %v", asked, err)
			}
			if dev, err := RequestNewDevice(ctx, db, bot, []byte(testPickleKey)); err != nil || dev != "DEVbot" {
				t.Fatalf("requesting a new device: %q %v", dev, err)
			}
			if asked, err := NewDevicesRequested(ctx, db); err != nil || len(asked) != 1 || !asked[bot] {
				t.Fatalf("the request was not recorded for the bot alone: %v %v", asked, err)
			}

			if err := ForgetDevice(ctx, db, bot); err != nil {
				t.Fatal(err)
			}
			if asked, err := NewDevicesRequested(ctx, db); err != nil || len(asked) != 0 {
				t.Fatalf("the request outlived the device it asked to replace: %v %v", asked, err)
			}
			count := func(table string, b id.UserID) int {
				var n int
				if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM `+table+` WHERE account_id = $1`, b).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			for _, table := range []string{"crypto_account", "crypto_olm_session", "crypto_megolm_outbound_session"} {
				if n := count(table, bot); n != 0 {
					t.Errorf("%s: %d rows of the forgotten device left", table, n)
				}
				if n := count(table, other); n != 1 {
					t.Errorf("%s: the other bot has %d rows, want 1", table, n)
				}
			}
			if dev, token, err := StoredDevice(ctx, db, bot, []byte(testPickleKey)); err != nil || dev != "" || token != "" {
				t.Fatalf("after forgetting: %q %q %v", dev, token, err)
			}
			cs := crypto.NewSQLCryptoStore(db, dbutil.ZeroLogger(zerolog.Nop()), bot.String(), "", []byte(testPickleKey))
			if master, err := cs.GetSecret(ctx, id.SecretXSMaster); err != nil || master != "master of @bot:x" {
				t.Errorf("the bot's cross-signing secret went with the device: %q %v", master, err)
			}
			if igs, err := cs.GetGroupSession(ctx, "!r:x", received); err != nil || igs == nil {
				t.Errorf("a room key the bot received went with the device: %v %v", igs, err)
			}
			if token, err := crypto.NewSQLCryptoStore(db, dbutil.ZeroLogger(zerolog.Nop()), other.String(), "", []byte(testPickleKey)).GetSecret(ctx, SecretDeviceToken); err != nil || token != "token of @other:x" {
				t.Errorf("the other bot's device token: %q %v", token, err)
			}
		})
	}
}
