package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// This file is encryption.mode auto: it picks the key delivery that works on
// the homeserver in front of opsbot by what the homeserver does, not only by
// what it advertises. Synapse, with its experimental MSC2409 and MSC3202
// appservice features on, pushes to-device events, device lists and
// one-time-key counts in transactions without advertising either; without
// them it pushes none, and refuses /sync for the appservice's sender user.

// Transaction features that carry keys, as recorded by FeatureStore.
const (
	FeatureToDevice   = "msc2409" // to-device events in transactions
	FeatureDeviceInfo = "msc3202" // device lists and one-time-key counts in transactions
	// NotPushed notes a probe that no transaction answered: later starts
	// do not wait for one (evidence of the features still counts).
	NotPushed = "probe_not_pushed"
)

// FeatureStore remembers which features the homeserver was seen using, so
// that a restart does not have to find out again (appservice/store).
type FeatureStore interface {
	SeenFeatures(ctx context.Context) (map[string]time.Time, error)
	RecordFeatures(ctx context.Context, names ...string) error
	ForgetFeatures(ctx context.Context) error
}

// ProbeType is the to-device event a bot device sends itself to find out
// whether the homeserver pushes to-device events in transactions: a
// plaintext m.dummy, which nobody else sends (clients send it encrypted)
// and which a device's /sync passes by quietly.
const ProbeType = "m.dummy"

// ProbeTimeout bounds the wait for the probe to come back in a transaction.
// A homeserver that pushes to-device events does so within milliseconds;
// the wait is paid only where they never come (Dendrite), before the first
// event is handled, not before opsbot is ready.
var ProbeTimeout = 2 * time.Second

// withoutDeviceInfoLimit is how many transactions in a row without MSC3202
// fields make appservice mode say keys stopped arriving: a homeserver with
// MSC3202 on adds the sender's one-time-key count to nearly every one.
const withoutDeviceInfoLimit = 20

// Transactions watches the homeserver's transactions for key delivery.
// Intake calls Observe for each; the Manager waits on it while it probes.
type Transactions struct {
	store FeatureStore
	log   zerolog.Logger

	mu   sync.Mutex
	seen map[string]bool // this run
	// changed is closed and replaced whenever a feature is first seen.
	changed chan struct{}
	mode    string
	// onKeys is called once both features have been seen, after start.
	onKeys func()
	// without counts transactions in a row without MSC3202 fields in
	// appservice mode; warned is set once that was reported.
	without int
	warned  bool
}

func newTransactions(store FeatureStore, log zerolog.Logger) *Transactions {
	return &Transactions{store: store, log: log, seen: map[string]bool{}, changed: make(chan struct{})}
}

// Observe is told, for every transaction, whether it carried to-device
// events for the bots' devices (MSC2409) and device lists or one-time-key
// counts (MSC3202). It never blocks on the database.
func (t *Transactions) Observe(toDevice, deviceInfo bool) {
	t.mu.Lock()
	var fresh []string
	if toDevice && !t.seen[FeatureToDevice] {
		fresh = append(fresh, FeatureToDevice)
	}
	if deviceInfo && !t.seen[FeatureDeviceInfo] {
		fresh = append(fresh, FeatureDeviceInfo)
	}
	for _, f := range fresh {
		t.seen[f] = true
	}
	if len(fresh) > 0 {
		close(t.changed)
		t.changed = make(chan struct{})
	}
	mode := t.mode
	var onKeys func()
	if len(fresh) > 0 && t.seen[FeatureToDevice] && t.seen[FeatureDeviceInfo] {
		onKeys = t.onKeys
	}
	report := false
	if mode == ModeAppservice {
		if deviceInfo {
			t.without = 0
		} else if t.without++; t.without == withoutDeviceInfoLimit && !t.warned {
			t.warned, report = true, true
		}
	}
	t.mu.Unlock()

	if len(fresh) > 0 && t.store != nil {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := t.store.RecordFeatures(ctx, fresh...); err != nil {
				t.log.Warn().Err(err).Strs("features", fresh).Msg("Could not record what the homeserver pushes in transactions")
			}
		}()
	}
	if onKeys != nil {
		if mode == ModeSync {
			t.log.Info().Msg("The homeserver pushes keys in transactions (MSC2409, MSC3202) after all; bots with a working /sync keep it until the next start, which uses transactions")
		}
		onKeys()
	}
	if report {
		t.log.Error().Int("transactions", withoutDeviceInfoLimit).
			Msg("Transactions no longer carry device lists or one-time-key counts (MSC3202): was the homeserver's experimental feature switched off? The bots will miss keys; opsbot checks again at its next start")
		if t.store != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := t.store.ForgetFeatures(ctx); err != nil {
				t.log.Warn().Err(err).Msg("Could not forget the recorded transaction features")
			}
		}
	}
}

func (t *Transactions) has(features ...string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, f := range features {
		if !t.seen[f] {
			return false
		}
	}
	return true
}

// start records the chosen mode, and what to call once keys are seen in
// transactions (at once if they already were).
func (t *Transactions) start(mode string, onKeys func()) {
	t.mu.Lock()
	t.mode = mode
	t.onKeys = onKeys
	both := t.seen[FeatureToDevice] && t.seen[FeatureDeviceInfo]
	t.mu.Unlock()
	if both && mode == ModeSync {
		onKeys()
	}
}

// waitFor waits until every feature was seen this run, or ctx ends.
func (t *Transactions) waitFor(ctx context.Context, features ...string) bool {
	for {
		t.mu.Lock()
		all := true
		for _, f := range features {
			all = all && t.seen[f]
		}
		changed := t.changed
		t.mu.Unlock()
		if all {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-changed:
		}
	}
}

// chooseMode resolves encryption.mode auto once the devices are open:
// appservice when the homeserver advertises MSC2409 and MSC3202, or was
// seen pushing both (in an earlier run, or now, for a to-device event a
// bot device sends itself), else sync; with encryption.msc4190 always
// appservice, unconfirmed if nothing showed the homeserver pushes keys.
func (m *Manager) chooseMode(ctx context.Context, versions *mautrix.RespVersions) (mode, why string, unconfirmed bool) {
	asBots := m.appserviceBots()
	if len(asBots) == 0 {
		return ModeSync, "no appservice bots: each client-mode bot receives its keys in its own /sync", false
	}
	if Advertises(versions) {
		return ModeAppservice, AdvertisedWhy, false
	}
	t := m.Transactions
	var notPushed time.Time
	if t.store != nil {
		seen, err := t.store.SeenFeatures(ctx)
		switch {
		case err != nil:
			m.opts.Log.Warn().Err(err).Msg("Could not read what the homeserver pushed in earlier transactions")
		case !seen[FeatureToDevice].IsZero() && !seen[FeatureDeviceInfo].IsZero():
			return ModeAppservice, SeenBeforeWhy(seen[FeatureToDevice]), false
		default:
			notPushed = seen[NotPushed]
		}
	}
	if err := m.probe(ctx, m.devices[asBots[0]]); err != nil {
		m.opts.Log.Warn().Err(err).Msg("Could not send the key delivery probe")
	}
	if !notPushed.IsZero() && !m.opts.MSC4190 {
		// Asked before and not answered: not worth a wait at every start.
		// Should the probe come back now, the homeserver's pushes are
		// recorded, and the next start uses them.
		return ModeSync, fmt.Sprintf("the homeserver did not push a to-device event back in a transaction when asked (MSC2409, MSC3202) on %s, so each bot device runs its own /sync",
			notPushed.UTC().Format(time.RFC3339)), false
	}
	pctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	if t.waitFor(pctx, FeatureToDevice, FeatureDeviceInfo) {
		return ModeAppservice, "the homeserver pushed a to-device event, device lists and one-time-key counts in a transaction (MSC2409, MSC3202), though it does not advertise them", false
	}
	if t.store != nil && ctx.Err() == nil {
		if err := t.store.RecordFeatures(ctx, NotPushed); err != nil {
			m.opts.Log.Warn().Err(err).Msg("Could not note that the homeserver did not answer the key delivery probe")
		}
	}
	switch {
	case m.opts.MSC4190:
		// Such devices have no token of their own to /sync with: keys come
		// in transactions or not at all. A homeserver that had the
		// appservice backed off after an outage (Synapse does) sends the
		// probe late; each device is reported without keys until a
		// transaction brings some (Start).
		return ModeAppservice, fmt.Sprintf("encryption.msc4190 is on, and devices made through the appservice API can get keys only in transactions, though the homeserver did not push any within %v of asking (MSC2409, MSC3202)", ProbeTimeout), true
	case t.has(FeatureToDevice):
		return ModeSync, "the homeserver pushes to-device events in transactions (MSC2409) but no device lists or one-time-key counts (MSC3202: on Synapse set experimental_features.msc3202_transaction_extensions), so each bot device runs its own /sync", false
	case t.has(FeatureDeviceInfo):
		return ModeSync, "the homeserver pushes device lists and one-time-key counts in transactions (MSC3202) but no to-device events (MSC2409: on Synapse set experimental_features.msc2409_to_device_messages_enabled), so each bot device runs its own /sync", false
	}
	return ModeSync, fmt.Sprintf("the homeserver neither advertises nor pushed (within %v of asking) to-device events, device lists and one-time-key counts in transactions (MSC2409, MSC3202), so each bot device runs its own /sync", ProbeTimeout), false
}

// Advertises reports whether a /versions answer advertises both MSC2409
// and MSC3202 for appservices.
func Advertises(versions *mautrix.RespVersions) bool {
	if versions == nil {
		return false
	}
	f := versions.UnstableFeatures
	return f["org.matrix.msc3202"] && (f["org.matrix.msc2409"] || f["org.matrix.msc2409.to_device"])
}

// AdvertisedWhy explains appservice mode chosen by Advertises.
const AdvertisedWhy = "the homeserver advertises MSC2409 and MSC3202 (keys arrive in transactions)"

// SeenBefore returns since when the homeserver has been seen pushing both
// to-device events and device information in transactions (zero if not).
func SeenBefore(ctx context.Context, store FeatureStore) (time.Time, error) {
	seen, err := store.SeenFeatures(ctx)
	if err != nil || seen[FeatureToDevice].IsZero() || seen[FeatureDeviceInfo].IsZero() {
		return time.Time{}, err
	}
	return seen[FeatureToDevice], nil
}

// SeenBeforeWhy explains appservice mode chosen by SeenBefore.
func SeenBeforeWhy(since time.Time) string {
	return fmt.Sprintf("the homeserver has pushed to-device events, device lists and one-time-key counts in transactions (MSC2409, MSC3202) since %s, though it does not advertise them",
		since.UTC().Format(time.RFC3339))
}

// SenderSyncRefused says what to do when the homeserver refuses /sync for
// the appservice's sender user (Synapse does) and pushes no keys in
// transactions.
func SenderSyncRefused(sender id.UserID) string {
	return fmt.Sprintf("the homeserver refuses /sync for the appservice's sender user %s and does not push keys in transactions. "+
		"On Synapse, set in homeserver.yaml: experimental_features: {msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: true}, "+
		"keep receive_ephemeral and org.matrix.msc3202 in the registration (generate-registration writes them), and restart Synapse, then opsbot. "+
		"Until then %s cannot read encrypted messages; other bots are not affected", sender, sender)
}

// probe sends a to-device event from a bot device to itself: a homeserver
// that pushes to-device events to appservices puts it in a transaction.
func (m *Manager) probe(ctx context.Context, d *Device) error {
	_, err := d.Client.SendToDevice(ctx, event.Type{Type: ProbeType, Class: event.ToDeviceEventType}, &mautrix.ReqSendToDevice{
		Messages: map[id.UserID]map[id.DeviceID]*event.Content{
			d.UserID: {d.DeviceID: {Raw: map[string]any{"org.opsbot.key_delivery_probe": time.Now().UnixMilli()}}},
		},
	})
	return err
}

// checkSync makes sure a device can receive its keys through /sync, and
// says why not: Synapse refuses /sync for the appservice's sender user.
func (m *Manager) checkSync(ctx context.Context, d *Device) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	filter, err := json.Marshal(syncFilter())
	if err != nil {
		return err
	}
	_, err = d.Client.FullSyncRequest(ctx, mautrix.ReqSync{FilterID: string(filter), SetPresence: event.PresenceOffline})
	if err == nil {
		return nil
	}
	var httpErr mautrix.HTTPError
	sender := d.UserID == m.opts.Sender
	if sender && errors.As(err, &httpErr) && httpErr.IsStatus(500) {
		return fmt.Errorf("%s (/sync: %v)", SenderSyncRefused(d.UserID), err)
	}
	return fmt.Errorf("/sync of the bot's device fails (%v), so it cannot receive keys", err)
}

// ErrNoKeyDelivery is wrapped by Decrypt's error when no bot in the room
// can receive room keys (see checkSync).
var ErrNoKeyDelivery = errors.New("no bot in this room can receive room keys")

// KeyDelivery reports, per bot, how its device gets its keys: the mode, or
// "none: <why>" for a device that cannot receive any.
func (m *Manager) KeyDelivery() map[id.UserID]string {
	out := make(map[id.UserID]string, len(m.order))
	for _, bot := range m.order {
		if why := m.devices[bot].keyProblem(); why != "" {
			out[bot] = "none: " + why
		} else {
			out[bot] = m.opts.Mode
		}
	}
	return out
}

// isProbe reports whether a to-device event is opsbot's own key delivery probe.
func isProbe(evt *event.Event) bool { return strings.EqualFold(evt.Type.Type, ProbeType) }
