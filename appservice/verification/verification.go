// Package verification lets people verify a bot's device interactively with
// SAS (emoji or decimals), to-device or in a DM, using mautrix's
// verificationhelper for the protocol.
//
// The scheme that keeps the comparison meaningful: a bot has no eyes, so a
// human must compare the bot's short authentication string with the one on
// the person's screen. opsbot never shows its side of the comparison in
// Matrix (a man in the middle of the verification could also be in the
// middle of that channel); it writes it to its own database, where the
// operator reads it with `opsbot-appservice verification list` on the opsbot
// host and answers with `verification confirm` or `verification cancel`.
// Only requests from configured users are accepted at all; the others are
// cancelled with a reason. Nothing is confirmed without the operator, and a
// pending comparison is cancelled after the configured timeout.
package verification

import (
	"context"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/verificationhelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/e2ee"
)

// Options configure a Manager.
type Options struct {
	DB *dbutil.Database
	// AllowedUsers may verify the bots: user IDs, or patterns with * such
	// as "@*:example.org". Empty means nobody.
	AllowedUsers []string
	// Timeout bounds the wait for the operator's decision once the short
	// authentication string is known.
	Timeout time.Duration
	Log     zerolog.Logger
	// Observe, if set, is told each verification's end: done, cancelled,
	// refused, timeout.
	Observe func(outcome string)
	// OnWaiting, if set, is told at every poll how many verifications wait
	// for the operator's decision.
	OnWaiting func(n int)
	// Poll is how often the operator's decisions are read (default 500 ms).
	Poll time.Duration
}

// Manager runs the verification helpers of all bot devices.
type Manager struct {
	opts    Options
	store   *Store
	mu      sync.Mutex
	bots    map[id.UserID]*botVerifier
	txnBots map[id.VerificationTransactionID]id.UserID
}

// New returns a Manager; Init prepares its table.
func New(opts Options) *Manager {
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Minute
	}
	if opts.Poll == 0 {
		opts.Poll = 500 * time.Millisecond
	}
	return &Manager{opts: opts, store: NewStore(opts.DB), bots: map[id.UserID]*botVerifier{}, txnBots: map[id.VerificationTransactionID]id.UserID{}}
}

// Init creates the table of pending verifications and clears what a
// previous run left: the helpers' transactions live in memory, so those
// verifications cannot go on.
func (m *Manager) Init(ctx context.Context) error {
	if err := m.store.Init(ctx); err != nil {
		return err
	}
	return m.store.DeleteAll(ctx)
}

// Attach starts handling verification for a bot device. The helper gets a
// client of its own (the device's token, crypto and state store) whose
// syncer only dispatches what Manager hands it: to-device events from the
// device, in-room events from HandleRoomEvent.
func (m *Manager) Attach(ctx context.Context, dev *e2ee.Device) error {
	client, err := mautrix.NewClient(dev.Client.HomeserverURL.String(), dev.UserID, dev.Client.AccessToken)
	if err != nil {
		return err
	}
	client.DeviceID = dev.DeviceID
	client.SetAppServiceUserID = dev.Client.SetAppServiceUserID // MSC4190 devices
	client.SetAppServiceDeviceID = dev.Client.SetAppServiceDeviceID
	client.Crypto = dev.Client.Crypto
	client.StateStore = dev.Client.StateStore
	client.Log = dev.Client.Log
	syncer := mautrix.NewDefaultSyncer()
	client.Syncer = syncer
	bv := &botVerifier{m: m, dev: dev, syncer: syncer, txns: verificationhelper.NewInMemoryVerificationStore(),
		log: m.opts.Log.With().Stringer("bot", dev.UserID).Logger()}
	bv.helper = verificationhelper.NewVerificationHelper(client, dev.Machine, bv.txns, bv, false, false, true)
	if err := bv.helper.Init(bv.log.WithContext(ctx)); err != nil {
		return fmt.Errorf("verification for %s: %w", dev.UserID, err)
	}
	dev.OnVerification = bv.dispatch
	m.mu.Lock()
	m.bots[dev.UserID] = bv
	m.mu.Unlock()
	return nil
}

// Allowed reports whether a user may verify the bots.
func (m *Manager) Allowed(user id.UserID) bool {
	for _, pattern := range m.opts.AllowedUsers {
		if ok, _ := path.Match(pattern, string(user)); ok {
			return true
		}
	}
	return false
}

// HandleRoomEvent hands an in-room verification event (decrypted) to the
// bot it concerns and reports whether it was one. A request goes to the bot
// it names; later events to the bot that accepted the request. Events the
// bots sent themselves, and events of verifications no bot takes part in
// (another user's, in a room a bot shares), are left alone.
func (m *Manager) HandleRoomEvent(ctx context.Context, evt *event.Event) bool {
	var bot id.UserID
	switch {
	case evt.Type == event.EventMessage:
		msg := evt.Content.AsMessage()
		if msg == nil || msg.MsgType != event.MsgVerificationRequest {
			return false
		}
		bot = msg.To
	case strings.HasPrefix(evt.Type.Type, "m.key.verification."):
		if evt.Content.Parsed == nil {
			_ = evt.Content.ParseRaw(evt.Type)
		}
		txn := transactionOf(evt)
		if txn == "" {
			return true
		}
		m.mu.Lock()
		bot = m.txnBots[txn]
		m.mu.Unlock()
	default:
		return false
	}
	m.mu.Lock()
	bv := m.bots[bot]
	_, fromBot := m.bots[evt.Sender]
	m.mu.Unlock()
	if bv == nil || fromBot {
		return true
	}
	evt.Type.Class = event.MessageEventType
	if evt.Type != event.EventMessage {
		// mautrix's helper takes an in-room event's own ID as its
		// transaction ID; for the events after the request that is the
		// request's ID, which they refer to.
		cp := *evt
		cp.ID = id.EventID(transactionOf(evt))
		evt = &cp
	}
	bv.dispatch(ctx, evt)
	return true
}

// Run applies the operator's decisions and the timeout until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	tick := time.NewTicker(m.opts.Poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// Rows are only written for verifications this process took on
		// (Init cleared older ones): with none going on there is nothing
		// to read.
		m.mu.Lock()
		busy := len(m.txnBots) > 0
		m.mu.Unlock()
		if !busy {
			m.waiting(nil, time.Now())
			continue
		}
		pending, err := m.store.List(ctx)
		if err != nil {
			if ctx.Err() == nil {
				m.opts.Log.Warn().Err(err).Msg("Reading pending verifications failed")
			}
			continue
		}
		now := time.Now()
		m.waiting(pending, now)
		for _, p := range pending {
			m.mu.Lock()
			bv := m.bots[p.Bot]
			m.mu.Unlock()
			if bv == nil {
				continue
			}
			switch {
			case p.Decision == DecisionConfirm:
				bv.confirm(ctx, p)
			case p.Decision == DecisionConfirmed && bv.awaitDone(ctx, p, now):
				// both MACs checked: waiting for (or done without) their done
			case p.Decision == DecisionCancel:
				bv.cancel(ctx, p, event.VerificationCancelCodeUser, "the opsbot operator cancelled the verification", "cancelled")
			case now.After(p.Expires):
				bv.cancel(ctx, p, event.VerificationCancelCodeTimeout,
					fmt.Sprintf("no operator confirmed the short authentication string within %v", m.opts.Timeout), "timeout")
			}
		}
	}
}

// waiting reports how many of the pending verifications wait for the
// operator: no decision yet, and not expired.
func (m *Manager) waiting(pending []Pending, now time.Time) {
	if m.opts.OnWaiting == nil {
		return
	}
	n := 0
	for _, p := range pending {
		if p.Decision == DecisionNone && !now.After(p.Expires) {
			n++
		}
	}
	m.opts.OnWaiting(n)
}

func (m *Manager) observe(outcome string) {
	if m.opts.Observe != nil {
		m.opts.Observe(outcome)
	}
}

func (m *Manager) track(txn id.VerificationTransactionID, bot id.UserID) {
	m.mu.Lock()
	m.txnBots[txn] = bot
	m.mu.Unlock()
}

func (m *Manager) forget(txn id.VerificationTransactionID) {
	m.mu.Lock()
	delete(m.txnBots, txn)
	m.mu.Unlock()
}

// botVerifier is one bot's verification helper and its callbacks. The
// helper calls ShowSAS, VerificationDone and VerificationCancelled with its
// lock held: those must not call back into the helper.
type botVerifier struct {
	m      *Manager
	dev    *e2ee.Device
	helper *verificationhelper.VerificationHelper
	syncer *mautrix.DefaultSyncer
	txns   *verificationhelper.InMemoryVerificationStore
	log    zerolog.Logger

	// helperMu serialises everything handed to the helper. The helper reads
	// a transaction, lets go of its lock, then handles the event: two
	// events handled at once act on stale copies. That happened when the
	// person's done arrived (from the event path) while a held MAC was
	// still being handled (from Run, right after the operator confirmed):
	// the done saw the transaction before the MAC exchange and cancelled.
	helperMu sync.Mutex

	mu sync.Mutex
	// confirmed are the transactions the operator confirmed; held are the
	// other side's MACs that arrived before that.
	confirmed map[id.VerificationTransactionID]bool
	held      map[id.VerificationTransactionID][]*event.Event
	// macsDone are when both MACs were checked and the bot sent its done,
	// by transaction, while the other side's done has not arrived.
	macsDone map[id.VerificationTransactionID]time.Time
}

// doneGrace is how long the bot waits for the other side's done once both
// MACs are checked and its own done is sent. Synapse (1.160) can lose a
// to-device event pushed to an appservice when two cross in flight (its
// appservice stream position passes one not yet handed over), and the
// person's done and the bot's cross by design. Nothing is left to check
// by then: the keys were compared and trusted on both sides. A variable
// for tests.
var doneGrace = 5 * time.Second

// dispatch hands a verification event to the helper, holding the other
// side's MAC back until the operator has confirmed. mautrix v0.32's
// ConfirmSAS checks a MAC that came first against the bot's own master key
// instead of the sender's and fails; a MAC processed after the bot's own
// confirmation takes the correct path. Holding it changes nothing on the
// wire: the MAC is only looked at after both sides confirmed anyway.
func (b *botVerifier) dispatch(ctx context.Context, evt *event.Event) {
	if evt.Type.Type == event.ToDeviceVerificationMAC.Type {
		txn := transactionOf(evt)
		b.mu.Lock()
		if !b.confirmed[txn] {
			if b.held == nil {
				b.held = map[id.VerificationTransactionID][]*event.Event{}
			}
			b.held[txn] = append(b.held[txn], evt)
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
	}
	b.helperMu.Lock()
	defer b.helperMu.Unlock()
	b.syncer.Dispatch(ctx, evt)
}

// transactionOf is the verification transaction an event belongs to: the
// transaction_id of a to-device event, the request event of an in-room one.
func transactionOf(evt *event.Event) id.VerificationTransactionID {
	if t, ok := evt.Content.Parsed.(event.VerificationTransactionable); ok && t.GetTransactionID() != "" {
		return t.GetTransactionID()
	}
	if r, ok := evt.Content.Parsed.(event.Relatable); ok && r.OptionalGetRelatesTo() != nil {
		return id.VerificationTransactionID(r.OptionalGetRelatesTo().EventID)
	}
	return ""
}

func (b *botVerifier) VerificationRequested(ctx context.Context, txn id.VerificationTransactionID, from id.UserID, fromDevice id.DeviceID) {
	log := b.log.With().Stringer("transaction_id", txn).Stringer("user_id", from).Stringer("device_id", fromDevice).Logger()
	if !b.m.Allowed(from) {
		reason := fmt.Sprintf("%s may not verify this bot (encryption.verification.allowed_users)", from)
		log.Warn().Msg("Refused a verification request: the user is not in encryption.verification.allowed_users")
		if err := b.helper.CancelVerification(ctx, txn, event.VerificationCancelCodeUser, reason); err != nil {
			log.Warn().Err(err).Msg("Could not send the cancellation")
		}
		b.m.observe("refused")
		return
	}
	b.m.track(txn, b.dev.UserID)
	if err := b.helper.AcceptVerification(ctx, txn); err != nil {
		log.Warn().Err(err).Msg("Could not accept the verification request")
		_ = b.helper.DismissVerification(ctx, txn)
		b.m.forget(txn)
		return
	}
	log.Info().Msg("Accepted a verification request; waiting for the other side to start SAS")
}

func (b *botVerifier) VerificationReady(context.Context, id.VerificationTransactionID, id.DeviceID, bool, bool, *verificationhelper.QRCode) {
}

// ShowSAS records the bot's side of the comparison for the operator.
func (b *botVerifier) ShowSAS(ctx context.Context, txn id.VerificationTransactionID, emojis []rune, descriptions []string, decimals []int) {
	p := Pending{
		TransactionID: txn,
		Bot:           b.dev.UserID,
		Decimals:      decimals,
		Created:       time.Now(),
		Expires:       time.Now().Add(b.m.opts.Timeout),
	}
	for i, e := range emojis {
		p.Emojis = append(p.Emojis, Emoji{Symbol: string(e), Name: descriptions[i]})
	}
	if tx, err := b.txns.GetVerificationTransaction(ctx, txn); err == nil {
		p.User, p.Device = tx.TheirUserID, tx.TheirDeviceID
	}
	if err := b.m.store.Add(ctx, p); err != nil {
		b.log.Error().Err(err).Stringer("transaction_id", txn).Msg("Could not record the pending verification; cancelling it")
		go b.cancel(context.WithoutCancel(ctx), p, event.VerificationCancelCodeUser, "the bot could not record the verification", "cancelled")
		return
	}
	b.log.Info().Stringer("transaction_id", txn).Stringer("user_id", p.User).Stringer("device_id", p.Device).
		Str("sas", p.SAS()).Dur("timeout", b.m.opts.Timeout).
		Msg("Verification waits for the operator: compare with the person's screen, then run `opsbot-appservice verification confirm " + string(txn) + "` (or cancel)")
}

func (b *botVerifier) VerificationCancelled(ctx context.Context, txn id.VerificationTransactionID, code event.VerificationCancelCode, reason string) {
	b.log.Warn().Stringer("transaction_id", txn).Str("code", string(code)).Str("reason", reason).Msg("Verification cancelled")
	b.finish(ctx, txn)
	b.m.observe("cancelled")
}

func (b *botVerifier) VerificationDone(ctx context.Context, txn id.VerificationTransactionID, method event.VerificationMethod) {
	b.log.Info().Stringer("transaction_id", txn).Str("method", string(method)).Msg("Verification done: the bot and the person's device trust each other")
	b.finish(ctx, txn)
	b.m.observe("done")
}

func (b *botVerifier) confirm(ctx context.Context, p Pending) {
	// Clear the decision first: ConfirmSAS may finish the verification
	// (VerificationDone deletes the row) or wait for the other side's MAC.
	if err := b.m.store.SetDecision(ctx, p.TransactionID, DecisionConfirmed); err != nil {
		b.log.Warn().Err(err).Msg("Could not record the confirmation")
		return
	}
	b.log.Info().Stringer("transaction_id", p.TransactionID).Msg("The operator confirmed the short authentication string")
	// The other side's MAC (held until now) is handled before any later
	// event of the transaction, such as its done.
	b.helperMu.Lock()
	defer b.helperMu.Unlock()
	if err := b.helper.ConfirmSAS(ctx, p.TransactionID); err != nil {
		b.log.Warn().Err(err).Stringer("transaction_id", p.TransactionID).Msg("Confirming the verification failed")
		b.cancelLocked(ctx, p, event.VerificationCancelCodeUser, "the bot could not confirm: "+err.Error(), "cancelled")
		return
	}
	b.mu.Lock()
	if b.confirmed == nil {
		b.confirmed = map[id.VerificationTransactionID]bool{}
	}
	b.confirmed[p.TransactionID] = true
	held := b.held[p.TransactionID]
	delete(b.held, p.TransactionID)
	b.mu.Unlock()
	for _, evt := range held {
		b.syncer.Dispatch(ctx, evt)
	}
}

// awaitDone ends a verification whose MACs were both checked, and whose
// done the bot sent, when the other side's done does not come within
// doneGrace (see doneGrace for why it may never come). It reports whether
// the verification is at that step (else the usual timeout applies).
func (b *botVerifier) awaitDone(ctx context.Context, p Pending, now time.Time) bool {
	b.helperMu.Lock()
	defer b.helperMu.Unlock()
	tx, err := b.txns.GetVerificationTransaction(ctx, p.TransactionID)
	if err != nil || tx.VerificationState != verificationhelper.VerificationStateSASMACExchanged || !tx.SentOurDone || tx.ReceivedTheirDone {
		return false
	}
	b.mu.Lock()
	if b.macsDone == nil {
		b.macsDone = map[id.VerificationTransactionID]time.Time{}
	}
	since, seen := b.macsDone[p.TransactionID]
	if !seen {
		b.macsDone[p.TransactionID] = now
	}
	b.mu.Unlock()
	if !seen || now.Sub(since) < doneGrace {
		return true
	}
	// A done that comes later finds no transaction and is dropped.
	_ = b.txns.DeleteVerification(ctx, p.TransactionID)
	b.log.Info().Stringer("transaction_id", p.TransactionID).Str("method", string(event.VerificationMethodSAS)).Bool("their_done", false).
		Dur("waited", now.Sub(since)).
		Msg("Verification done: the bot and the person's device trust each other (both MACs checked; the other side's done never arrived)")
	b.finish(ctx, p.TransactionID)
	b.m.observe("done")
	return true
}

func (b *botVerifier) cancel(ctx context.Context, p Pending, code event.VerificationCancelCode, reason, outcome string) {
	b.helperMu.Lock()
	defer b.helperMu.Unlock()
	b.cancelLocked(ctx, p, code, reason, outcome)
}

func (b *botVerifier) cancelLocked(ctx context.Context, p Pending, code event.VerificationCancelCode, reason, outcome string) {
	b.log.Warn().Stringer("transaction_id", p.TransactionID).Str("code", string(code)).Str("reason", reason).Msg("Cancelling a verification")
	if err := b.helper.CancelVerification(ctx, p.TransactionID, code, reason); err != nil {
		b.log.Warn().Err(err).Msg("Could not send the cancellation")
	}
	b.finish(ctx, p.TransactionID)
	b.m.observe(outcome)
}

// finish leaves nothing behind: the pending row, the transaction's owner,
// held MACs (the helper deletes its own transaction when it ends one).
func (b *botVerifier) finish(ctx context.Context, txn id.VerificationTransactionID) {
	if err := b.m.store.Delete(ctx, txn); err != nil {
		b.log.Warn().Err(err).Msg("Could not delete the pending verification")
	}
	b.m.forget(txn)
	b.mu.Lock()
	delete(b.confirmed, txn)
	delete(b.held, txn)
	delete(b.macsDone, txn)
	b.mu.Unlock()
}
