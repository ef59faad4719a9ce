package identity

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/utils"
	"maunium.net/go/mautrix/id"
)

// This file is what the `recovery-key` CLI does to a bot's secrets, with
// opsbot stopped or running (the running opsbot reads them at start).

// Secrets opens a bot's crypto store (one account per bot in the shared
// crypto tables, as appservice/e2ee keeps them) for reading and writing its
// secrets; it creates the tables if the database is new.
func Secrets(ctx context.Context, db *dbutil.Database, pickleKey []byte, bot id.UserID) (*crypto.SQLCryptoStore, error) {
	store := crypto.NewSQLCryptoStore(db, dbutil.ZeroLogger(zerolog.Nop()), bot.String(), "", pickleKey)
	if err := store.DB.Upgrade(ctx); err != nil {
		return nil, fmt.Errorf("migrating the crypto store: %w", err)
	}
	return store, nil
}

// NormalizeRecoveryKey checks a recovery key's format (base58 with parity,
// as clients show it, spaces allowed) and returns it in the usual spaced
// form.
func NormalizeRecoveryKey(key string) (string, error) {
	compact := strings.Join(strings.Fields(key), "")
	raw := utils.DecodeBase58RecoveryKey(compact)
	if raw == nil {
		return "", errors.New("not a recovery key (48 base58 characters in groups of four, as `recovery-key show` prints them)")
	}
	return utils.EncodeBase58RecoveryKey(raw), nil
}

// RestoreRecoveryKey stores a recovery key for a bot whose database lost it.
// At its next start opsbot unlocks the bot's cross-signing keys with it,
// signs the bot's (new) device, and restores the room keys from the backup.
func RestoreRecoveryKey(ctx context.Context, store *crypto.SQLCryptoStore, key string) error {
	key, err := NormalizeRecoveryKey(key)
	if err != nil {
		return err
	}
	old, err := store.GetSecret(ctx, SecretRecoveryKey)
	if err != nil {
		return fmt.Errorf("reading the stored recovery key (is the pickle key right?): %w", err)
	}
	if old != "" && old != key {
		return errors.New("the database already holds a different recovery key for this bot; nothing changed")
	}
	if err := store.PutSecret(ctx, SecretRecoveryKey, key); err != nil {
		return err
	}
	return store.PutSecret(ctx, SecretRestore, "1")
}

// RequestReset makes the bot's next start replace its cross-signing keys
// and secret storage key (and with them the recovery key). Everyone who
// verified the bot must verify it again.
func RequestReset(ctx context.Context, store *crypto.SQLCryptoStore) error {
	return store.PutSecret(ctx, SecretReset, "1")
}
