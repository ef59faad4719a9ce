// Package e2ee gives every bot user its own end-to-end-encryption device:
// an Olm account created through appservice login, an OlmMachine on the SQL
// crypto store (same database, one account per bot, keys pickled with the
// configured key), and a way to receive to-device messages, device-list
// changes and one-time-key counts: a filtered /sync loop per device (sync
// mode) or the fields of pushed transactions (appservice mode).
//
// The pipeline calls Decrypt for m.room.encrypted events and HandleState for
// membership and history-visibility changes; the outbox calls Encrypt.
package e2ee

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Modes of key delivery.
const (
	ModeSync       = "sync"
	ModeAppservice = "appservice"
)

// Options configure a Manager.
type Options struct {
	DB            *dbutil.Database
	StateStore    StateStore
	HomeserverURL string
	ASToken       string
	PickleKey     []byte
	Bots          []id.UserID
	// Mode is ModeSync, ModeAppservice or "auto" (resolved by Start from
	// what the homeserver advertises and does; see delivery.go).
	Mode string
	// Sender is the appservice's sender user, which Synapse does not let
	// use /sync.
	Sender id.UserID
	// ClientBots are the client-mode bots (ordinary accounts), each with
	// its logged-in client: its device is that login's, and its keys come
	// with its own /sync through the event path, whatever Mode says.
	ClientBots map[id.UserID]*mautrix.Client
	// Features remembers what the homeserver pushed in transactions.
	Features FeatureStore
	// MSC4190 creates devices through the appservice API (PUT /devices)
	// and acts for them with the appservice token and the device ID,
	// instead of logging in with m.login.application_service.
	MSC4190 bool
	// Trust is the key sharing policy: all, cross-signed or verified.
	Trust string
	// DecryptWait bounds the wait for a late room key.
	DecryptWait time.Duration
	Log         zerolog.Logger
	// OnEphemeral, if set, receives the typing notifications and receipts a
	// bot device's /sync carries (sync mode), with the receiving bot.
	OnEphemeral func(ctx context.Context, bot id.UserID, evt *event.Event)
	// OnOTKCount, if set, is told each bot device's one-time-key count as
	// the homeserver reports it.
	OnOTKCount func(bot id.UserID, count int)
	// OnKeyDelivery, if set, is told for each bot device whether it
	// receives keys: at start, and when that changes.
	OnKeyDelivery func(bot id.UserID, ok bool)
	// OnDevice, if set, is called for every bot device once it is logged in
	// and its keys are on the server, before its loops start: the place to
	// hook more onto the device (cross-signing, verification handlers).
	OnDevice func(ctx context.Context, dev *Device) error
	// Observe, if set, is told the outcome of each decryption ("ok",
	// "late_key", "no_session", "error") and each encryption.
	Observe func(op, outcome string)
}

// StateStore is what encryption needs to know about rooms (mautrix's
// sqlstatestore implements it). The devices' own clients get it too, so
// that whatever they send into a room (verification events) is encrypted
// when the room is.
type StateStore interface {
	mautrix.StateStore
	crypto.StateStore
}

// Device is one bot's E2EE device.
type Device struct {
	UserID   id.UserID
	DeviceID id.DeviceID
	Client   *mautrix.Client
	Machine  *crypto.OlmMachine
	// OnVerification, if set (before the device's loops start), gets the
	// device's to-device verification events (m.key.verification.*), from
	// /sync or from transactions, with their content parsed.
	OnVerification func(ctx context.Context, evt *event.Event)
	store          *crypto.SQLCryptoStore
	log            zerolog.Logger
	// viaTransactions: the device's to-device events, one-time-key counts
	// and device lists come through the event path (an appservice bot's
	// transactions, a client-mode bot's /sync intake), not a /sync here.
	viaTransactions bool
	// client: a client-mode bot's device, the device of its login.
	client bool
	// noKeys, if set, says why nothing has brought the device keys yet,
	// and since when.
	noKeys atomic.Pointer[noKeys]
	reused bool // the device existed before this start
	// ServerKeys is what the homeserver said of the bot's own keys at
	// start (one query for all bots): device keys, cross-signing keys.
	ServerKeys *mautrix.RespQueryKeys
}

type noKeys struct {
	why   string
	since time.Time
	// unanswered: the homeserver was expected to push the keys and did
	// not within the start's probe, which a late push can still answer.
	unanswered bool
}

func (d *Device) setKeyProblem(why string, unanswered bool) {
	d.noKeys.Store(&noKeys{why: why, since: time.Now(), unanswered: unanswered})
}

// keyProblem says why the device gets no keys, or "".
func (d *Device) keyProblem() string {
	if p := d.noKeys.Load(); p != nil {
		return p.why
	}
	return ""
}

// keyDeliveryGrace is how long after start a device whose keys are to come
// in transactions, with the start's probe unanswered, is still expected to
// get them: a homeserver can push the first to-device event a little after
// the probe gave up waiting (seen with Synapse).
const keyDeliveryGrace = 30 * time.Second

// mayStillGetKeys reports whether the device's key problem is an
// unanswered probe that a late transaction can still end (within
// keyDeliveryGrace of the start).
func (d *Device) mayStillGetKeys() bool {
	p := d.noKeys.Load()
	return p != nil && p.unanswered && d.viaTransactions && time.Since(p.since) < keyDeliveryGrace
}

// Manager holds the devices of all bots.
type Manager struct {
	opts    Options
	devices map[id.UserID]*Device
	order   []id.UserID
	// encryptLocks serialises session sharing per bot and room.
	encryptLocks sync.Map
	deviceInfo   chan deviceInfo
	wg           sync.WaitGroup
	// Transactions is told what each transaction carries (intake calls
	// its Observe); key delivery is chosen from it.
	Transactions *Transactions
	// deviceInfoWanted is 1 while device lists and one-time-key counts
	// from transactions are of use (until Start decides, then if any
	// device gets its keys there), 0 otherwise.
	deviceInfoWanted atomic.Bool
	// shared is the part of the bots' crypto stores they share (store.go).
	shared *Shared
}

// New prepares a manager; Start logs the devices in.
func New(opts Options) *Manager {
	if opts.DecryptWait == 0 {
		opts.DecryptWait = 30 * time.Second
	}
	m := &Manager{opts: opts, devices: map[id.UserID]*Device{}, deviceInfo: make(chan deviceInfo, 256),
		Transactions: newTransactions(opts.Features, opts.Log), shared: NewShared(opts.DB)}
	m.deviceInfoWanted.Store(opts.Mode != ModeSync)
	return m
}

// Start creates or reuses each bot's device, makes sure its keys are on the
// server, resolves key delivery (versions is the homeserver's /versions
// answer, for mode auto) and starts the devices' loops until ctx ends. It
// returns the key delivery mode and why it was chosen.
func (m *Manager) Start(ctx context.Context, versions *mautrix.RespVersions) (mode, why string, err error) {
	if err := m.open(ctx); err != nil {
		return "", "", err
	}
	mode, why = m.opts.Mode, "set in encryption.mode"
	unconfirmed := false // appservice mode without evidence (chooseMode)
	chosen := make(chan struct{})
	if mode == "auto" {
		// The probe's answer is awaited while the devices are set up.
		go func() {
			defer close(chosen)
			mode, why, unconfirmed = m.chooseMode(ctx, versions)
		}()
	} else {
		close(chosen)
	}
	if m.opts.OnDevice != nil {
		err := inParallel(ctx, len(m.order), func(ctx context.Context, i int) error {
			if err := m.opts.OnDevice(ctx, m.devices[m.order[i]]); err != nil {
				return fmt.Errorf("encryption device of %s: %w", m.order[i], err)
			}
			return nil
		})
		if err != nil {
			<-chosen
			return "", "", err
		}
	}
	for _, dev := range m.devices {
		dev.ServerKeys = nil // what the start-up needed, not true for long
	}
	<-chosen
	if err := ctx.Err(); err != nil {
		return "", "", err // stopped while starting: nothing was decided
	}
	if m.opts.MSC4190 && mode != ModeAppservice && len(m.appserviceBots()) > 0 {
		return "", "", fmt.Errorf("encryption.msc4190 needs key delivery in transactions, but %s", why)
	}
	m.opts.Mode = mode
	unconfirmed = unconfirmed && !m.Transactions.has(FeatureToDevice, FeatureDeviceInfo)
	err = inParallel(ctx, len(m.order), func(ctx context.Context, i int) error {
		dev := m.devices[m.order[i]]
		dev.viaTransactions = mode == ModeAppservice || dev.client
		if dev.client {
			return nil
		}
		if unconfirmed {
			dev.setKeyProblem("no transaction has brought encryption keys yet: "+why, true)
			dev.log.Warn().Str("why", why).Msg("This bot's device has not received encryption keys in transactions yet")
		}
		// Synapse refuses /sync to the appservice's sender user only; the
		// other bots' devices sync like any client's, and their sync loops
		// log what goes wrong. One /sync each would cost a start with many
		// bots more than all the rest.
		if mode != ModeSync || dev.UserID != m.opts.Sender {
			return nil
		}
		if err := m.checkSync(ctx, dev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// Keys can still come in transactions: if the homeserver
			// pushes them after all (a late probe), they are taken.
			dev.viaTransactions = true
			if !m.Transactions.has(FeatureToDevice, FeatureDeviceInfo) {
				dev.setKeyProblem(err.Error(), false)
				dev.log.Error().Err(err).Msg("This bot's device cannot receive encryption keys")
			}
		}
		return nil
	})
	if err != nil {
		return "", "", err
	}
	m.deviceInfoWanted.Store(m.anyViaTransactions())
	m.Transactions.start(mode, m.keysInTransactions)
	for _, bot := range m.order {
		m.reportKeyDelivery(m.devices[bot])
	}
	m.run(ctx)
	return mode, why, nil
}

// keysInTransactions is called once transactions have carried both
// to-device events and device information: devices waiting for their keys
// in transactions have them from now on.
func (m *Manager) keysInTransactions() {
	for _, bot := range m.order {
		dev := m.devices[bot]
		if dev.viaTransactions && dev.keyProblem() != "" {
			dev.noKeys.Store(nil)
			dev.log.Info().Msg("The homeserver pushes this bot's keys in transactions after all: it receives them from now on")
			m.reportKeyDelivery(dev)
		}
	}
}

func (m *Manager) reportKeyDelivery(dev *Device) {
	if m.opts.OnKeyDelivery != nil {
		m.opts.OnKeyDelivery(dev.UserID, dev.keyProblem() == "")
	}
}

// open creates or reuses each bot's device and makes sure its keys are on
// the server.
func (m *Manager) open(ctx context.Context) error {
	// The crypto tables are shared by every bot (one account row each).
	store := crypto.NewSQLCryptoStore(m.opts.DB, dbutil.ZeroLogger(m.opts.Log.With().Str("db_section", "crypto").Logger()), "", "", m.opts.PickleKey)
	if err := store.DB.Upgrade(ctx); err != nil {
		return fmt.Errorf("migrating the crypto store: %w", err)
	}
	devices := make([]*Device, len(m.opts.Bots))
	err := inParallel(ctx, len(devices), func(ctx context.Context, i int) (err error) {
		if devices[i], err = m.startDevice(ctx, m.opts.Bots[i]); err != nil {
			return fmt.Errorf("encryption device of %s: %w", m.opts.Bots[i], err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// One question for all bots' keys, not one per bot.
	query := &mautrix.ReqQueryKeys{DeviceKeys: map[id.UserID]mautrix.DeviceIDList{}}
	for _, dev := range devices {
		query.DeviceKeys[dev.UserID] = mautrix.DeviceIDList{dev.DeviceID}
	}
	server, err := devices[0].Client.QueryKeys(ctx, query)
	if err != nil {
		return fmt.Errorf("querying the bots' own keys: %w", err)
	}
	err = inParallel(ctx, len(devices), func(ctx context.Context, i int) error {
		devices[i].ServerKeys = server
		if err := devices[i].ensureKeysOnServer(ctx); err != nil {
			return fmt.Errorf("encryption device of %s: %w", devices[i].UserID, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, dev := range devices {
		m.devices[dev.UserID] = dev
		m.order = append(m.order, dev.UserID)
		if dev.reused {
			dev.log.Info().Stringer("device_id", dev.DeviceID).Msg("Reusing the bot's encryption device")
		} else {
			dev.log.Info().Stringer("device_id", dev.DeviceID).Msg("Created the bot's encryption device")
		}
	}
	return nil
}

// startConcurrency bounds the bots whose devices start at once: start-up
// waits mostly for the homeserver, which should not get a hundred logins
// in the same instant.
const startConcurrency = 8

// inParallel runs f for 0..n-1, startConcurrency at a time, and returns
// the first error; after one, no more are started. f gets ctx itself, not
// a context of the loop: what it starts may outlive the loop.
func inParallel(ctx context.Context, n int, f func(ctx context.Context, i int) error) error {
	slots := make(chan struct{}, startConcurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return first != nil
	}
	for i := range n {
		slots <- struct{}{}
		if failed() || ctx.Err() != nil {
			<-slots
			break
		}
		wg.Go(func() {
			defer func() { <-slots }()
			if err := f(ctx, i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first == nil {
		return ctx.Err()
	}
	return first
}

// Indexes is where the message indexes of decrypted events wait to be
// written: the event path writes them with its done marks (store.go).
func (m *Manager) Indexes() *Shared { return m.shared }

// SQLStore is the device's SQL crypto store (its database, its secrets).
func (d *Device) SQLStore() *crypto.SQLCryptoStore { return d.store }

// run starts the devices' loops: device lists and one-time-key counts from
// transactions, or each device's /sync; expired-session cleanup; and the
// writing of message indexes no done mark took along.
func (m *Manager) run(ctx context.Context) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.flushIndexesLoop(ctx)
	}()
	if m.anyViaTransactions() {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.deviceInfoLoop(ctx)
		}()
	}
	for _, bot := range m.order {
		dev := m.devices[bot]
		if !dev.viaTransactions {
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				m.syncLoop(ctx, dev)
			}()
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			dev.Machine.ExpiredKeyDeleteLoop(ctx)
		}()
	}
}

// Mode returns the key delivery mode ("auto" until Start resolved it).
func (m *Manager) Mode() string { return m.opts.Mode }

// appserviceBots are the bots whose devices the appservice made (not
// client mode), in config order: key delivery is chosen for them.
func (m *Manager) appserviceBots() []id.UserID {
	var out []id.UserID
	for _, bot := range m.order {
		if !m.devices[bot].client {
			out = append(out, bot)
		}
	}
	return out
}

func (m *Manager) anyViaTransactions() bool {
	for _, bot := range m.order {
		if m.devices[bot].viaTransactions {
			return true
		}
	}
	return false
}

// Wait blocks until the background loops have stopped (after ctx ends).
func (m *Manager) Wait() { m.wg.Wait() }

// Device returns a bot's device, or nil.
func (m *Manager) Device(bot id.UserID) *Device { return m.devices[bot] }

func (m *Manager) startDevice(ctx context.Context, bot id.UserID) (*Device, error) {
	log := m.opts.Log.With().Stringer("bot", bot).Logger()
	store := crypto.NewSQLCryptoStore(m.opts.DB, dbutil.ZeroLogger(log.With().Str("db_section", "crypto").Logger()), bot.String(), "", m.opts.PickleKey)
	storedID, err := store.FindDeviceID(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the stored device ID: %w", err)
	}
	client, deviceID := m.opts.ClientBots[bot], storedID
	clientMode := client != nil
	if clientMode {
		// A client-mode bot: its login made the device (appservice/accounts).
		if storedID != "" && storedID != client.DeviceID {
			return nil, fmt.Errorf("the bot's login is device %s, but this database holds the encryption keys of its device %s: "+
				"give it an access token of device %s; or, to give up the old device, run `opsbot-appservice device new %s` "+
				"(the new device is signed by the bot's identity)",
				client.DeviceID, storedID, storedID, bot)
		}
		deviceID = client.DeviceID
	} else {
		if deviceID == "" {
			deviceID = newDeviceID()
		}
		if client, err = mautrix.NewClient(m.opts.HomeserverURL, bot, m.opts.ASToken); err != nil {
			return nil, err
		}
		client.Log = log.With().Str("component", "e2ee-client").Logger()
		client.DefaultHTTPRetries = 3
		localpart, _, _ := bot.Parse()
		if err := m.resumeDevice(ctx, client, store, deviceID, storedID != "", "opsbot ("+localpart+")"); err != nil {
			return nil, err
		}
	}
	store.DeviceID = deviceID
	client.Store = store
	client.StateStore = m.opts.StateStore
	client.Crypto = clientCrypto{m: m, bot: bot}
	cached, err := m.shared.NewStore(ctx, store)
	if err != nil {
		return nil, err
	}
	machine := crypto.NewOlmMachine(client, &log, cached, m.opts.StateStore)
	machine.SendKeysMinTrust = trustLevel(m.opts.Trust)
	// Only the bot's own other devices may ask for its room keys (it has none
	// today), so keys never leak to a device the policy would not share with.
	machine.ShareKeysMinTrust = id.TrustStateCrossSignedTOFU
	// Ratchet tracking writes the session on every decryption, only for
	// features opsbot does not turn on (deleting fully used keys).
	machine.DisableRatchetTracking = true
	if err := machine.Load(ctx); err != nil {
		return nil, fmt.Errorf("loading the Olm account: %w", err)
	}
	return &Device{UserID: bot, DeviceID: deviceID, Client: client, Machine: machine, store: store, log: log, reused: storedID != "",
		client: clientMode}, nil
}

// SecretDeviceToken keeps the access token of a bot's device (not with
// MSC4190, where the appservice token acts for the device), so that a
// restart need not log in again: a login is the costliest request of a
// start on Dendrite and Synapse alike.
const SecretDeviceToken id.Secret = "org.opsbot.device_token"

// resumeDevice uses the device's stored token if the homeserver still
// takes it for the device, and otherwise opens the device (openDevice)
// and stores the new token.
func (m *Manager) resumeDevice(ctx context.Context, client *mautrix.Client, store *crypto.SQLCryptoStore, deviceID id.DeviceID, existed bool, name string) error {
	if !m.opts.MSC4190 && existed {
		token, err := store.GetSecret(ctx, SecretDeviceToken)
		if err != nil {
			return fmt.Errorf("reading the device's access token: %w", err)
		}
		if token != "" {
			client.AccessToken, client.DeviceID = token, deviceID
			who, err := client.Whoami(ctx)
			switch {
			case err == nil && who.UserID == client.UserID && who.DeviceID == deviceID:
				return nil
			case err == nil, errors.Is(err, mautrix.MUnknownToken):
				// Logged out, or the device was deleted: log in again.
			default:
				return fmt.Errorf("checking the device's access token (GET /account/whoami): %w", err)
			}
			client.AccessToken = m.opts.ASToken
		}
	}
	if err := m.openDevice(ctx, client, deviceID, name); err != nil {
		return err
	}
	if m.opts.MSC4190 {
		return nil
	}
	if err := store.PutSecret(ctx, SecretDeviceToken, client.AccessToken); err != nil {
		return fmt.Errorf("storing the device's access token: %w", err)
	}
	return nil
}

// openDevice creates the bot's device with a fixed ID, or opens it again:
// with appservice login (the device's own access token, kept by the client)
// or, with MSC4190, through the appservice API (the appservice token,
// naming the user and device in each request).
func (m *Manager) openDevice(ctx context.Context, client *mautrix.Client, deviceID id.DeviceID, name string) error {
	if m.opts.MSC4190 {
		client.SetAppServiceUserID = true
		if err := client.CreateDeviceMSC4190(ctx, deviceID, name); err != nil {
			return fmt.Errorf("creating device %s through the appservice API (MSC4190) as %s: %w", deviceID, client.UserID, err)
		}
		return nil
	}
	localpart, _, _ := client.UserID.Parse()
	// The first time this creates the device, later it returns a new token
	// for the same device and the keys in the database stay valid.
	resp, err := client.Login(ctx, &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypeAppservice,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		DeviceID:                 deviceID,
		InitialDeviceDisplayName: name,
		StoreCredentials:         true,
	})
	var httpErr mautrix.HTTPError
	if errors.As(err, &httpErr) && httpErr.RespError != nil && httpErr.RespError.ErrCode == "IO.ELEMENT.MSC4190.M_APPSERVICE_LOGIN_UNSUPPORTED" {
		return fmt.Errorf("the homeserver refuses appservice login for %s and wants MSC4190 (Synapse with next-generation auth, MAS, does): "+
			"set encryption.msc4190: true and install the registration generate-registration writes then (docs/homeservers.md): %w", client.UserID, err)
	}
	if err != nil {
		return fmt.Errorf("appservice login (m.login.application_service) as %s: %w", client.UserID, err)
	}
	if resp.DeviceID != deviceID {
		return fmt.Errorf("the homeserver gave device %s, not the requested %s", resp.DeviceID, deviceID)
	}
	return nil
}

// ensureKeysOnServer uploads the device keys the first time, and checks on
// later starts that the server still has the keys this database holds.
func (d *Device) ensureKeysOnServer(ctx context.Context) error {
	resp := d.ServerKeys
	own := d.Machine.OwnIdentity()
	shared := d.Machine.GetAccount().Shared
	keys, ok := resp.DeviceKeys[d.UserID][d.DeviceID]
	switch {
	case !ok || len(keys.Keys) == 0:
		if shared && d.client {
			// A client-mode bot logged in again as its device after the
			// device was logged out or removed, which took its keys off the
			// server: the same keys go up again, so people's clients see
			// the same device, not a new one to verify.
			d.log.Warn().Stringer("device_id", d.DeviceID).Msg("The homeserver forgot this device's keys (it was logged out or removed); uploading them again")
			d.Machine.GetAccount().Shared = false
		} else if shared {
			return fmt.Errorf("the device's keys disappeared from the server; to start over, run `opsbot-appservice device new %s` and restart opsbot", d.UserID)
		}
		if err := d.Machine.ShareKeys(ctx, -1); err != nil {
			return fmt.Errorf("uploading device keys: %w", err)
		}
		return nil
	case !shared && keys.Keys.GetEd25519(d.DeviceID) == own.SigningKey:
		// Our own upload, which reached the server before a crash let us
		// note it: upload again (the same keys) and note it this time.
		if err := d.Machine.ShareKeys(ctx, -1); err != nil {
			return fmt.Errorf("uploading device keys again: %w", err)
		}
		return nil
	case !shared:
		return errors.New("the server has keys for this device, but the database does not know them (restored an old database?)")
	case keys.Keys.GetEd25519(d.DeviceID) != own.SigningKey:
		return fmt.Errorf("the server's signing key for device %s differs from the database's: wrong database or pickle key", d.DeviceID)
	}
	return nil
}

func trustLevel(policy string) id.TrustState {
	switch policy {
	case "cross-signed":
		return id.TrustStateCrossSignedTOFU
	case "verified":
		// Devices the bot verified, and devices cross-signed by a user whose
		// identity the bot verified (SAS signs their master key).
		return id.TrustStateCrossSignedVerified
	}
	return id.TrustStateUnset
}

const deviceIDLetters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

// newDeviceID returns OPSBOT followed by 10 random capital letters.
func newDeviceID() id.DeviceID {
	b := []byte("OPSBOT")
	for i := 0; i < 10; i++ {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(deviceIDLetters))))
		if err != nil {
			panic(err)
		}
		b = append(b, deviceIDLetters[n.Int64()])
	}
	return id.DeviceID(b)
}

// HandleState tells the bots' machines about membership and history
// visibility changes in a room they are in, so outbound sessions are rotated
// when someone leaves (and re-shared when someone joins).
func (m *Manager) HandleState(ctx context.Context, evt *event.Event, roomBots []id.UserID) {
	for _, bot := range roomBots {
		dev := m.devices[bot]
		if dev == nil {
			continue
		}
		switch evt.Type {
		case event.StateMember:
			dev.Machine.HandleMemberEvent(ctx, evt)
		case event.StateHistoryVisibility:
			dev.Machine.HandleHistoryVisibility(ctx, evt)
		}
	}
}

// devicesChanged tells every bot's machine that a user's devices changed.
// The crypto store's device tables are shared between bots, so only the
// first machine to refetch a user's devices would notice the change on its
// own; the others would keep encrypting with a session the new device never
// received.
func (m *Manager) devicesChanged(ctx context.Context, users []id.UserID) {
	for _, bot := range m.order {
		for _, u := range users {
			if u == bot {
				continue
			}
			m.devices[bot].Machine.OnDevicesChanged(ctx, u)
		}
	}
}

// Bots lists the bots with devices.
func (m *Manager) Bots() []id.UserID { return slices.Clone(m.order) }

// flushIndexesLoop writes, every second and at the end, the message
// indexes of decryptions no done mark took along (a skill fetching an
// earlier event decrypts outside the event path).
func (m *Manager) flushIndexesLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := m.shared.FlushIndexes(fctx); err != nil {
				m.opts.Log.Warn().Err(err).Msg("Could not write message indexes at stop; their events run again")
			}
			return
		case <-t.C:
			if err := m.shared.FlushIndexes(ctx); err != nil && ctx.Err() == nil {
				m.opts.Log.Warn().Err(err).Msg("Could not write message indexes; retrying")
			}
		}
	}
}
