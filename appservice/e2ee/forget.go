package e2ee

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"
)

// StoredDevice returns the ID of the bot's encryption device as the
// database holds it ("" if it has none yet) and, for an appservice bot's
// device opened with appservice login, the device's own access token (""
// if none). A token the pickle key cannot decrypt is an error of its own,
// after the device ID.
func StoredDevice(ctx context.Context, db *dbutil.Database, bot id.UserID, pickleKey []byte) (id.DeviceID, string, error) {
	if exists, err := db.TableExists(ctx, "crypto_account"); err != nil || !exists {
		return "", "", err // never started with encryption: no device
	}
	store := crypto.NewSQLCryptoStore(db, dbutil.ZeroLogger(zerolog.Nop()), bot.String(), "", pickleKey)
	deviceID, err := store.FindDeviceID(ctx)
	if err != nil {
		return "", "", fmt.Errorf("reading the device of %s: %w", bot, err)
	}
	token, err := store.GetSecret(ctx, SecretDeviceToken)
	if err != nil {
		return deviceID, "", fmt.Errorf("%w (is the pickle key right?): %w", ErrTokenUnreadable, err)
	}
	return deviceID, token, nil
}

// ErrTokenUnreadable is StoredDevice's error for a device token it could
// not decrypt.
var ErrTokenUnreadable = errors.New("the device's stored access token cannot be read")

// secretNewDevice marks a bot whose next start is to give it a new device
// (the operator's `device new`); ForgetDevice clears it.
const secretNewDevice id.Secret = "org.opsbot.new_device"

// RequestNewDevice records that the bot's next start is to give it a new
// device, and returns the device that is to go ("" if the bot has none
// yet: nothing is recorded).
func RequestNewDevice(ctx context.Context, db *dbutil.Database, bot id.UserID, pickleKey []byte) (id.DeviceID, error) {
	device, _, err := StoredDevice(ctx, db, bot, pickleKey)
	if device == "" || (err != nil && !errors.Is(err, ErrTokenUnreadable)) {
		return "", err
	}
	store := crypto.NewSQLCryptoStore(db, dbutil.ZeroLogger(zerolog.Nop()), bot.String(), "", pickleKey)
	if err := store.PutSecret(ctx, secretNewDevice, string(device)); err != nil {
		return "", fmt.Errorf("recording the request for %s: %w", bot, err)
	}
	return device, nil
}

// NewDevicesRequested returns the bots for which RequestNewDevice asked a
// new device that they do not have yet: one query at start for all bots
// (the request's presence is what counts, so nothing is decrypted).
func NewDevicesRequested(ctx context.Context, db *dbutil.Database) (map[id.UserID]bool, error) {
	if exists, err := db.TableExists(ctx, "crypto_secrets"); err != nil || !exists {
		return nil, err
	}
	rows, err := db.Query(ctx, `SELECT account_id FROM crypto_secrets WHERE name = $1`, string(secretNewDevice))
	if err != nil {
		return nil, fmt.Errorf("reading which bots are to get a new device: %w", err)
	}
	requested := map[id.UserID]bool{}
	for rows.Next() {
		var bot id.UserID
		if err := rows.Scan(&bot); err != nil {
			rows.Close()
			return nil, err
		}
		requested[bot] = true
	}
	return requested, rows.Err()
}

// ForgetDevice deletes what ties the bot to its encryption device: the
// Olm account (the device's keys), the Olm sessions that account made with
// other devices (a new account cannot use them), its outbound Megolm
// sessions, the device's access token and a request for a new device.
// What belongs to the bot rather
// than the device stays: its cross-signing keys and recovery key (the new
// device is signed by the same identity), the room keys it received (old
// messages stay readable) and its key backup. Its next start makes a new
// device. Run it inside the caller's transaction, before the device is
// opened.
func ForgetDevice(ctx context.Context, db *dbutil.Database, bot id.UserID) error {
	if exists, err := db.TableExists(ctx, "crypto_account"); err != nil || !exists {
		return err // never started with encryption: nothing to forget
	}
	for _, q := range []string{
		`DELETE FROM crypto_olm_session WHERE account_id = $1`,
		`DELETE FROM crypto_olm_message_hash WHERE account_id = $1`,
		`DELETE FROM crypto_megolm_outbound_session WHERE account_id = $1`,
		`DELETE FROM crypto_secrets WHERE account_id = $1 AND name IN ('` + string(SecretDeviceToken) + `', '` + string(secretNewDevice) + `')`,
		`DELETE FROM crypto_account WHERE account_id = $1`,
	} {
		if _, err := db.Exec(ctx, q, bot.String()); err != nil {
			return fmt.Errorf("forgetting the device of %s: %w", bot, err)
		}
	}
	return nil
}
