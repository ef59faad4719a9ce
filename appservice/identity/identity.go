// Package identity gives each bot a cross-signed identity, the way a
// person's client does it: cross-signing keys (master, self-signing,
// user-signing) whose private halves live encrypted in the homeserver's
// secret storage (SSSS) under a recovery key, the bot's device signed by
// its self-signing key, and a server-side backup of the bot's room keys
// (m.megolm_backup.v1.curve25519-aes-sha2) whose key is in secret storage
// too. The recovery key is generated once and kept in the crypto store,
// encrypted with the pickle key; with it alone (and the homeserver), a bot
// whose database was lost gets its identity and its room keys back.
package identity

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/ssss"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/e2ee"
)

// Secrets opsbot keeps in each bot's crypto store (encrypted with the
// pickle key, like the bot's private keys).
const (
	// SecretRecoveryKey is the bot's SSSS recovery key.
	SecretRecoveryKey id.Secret = "org.opsbot.recovery_key"
	// SecretReset asks the next start to replace the bot's cross-signing
	// keys (set by `opsbot-appservice recovery-key reset`).
	SecretReset id.Secret = "org.opsbot.reset_cross_signing"
	// SecretRestore asks the next start to restore the bot's room keys from
	// its backup (set by `opsbot-appservice recovery-key restore`).
	SecretRestore id.Secret = "org.opsbot.restore_room_keys"
	// SecretSeeds caches the bot's private cross-signing keys, so a start
	// need not fetch them from secret storage.
	SecretSeeds id.Secret = "org.opsbot.cross_signing_seeds"
	// SecretPending holds new keys (cross-signing and secret storage)
	// from before they are published until the identity is complete: a
	// start that finds it finishes the job, whatever stopped the last one.
	SecretPending id.Secret = "org.opsbot.pending_identity"
	// SecretBackupKey caches the private key of the bot's room key backup,
	// so a start need not read it from secret storage.
	SecretBackupKey id.Secret = "org.opsbot.backup_key"
)

// ErrRecoveryKeyMissing means the homeserver has cross-signing keys for the
// bot but the database has no recovery key to unlock them: the database was
// lost or replaced. opsbot never overwrites such keys on its own.
var ErrRecoveryKeyMissing = errors.New("the homeserver has cross-signing keys for this bot but the database has no recovery key")

// Options configure a Manager.
type Options struct {
	HomeserverURL string
	// DendriteAdminToken, if set, lets opsbot pass Dendrite's password
	// user-interactive auth for uploading cross-signing keys: it gives the
	// bot a fresh random password through Dendrite's admin API first.
	DendriteAdminToken string
	// Password, if set, returns a client-mode bot's own password ("" if
	// it has none) and whether bot is one: it answers the prompt with it,
	// no admin needed, and its password is never reset.
	Password func(bot id.UserID) (password string, client bool)
	// KeyBackup turns on the server-side backup of room keys.
	KeyBackup bool
	Log       zerolog.Logger
	// OnBackedUp, if set, is told how many room keys were uploaded.
	OnBackedUp func(bot id.UserID, n int)
	// OnBackupFailed, if set, is told each failure of a bot's key backup:
	// stage "setup" at start (the backup then stays off until a restart),
	// "upload" for an upload that will be retried.
	OnBackupFailed func(bot id.UserID, stage string)
}

// Status is one bot's identity as set up at start.
type Status struct {
	CrossSigned   bool
	MasterKey     id.Ed25519
	BackupVersion id.KeyBackupVersion
}

// Manager sets up and keeps the identities of the bots.
type Manager struct {
	opts Options

	mu     sync.Mutex
	status map[id.UserID]*Status
}

// New returns a Manager.
func New(opts Options) *Manager {
	return &Manager{opts: opts, status: map[id.UserID]*Status{}}
}

// Status returns a bot's identity status (zero if it was never set up).
func (m *Manager) Status(bot id.UserID) Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.status[bot]; s != nil {
		return *s
	}
	return Status{}
}

// Setup gives a started bot device its cross-signed identity and key backup,
// and keeps uploading its room keys until ctx ends. It is called for every
// device at start (e2ee.Options.OnDevice). Errors are returned for the
// caller to log; the bot keeps working (Status says how far setup got).
func (m *Manager) Setup(ctx context.Context, dev *e2ee.Device) error {
	st := &Status{}
	err := m.setup(ctx, dev, st)
	m.mu.Lock()
	m.status[dev.UserID] = st
	m.mu.Unlock()
	return err
}

func (m *Manager) setup(ctx context.Context, dev *e2ee.Device, st *Status) error {
	log := m.opts.Log.With().Stringer("bot", dev.UserID).Logger()
	mach := dev.Machine
	store := mach.CryptoStore
	secret := func(name id.Secret) (string, error) {
		v, err := store.GetSecret(ctx, name)
		if err != nil {
			return "", fmt.Errorf("reading %s: %w", name, err)
		}
		return v, nil
	}
	recoveryKey, err := secret(SecretRecoveryKey)
	if err != nil {
		return err
	}
	reset, err := secret(SecretReset)
	if err != nil {
		return err
	}
	pendingJSON, err := secret(SecretPending)
	if err != nil {
		return err
	}
	server, err := queryOwnKeys(ctx, dev)
	if err != nil {
		return err
	}
	var key *ssss.Key
	switch {
	case pendingJSON != "":
		var p pendingIdentity
		if err := json.Unmarshal([]byte(pendingJSON), &p); err != nil {
			return fmt.Errorf("reading the unfinished identity: %w", err)
		}
		if key, err = m.finish(ctx, dev, &p, server, log); err != nil {
			return err
		}
	case recoveryKey == "" && server.master != "" && reset == "":
		return fmt.Errorf("%w: restore it with `opsbot-appservice recovery-key restore %s` (reads the key on stdin), "+
			"or replace the keys with `opsbot-appservice recovery-key reset %s` (people must verify the bot again)",
			ErrRecoveryKeyMissing, dev.UserID, dev.UserID)
	case recoveryKey == "" || reset != "":
		p, err := newPending(ctx, mach)
		if err != nil {
			return err
		}
		if key, err = m.finish(ctx, dev, p, server, log); err != nil {
			return err
		}
	default:
		if key, err = m.open(ctx, mach, recoveryKey, server); err != nil {
			return err
		}
		if !server.deviceSigned {
			// A new device (the database was restored from the recovery
			// key) or one signed by an older self-signing key.
			if err := signDevice(ctx, mach); err != nil {
				return err
			}
			log.Info().Stringer("device_id", dev.DeviceID).Msg("Signed the bot's device with its self-signing key")
		}
	}
	st.CrossSigned = true
	st.MasterKey = mach.CrossSigningKeys.MasterKey.PublicKey()
	log.Info().Stringer("master_key", st.MasterKey).Msg("Bot identity is cross-signed")
	if !m.opts.KeyBackup {
		return nil
	}
	restore, err := store.GetSecret(ctx, SecretRestore)
	if err != nil {
		return fmt.Errorf("reading the restore flag: %w", err)
	}
	if key == nil {
		key = &ssss.Key{} // unlocked only if the backup key must be read from secret storage
	}
	up, err := m.setupBackup(ctx, dev, lazyKey(ctx, mach, key, recoveryKey), restore != "", log)
	if err != nil {
		if m.opts.OnBackupFailed != nil {
			m.opts.OnBackupFailed(dev.UserID, "setup")
		}
		return fmt.Errorf("key backup: %w", err)
	}
	if restore != "" {
		if err := store.DeleteSecret(ctx, SecretRestore); err != nil {
			return fmt.Errorf("clearing the restore flag: %w", err)
		}
	}
	st.BackupVersion = up.version
	go up.run(ctx)
	return nil
}

// pendingIdentity is a new identity from its creation until it is
// complete: cross-signing keys and the secret storage key that keeps them.
type pendingIdentity struct {
	Seeds    crypto.CrossSigningSeeds `json:"seeds"`
	KeyID    string                   `json:"key_id"`
	Key      []byte                   `json:"key"`
	Metadata *ssss.KeyMetadata        `json:"metadata"`
}

// newPending makes new cross-signing keys and a new secret storage key and
// stores them (pickled with the other secrets) before anything is sent:
// a crash after the homeserver took them must not leave keys on the
// server that the database cannot unlock.
func newPending(ctx context.Context, mach *crypto.OlmMachine) (*pendingIdentity, error) {
	key, err := ssss.NewKey("")
	if err != nil {
		return nil, err
	}
	keys, err := mach.GenerateCrossSigningKeys()
	if err != nil {
		return nil, err
	}
	p := &pendingIdentity{Seeds: keys.Seeds(), KeyID: key.ID, Key: key.Key, Metadata: key.Metadata}
	data, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	if err := mach.CryptoStore.PutSecret(ctx, SecretPending, string(data)); err != nil {
		return nil, fmt.Errorf("storing the new keys: %w", err)
	}
	return p, nil
}

// finish publishes a pending identity (unless the homeserver already has
// it), stores its private keys in secret storage, signs the device, and
// only then makes it the bot's identity in the database. Each step may be
// done again, so a start that finds the identity pending finishes it.
//
// A homeserver that wants auth opsbot cannot give refuses the keys before
// anything else happens; the pending keys are dropped then, so every start
// of a bot that cannot cross-sign costs one request and leaves nothing.
func (m *Manager) finish(ctx context.Context, dev *e2ee.Device, p *pendingIdentity, server ownKeys, log zerolog.Logger) (*ssss.Key, error) {
	mach := dev.Machine
	store := mach.CryptoStore
	keys, err := p.Seeds.Decode()
	if err != nil {
		return nil, fmt.Errorf("decoding the new cross-signing keys: %w", err)
	}
	key := &ssss.Key{ID: p.KeyID, Key: p.Key, Metadata: p.Metadata}
	if server.master != keys.MasterKey.PublicKey() {
		var uiaErr error
		uia := func(resp *mautrix.RespUserInteractive) any {
			auth, err := m.passwordAuth(ctx, dev, resp)
			uiaErr = err
			return auth
		}
		if err := mach.PublishCrossSigningKeys(ctx, &keys, uia); err != nil {
			var httpErr mautrix.HTTPError
			if uiaErr != nil || (errors.As(err, &httpErr) && httpErr.Response != nil && httpErr.Response.StatusCode < 500) {
				if derr := store.DeleteSecret(ctx, SecretPending); derr != nil {
					log.Warn().Err(derr).Msg("Could not drop the refused cross-signing keys")
				}
			}
			if uiaErr != nil {
				return nil, uiaErr
			}
			return nil, fmt.Errorf("uploading the cross-signing keys: %w", err)
		}
	} else {
		if err := mach.ImportCrossSigningKeys(p.Seeds); err != nil {
			return nil, err
		}
		log.Info().Msg("The homeserver has the bot's new cross-signing keys from an unfinished start; finishing the setup")
	}
	if err := mach.SSSS.SetKeyData(ctx, key.ID, key.Metadata); err != nil {
		return nil, fmt.Errorf("creating the secret storage key: %w", err)
	}
	if err := mach.UploadCrossSigningKeysToSSSS(ctx, key, &keys); err != nil {
		return nil, fmt.Errorf("storing the cross-signing keys in secret storage: %w", err)
	}
	if err := mach.SSSS.SetDefaultKeyID(ctx, key.ID); err != nil {
		return nil, fmt.Errorf("marking the secret storage key as default: %w", err)
	}
	if err := signDevice(ctx, mach); err != nil {
		return nil, err
	}
	seeds, err := json.Marshal(p.Seeds)
	if err != nil {
		return nil, err
	}
	for _, s := range []struct {
		name  id.Secret
		value string
	}{{SecretRecoveryKey, key.RecoveryKey()}, {SecretSeeds, string(seeds)}} {
		if err := store.PutSecret(ctx, s.name, s.value); err != nil {
			return nil, fmt.Errorf("storing %s: %w", s.name, err)
		}
	}
	for _, s := range []id.Secret{SecretPending, SecretReset, SecretBackupKey} {
		if err := store.DeleteSecret(ctx, s); err != nil {
			return nil, fmt.Errorf("clearing %s: %w", s, err)
		}
	}
	log.Info().Stringer("master_key", keys.MasterKey.PublicKey()).
		Msg("Created the bot's cross-signing keys; the recovery key is in the database (opsbot-appservice recovery-key show)")
	return key, nil
}

// open unlocks a bot's identity: its private cross-signing keys from the
// database's copy, or else from secret storage with the recovery key (then
// copied into the database). It returns the secret storage key if it had
// to unlock it, else nil.
func (m *Manager) open(ctx context.Context, mach *crypto.OlmMachine, recoveryKey string, server ownKeys) (*ssss.Key, error) {
	cached, err := mach.CryptoStore.GetSecret(ctx, SecretSeeds)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", SecretSeeds, err)
	}
	var key *ssss.Key
	var seeds crypto.CrossSigningSeeds
	if cached == "" || json.Unmarshal([]byte(cached), &seeds) != nil || mach.ImportCrossSigningKeys(seeds) != nil ||
		mach.CrossSigningKeys.MasterKey.PublicKey() != server.master {
		if key, err = unlock(ctx, mach, recoveryKey); err != nil {
			return nil, err
		}
		if err := mach.FetchCrossSigningKeysFromSSSS(ctx, key); err != nil {
			return nil, fmt.Errorf("fetching the cross-signing keys from secret storage: %w", err)
		}
		if data, err := json.Marshal(mach.ExportCrossSigningKeys()); err == nil {
			if err := mach.CryptoStore.PutSecret(ctx, SecretSeeds, string(data)); err != nil {
				return nil, fmt.Errorf("storing %s: %w", SecretSeeds, err)
			}
		}
	}
	if ours := mach.CrossSigningKeys.MasterKey.PublicKey(); server.master != ours {
		return nil, fmt.Errorf("the homeserver's master key %s is not the one in secret storage (%s): the keys were replaced by another client; reset them with `opsbot-appservice recovery-key reset %s`", server.master, ours, mach.Client.UserID)
	}
	return key, nil
}

// passwordAuth answers a user-interactive auth challenge for the bot. A
// client-mode bot answers with its own password. An appservice user has
// none; on Dendrite, which always asks for one, opsbot sets a fresh random
// one through the admin API and uses it once.
func (m *Manager) passwordAuth(ctx context.Context, dev *e2ee.Device, resp *mautrix.RespUserInteractive) (any, error) {
	if !resp.HasSingleStageFlow(mautrix.AuthTypePassword) {
		return nil, fmt.Errorf("the homeserver wants user-interactive auth (%v) to upload cross-signing keys, and opsbot can only answer a password stage", resp.Flows)
	}
	if m.opts.Password != nil {
		switch password, client := m.opts.Password(dev.UserID); {
		case password != "":
			return passwordAnswer(dev.UserID, resp.Session, password), nil
		case client:
			// An ordinary account's password is its owner's: never reset.
			return nil, errors.New("the homeserver asks for the bot's password to upload cross-signing keys: set its account.password " +
				"(the bot keeps working unsigned until then), or turn encryption.cross_signing off")
		}
	}
	if m.opts.DendriteAdminToken == "" {
		return nil, errors.New("the homeserver asks for the bot's password to upload cross-signing keys; for a client-mode bot set its account.password, " +
			"for an appservice bot on Dendrite set encryption.dendrite_admin_token " +
			"(OPSBOT_DENDRITE_ADMIN_TOKEN) to an admin's access token so opsbot can set one, on Synapse enable MSC4190 for the appservice " +
			"(see docs/homeservers.md), or turn encryption.cross_signing off")
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return nil, err
	}
	password := base64.RawURLEncoding.EncodeToString(buf)
	admin, err := mautrix.NewClient(m.opts.HomeserverURL, "", m.opts.DendriteAdminToken)
	if err != nil {
		return nil, err
	}
	admin.Log = m.opts.Log
	url := admin.BuildURL(mautrix.BaseURLPath{"_dendrite", "admin", "resetPassword", dev.UserID.String()})
	body := map[string]any{"password": password, "logout_devices": false}
	if _, err := admin.MakeFullRequest(ctx, mautrix.FullRequest{Method: "POST", URL: url, RequestJSON: body, SensitiveContent: true}); err != nil {
		return nil, fmt.Errorf("setting the bot's password through Dendrite's admin API (encryption.dendrite_admin_token): %w", err)
	}
	return passwordAnswer(dev.UserID, resp.Session, password), nil
}

// passwordAnswer is the password stage of user-interactive auth.
func passwordAnswer(user id.UserID, session, password string) *mautrix.ReqUIAuthLogin {
	return &mautrix.ReqUIAuthLogin{
		BaseAuthData: mautrix.BaseAuthData{Type: mautrix.AuthTypePassword, Session: session},
		User:         user.String(),
		Password:     password,
	}
}

// lazyKey returns the secret storage key: key if it is known (its Key
// set), else unlocked with the recovery key on first use.
func lazyKey(ctx context.Context, mach *crypto.OlmMachine, key *ssss.Key, recoveryKey string) func() (*ssss.Key, error) {
	return func() (*ssss.Key, error) {
		if key.Key == nil {
			unlocked, err := unlock(ctx, mach, recoveryKey)
			if err != nil {
				return nil, err
			}
			*key = *unlocked
		}
		return key, nil
	}
}

// unlock checks a recovery key against the server's default secret storage
// key.
func unlock(ctx context.Context, mach *crypto.OlmMachine, recoveryKey string) (*ssss.Key, error) {
	keyID, keyData, err := mach.SSSS.GetDefaultKeyData(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the secret storage key description from the homeserver: %w", err)
	}
	key, err := keyData.VerifyRecoveryKey(keyID, recoveryKey)
	if err != nil && !errors.Is(err, ssss.ErrUnverifiableKey) {
		return nil, fmt.Errorf("the recovery key does not unlock the homeserver's secret storage key %s: %w", keyID, err)
	}
	return key, nil
}

func signDevice(ctx context.Context, mach *crypto.OlmMachine) error {
	if err := mach.SignOwnDevice(ctx, mach.OwnIdentity()); err != nil {
		return fmt.Errorf("signing the bot's device: %w", err)
	}
	if err := mach.SignOwnMasterKey(ctx); err != nil {
		return fmt.Errorf("signing the master key with the device: %w", err)
	}
	return nil
}

type ownKeys struct {
	master       id.Ed25519
	deviceSigned bool // by the current self-signing key
}

// queryOwnKeys asks the homeserver for the bot's published master key and
// whether its device carries a self-signing signature.
func queryOwnKeys(ctx context.Context, dev *e2ee.Device) (ownKeys, error) {
	resp := dev.ServerKeys // asked at start for all bots
	if resp == nil {
		var err error
		resp, err = dev.Client.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: map[id.UserID]mautrix.DeviceIDList{dev.UserID: {dev.DeviceID}}})
		if err != nil {
			return ownKeys{}, fmt.Errorf("querying the bot's own keys: %w", err)
		}
	}
	var k ownKeys
	if mk, ok := resp.MasterKeys[dev.UserID]; ok {
		k.master = mk.FirstKey()
	}
	ssk, ok := resp.SelfSigningKeys[dev.UserID]
	if !ok {
		return k, nil
	}
	sskKey := ssk.FirstKey()
	if keys, ok := resp.DeviceKeys[dev.UserID][dev.DeviceID]; ok {
		_, k.deviceSigned = keys.Signatures[dev.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, sskKey.String())]
	}
	return k, nil
}
