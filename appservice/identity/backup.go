package identity

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/backup"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/crypto/ssss"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/e2ee"
)

// How often room keys are swept into the backup even without a new-key
// signal (the bot's own outbound sessions do not raise one), and how long a
// signal waits for more keys to arrive before uploading.
const (
	backupSweep    = time.Minute
	backupDebounce = 2 * time.Second
	backupChunk    = 200
)

// uploader keeps one bot's room keys in its server-side backup version.
type uploader struct {
	bot     id.UserID
	mach    *crypto.OlmMachine
	store   *crypto.SQLCryptoStore
	key     *backup.MegolmBackupKey
	version id.KeyBackupVersion
	kick    chan struct{}
	log     zerolog.Logger
	onDone  func(bot id.UserID, n int)
	onFail  func(bot id.UserID, stage string)
}

// setupBackup finds or creates the bot's backup key (kept in secret storage)
// and a backup version on the server that uses it. When restoring (a device
// created at this start, with a recovery key already in the database), the
// backup's room keys are imported first.
func (m *Manager) setupBackup(ctx context.Context, dev *e2ee.Device, ssssKey func() (*ssss.Key, error), restoring bool, log zerolog.Logger) (*uploader, error) {
	mach := dev.Machine
	sqlStore := dev.SQLStore()
	key, err := backupKey(ctx, mach, ssssKey, restoring)
	if err != nil {
		return nil, err
	}
	pub := id.Ed25519(base64.RawStdEncoding.EncodeToString(key.PublicKey().Bytes()))
	var version id.KeyBackupVersion
	latest, err := mach.Client.GetKeyBackupLatestVersion(ctx)
	switch {
	case errors.Is(err, mautrix.MNotFound):
	case err != nil:
		return nil, fmt.Errorf("reading the latest backup version: %w", err)
	case latest.Algorithm == id.KeyBackupAlgorithmMegolmBackupV1 && latest.AuthData.PublicKey == pub:
		version = latest.Version
	default:
		log.Warn().Stringer("version", latest.Version).Msg("The latest key backup is not the bot's (another key); starting a new version")
	}
	if version == "" {
		if version, err = createVersion(ctx, mach, pub); err != nil {
			return nil, err
		}
		log.Info().Stringer("version", version).Msg("Created a server-side key backup")
	}
	if restoring {
		before := countSessions(ctx, sqlStore)
		if err := mach.GetAndStoreKeyBackup(ctx, version, key); err != nil {
			return nil, fmt.Errorf("restoring room keys from backup version %s: %w", version, err)
		}
		log.Info().Int("room_keys", countSessions(ctx, sqlStore)-before).Stringer("version", version).
			Msg("Restored room keys from the server-side backup")
	}
	up := &uploader{bot: dev.UserID, mach: mach, store: sqlStore, key: key, version: version,
		kick: make(chan struct{}, 1), log: log.With().Str("component", "key-backup").Logger(), onDone: m.opts.OnBackedUp, onFail: m.opts.OnBackupFailed}
	mach.SessionReceived = up.sessionReceived(mach.SessionReceived)
	return up, nil
}

// backupKey returns the backup key: the database's copy, or else the one in
// secret storage, created there the first time. A restore reads secret
// storage: the recovery key it was given must unlock it.
func backupKey(ctx context.Context, mach *crypto.OlmMachine, ssssKey func() (*ssss.Key, error), restoring bool) (*backup.MegolmBackupKey, error) {
	cached, err := mach.CryptoStore.GetSecret(ctx, SecretBackupKey)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", SecretBackupKey, err)
	}
	if raw, err := base64.RawStdEncoding.DecodeString(cached); cached != "" && err == nil && !restoring {
		if key, err := backup.MegolmBackupKeyFromBytes(raw); err == nil {
			return key, nil
		}
	}
	key, err := backupKeyFromSSSS(ctx, mach, ssssKey)
	if err != nil {
		return nil, err
	}
	if err := mach.CryptoStore.PutSecret(ctx, SecretBackupKey, base64.RawStdEncoding.EncodeToString(key.Bytes())); err != nil {
		return nil, fmt.Errorf("storing %s: %w", SecretBackupKey, err)
	}
	return key, nil
}

func backupKeyFromSSSS(ctx context.Context, mach *crypto.OlmMachine, unlock func() (*ssss.Key, error)) (*backup.MegolmBackupKey, error) {
	ssssKey, err := unlock()
	if err != nil {
		return nil, err
	}
	data, err := mach.SSSS.GetDecryptedAccountData(ctx, event.AccountDataMegolmBackupKey, ssssKey)
	if err == nil {
		key, err := backup.MegolmBackupKeyFromBytes(data)
		if err != nil {
			return nil, fmt.Errorf("the backup key in secret storage is invalid: %w", err)
		}
		return key, nil
	}
	// Not there yet, or kept under a secret storage key that a reset
	// replaced: a new backup key (and so a new backup version).
	if !errors.Is(err, mautrix.MNotFound) && !errors.Is(err, ssss.ErrNotEncryptedForKey) {
		return nil, fmt.Errorf("reading the backup key from secret storage: %w", err)
	}
	key, err := backup.NewMegolmBackupKey()
	if err != nil {
		return nil, err
	}
	if err := mach.SSSS.SetEncryptedAccountData(ctx, event.AccountDataMegolmBackupKey, key.Bytes(), ssssKey); err != nil {
		return nil, fmt.Errorf("storing the backup key in secret storage: %w", err)
	}
	return key, nil
}

// createVersion creates a backup version whose auth data is signed by the
// bot's device and master key, so clients trust it.
func createVersion(ctx context.Context, mach *crypto.OlmMachine, pub id.Ed25519) (id.KeyBackupVersion, error) {
	auth := backup.MegolmAuthData{PublicKey: pub}
	deviceSig, err := mach.GetAccount().SignJSON(auth)
	if err != nil {
		return "", err
	}
	masterSig, err := mach.CrossSigningKeys.MasterKey.SignJSON(auth)
	if err != nil {
		return "", err
	}
	user := mach.Client.UserID
	auth.Signatures = signatures.NewSingleSignature(user, id.KeyAlgorithmEd25519, mach.Client.DeviceID.String(), deviceSig)
	master := mach.CrossSigningKeys.MasterKey.PublicKey().String()
	auth.Signatures[user][id.NewKeyID(id.KeyAlgorithmEd25519, master)] = masterSig
	resp, err := mach.Client.CreateKeyBackupVersion(ctx, &mautrix.ReqRoomKeysVersionCreate[backup.MegolmAuthData]{
		Algorithm: id.KeyBackupAlgorithmMegolmBackupV1, AuthData: auth,
	})
	if err != nil {
		return "", fmt.Errorf("creating a backup version: %w", err)
	}
	return resp.Version, nil
}

func countSessions(ctx context.Context, store *crypto.SQLCryptoStore) int {
	var n int
	_ = store.DB.QueryRow(ctx, `SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE account_id=$1 AND session IS NOT NULL`, store.AccountID).Scan(&n)
	return n
}

// sessionReceived wraps the machine's new-room-key hook to wake the uploader.
func (u *uploader) sessionReceived(next func(context.Context, id.RoomID, id.SessionID, uint32)) func(context.Context, id.RoomID, id.SessionID, uint32) {
	return func(ctx context.Context, room id.RoomID, session id.SessionID, index uint32) {
		select {
		case u.kick <- struct{}{}:
		default:
		}
		if next != nil {
			next(ctx, room, session, index)
		}
	}
}

// run uploads new room keys until ctx ends: soon after one arrives, and in a
// periodic sweep.
func (u *uploader) run(ctx context.Context) {
	u.uploadLogged(ctx)
	sweep := time.NewTicker(backupSweep)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-u.kick:
			select {
			case <-ctx.Done():
				return
			case <-time.After(backupDebounce):
			}
		case <-sweep.C:
		}
		u.uploadLogged(ctx)
	}
}

func (u *uploader) uploadLogged(ctx context.Context) {
	n, err := u.upload(ctx)
	if err != nil && ctx.Err() == nil {
		u.log.Warn().Err(err).Msg("Uploading room keys to the backup failed; retrying later")
		if u.onFail != nil {
			u.onFail(u.bot, "upload")
		}
	}
	if n > 0 {
		u.log.Debug().Int("room_keys", n).Stringer("version", u.version).Msg("Backed up room keys")
		if u.onDone != nil {
			u.onDone(u.bot, n)
		}
	}
}

// upload sends every room key not yet in this backup version.
func (u *uploader) upload(ctx context.Context) (int, error) {
	// Read the whole list first: the store is marked while no rows are open.
	sessions, err := u.store.GetGroupSessionsWithoutKeyBackupVersion(ctx, u.version).AsList()
	if err != nil {
		return 0, fmt.Errorf("listing room keys to back up: %w", err)
	}
	done := 0
	for start := 0; start < len(sessions); start += backupChunk {
		chunk := sessions[start:min(start+backupChunk, len(sessions))]
		req := &mautrix.ReqKeyBackup{Rooms: map[id.RoomID]mautrix.ReqRoomKeyBackup{}}
		for _, s := range chunk {
			data, err := u.encrypt(s)
			if err != nil {
				u.log.Warn().Err(err).Stringer("session_id", s.ID()).Msg("Cannot back up a room key; skipped")
				continue
			}
			room, ok := req.Rooms[s.RoomID]
			if !ok {
				room = mautrix.ReqRoomKeyBackup{Sessions: map[id.SessionID]mautrix.ReqKeyBackupData{}}
				req.Rooms[s.RoomID] = room
			}
			room.Sessions[s.ID()] = data
		}
		if _, err := u.mach.Client.PutKeysInBackup(ctx, u.version, req); err != nil {
			return done, fmt.Errorf("uploading to backup version %s: %w", u.version, err)
		}
		for _, s := range chunk {
			if err := u.store.SetGroupSessionKeyBackupVersion(ctx, s.ID(), u.version); err != nil {
				return done, fmt.Errorf("marking a room key as backed up: %w", err)
			}
			done++
		}
	}
	return done, nil
}

func (u *uploader) encrypt(s *crypto.InboundGroupSession) (mautrix.ReqKeyBackupData, error) {
	first := s.Internal.FirstKnownIndex()
	exported, err := s.Internal.Export(first)
	if err != nil {
		return mautrix.ReqKeyBackupData{}, err
	}
	enc, err := backup.EncryptSessionData(u.key, backup.MegolmSessionData{
		Algorithm:          id.AlgorithmMegolmV1,
		ForwardingKeyChain: s.ForwardingChains,
		SenderClaimedKeys:  backup.SenderClaimedKeys{Ed25519: s.SigningKey},
		SenderKey:          s.SenderKey,
		SessionKey:         string(exported),
		SharedHistory:      s.SharedHistory,
	})
	if err != nil {
		return mautrix.ReqKeyBackupData{}, err
	}
	raw, err := json.Marshal(enc)
	if err != nil {
		return mautrix.ReqKeyBackupData{}, err
	}
	return mautrix.ReqKeyBackupData{
		FirstMessageIndex: int(first),
		ForwardedCount:    len(s.ForwardingChains),
		SessionData:       raw,
	}, nil
}
