package e2ee

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// This file is the bots' crypto store: mautrix's SQL crypto store with
// caches in front of what every decryption reads (docs/performance.md).
// Decrypting one event on the bare SQL store reads and unpickles its
// inbound session, writes its message index in a commit of its own, and
// looks up the sender's device and cross-signing keys and signatures: 7-8
// times the cost of the cryptography. Here each of those is a map lookup
// once it has been read, and message indexes are written in batches, in
// the database transaction that marks the events done.
//
// Every write method that changes cached data updates or drops its cache
// entries, so a cache never serves what the database no longer holds.
// Only the leader's process writes the crypto store (appservice/leader),
// and a new leader starts with empty caches: two replicas never serve
// diverging copies.

// Shared is what all bots' stores share: mautrix keeps devices, cross-
// signing keys, signatures and message indexes in tables without an
// account column, so a change one bot's machine makes is one the others
// must see.
type Shared struct {
	db *dbutil.Database

	mu sync.Mutex
	// devices caches FindDeviceByKey (nil: no such device) per user.
	devices map[id.UserID]map[id.IdentityKey]*id.Device
	// xsKeys caches GetCrossSigningKeys per user.
	xsKeys map[id.UserID]map[id.CrossSigningUsage]id.CrossSigningKey
	// signed caches IsKeySignedBy.
	signed map[signature]bool
	// indexes are the message indexes of the sessions looked at so far;
	// pending those not written yet.
	indexes map[id.SessionID]map[uint]indexUse
	pending []pendingIndex
}

type signature struct {
	user       id.UserID
	key        id.Ed25519
	signerUser id.UserID
	signerKey  id.Ed25519
}

type indexUse struct {
	eventID   id.EventID
	timestamp int64
}

type pendingIndex struct {
	session id.SessionID
	index   uint
	indexUse
}

// maxCachedSessions bounds each bot's cache of inbound Megolm sessions
// (a few kilobytes each); past it the cache starts over.
const maxCachedSessions = 10_000

// NewShared returns the shared part of the bots' stores in db.
func NewShared(db *dbutil.Database) *Shared {
	return &Shared{db: db, devices: map[id.UserID]map[id.IdentityKey]*id.Device{},
		xsKeys: map[id.UserID]map[id.CrossSigningUsage]id.CrossSigningKey{}, signed: map[signature]bool{},
		indexes: map[id.SessionID]map[uint]indexUse{}}
}

// Store is one bot's crypto store.
type Store struct {
	*crypto.SQLCryptoStore
	shared *Shared

	mu       sync.Mutex
	sessions map[sessionKey]*crypto.InboundGroupSession
	// outbound holds the bot's outbound Megolm sessions, one per room.
	outbound map[id.RoomID]*crypto.OutboundGroupSession
}

type sessionKey struct {
	room    id.RoomID
	session id.SessionID
}

// NewStore returns a bot's store on its SQL crypto store. It deletes the
// outbound sessions an earlier process left (see OutboundGroupSession).
func (sh *Shared) NewStore(ctx context.Context, sql *crypto.SQLCryptoStore) (*Store, error) {
	if _, err := sql.DB.Exec(ctx, "DELETE FROM crypto_megolm_outbound_session WHERE account_id=$1", sql.AccountID); err != nil {
		return nil, fmt.Errorf("deleting outbound Megolm sessions of an earlier run: %w", err)
	}
	return &Store{SQLCryptoStore: sql, shared: sh, sessions: map[sessionKey]*crypto.InboundGroupSession{},
		outbound: map[id.RoomID]*crypto.OutboundGroupSession{}}, nil
}

var _ crypto.Store = (*Store)(nil)

// SQL is the store underneath, for what only it can do (its database).
func (s *Store) SQL() *crypto.SQLCryptoStore { return s.SQLCryptoStore }

// Shared is the part this store shares with the other bots' stores.
func (s *Store) Shared() *Shared { return s.shared }

// GetGroupSession keeps the unpickled session: mautrix decrypts with one
// session at a time (a lock per session), and the session keeps its newest
// ratchet, which makes the next message of the same session cheaper too.
func (s *Store) GetGroupSession(ctx context.Context, room id.RoomID, session id.SessionID) (*crypto.InboundGroupSession, error) {
	k := sessionKey{room, session}
	s.mu.Lock()
	sess := s.sessions[k]
	s.mu.Unlock()
	if sess != nil {
		return sess, nil
	}
	sess, err := s.SQLCryptoStore.GetGroupSession(ctx, room, session)
	if err != nil || sess == nil {
		return sess, err // withheld and missing sessions are not cached
	}
	s.keep(k, sess)
	return sess, nil
}

func (s *Store) keep(k sessionKey, sess *crypto.InboundGroupSession) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sessions) >= maxCachedSessions {
		clear(s.sessions)
	}
	s.sessions[k] = sess
}

func (s *Store) forgetSessions() {
	s.mu.Lock()
	clear(s.sessions)
	s.mu.Unlock()
}

func (s *Store) PutGroupSession(ctx context.Context, sess *crypto.InboundGroupSession) error {
	if err := s.SQLCryptoStore.PutGroupSession(ctx, sess); err != nil {
		s.forgetSessions()
		return err
	}
	s.keep(sessionKey{sess.RoomID, sess.ID()}, sess)
	return nil
}

func (s *Store) RedactGroupSession(ctx context.Context, room id.RoomID, session id.SessionID, reason string) error {
	defer s.forgetSessions()
	return s.SQLCryptoStore.RedactGroupSession(ctx, room, session, reason)
}

func (s *Store) RedactGroupSessions(ctx context.Context, room id.RoomID, sender id.SenderKey, reason string) ([]id.SessionID, error) {
	defer s.forgetSessions()
	return s.SQLCryptoStore.RedactGroupSessions(ctx, room, sender, reason)
}

func (s *Store) RedactExpiredGroupSessions(ctx context.Context) ([]id.SessionID, error) {
	defer s.forgetSessions()
	return s.SQLCryptoStore.RedactExpiredGroupSessions(ctx)
}

func (s *Store) RedactOutdatedGroupSessions(ctx context.Context) ([]id.SessionID, error) {
	defer s.forgetSessions()
	return s.SQLCryptoStore.RedactOutdatedGroupSessions(ctx)
}

func (s *Store) PutWithheldGroupSession(ctx context.Context, content event.RoomKeyWithheldEventContent) error {
	defer s.forgetSessions()
	return s.SQLCryptoStore.PutWithheldGroupSession(ctx, content)
}

// An outbound Megolm session lives only in the memory of the process that
// made it. mautrix writes the session back after every encryption, a SQL
// commit per reply; a session read back from the database would also be a
// danger: a process that died between encrypting and writing, or an old
// leader still encrypting, leaves a stored ratchet behind the one in use,
// and the next process would encrypt again with message indexes already
// sent. So each process (each leader term) starts without outbound
// sessions and shares a new one per room on its first message there, which
// costs one key share per room after a restart or failover.

func (s *Store) AddOutboundGroupSession(_ context.Context, sess *crypto.OutboundGroupSession) error {
	s.mu.Lock()
	s.outbound[sess.RoomID] = sess
	s.mu.Unlock()
	return nil
}

// UpdateOutboundGroupSession has nothing to write: the cached session is
// the one mautrix just advanced.
func (s *Store) UpdateOutboundGroupSession(ctx context.Context, sess *crypto.OutboundGroupSession) error {
	return s.AddOutboundGroupSession(ctx, sess)
}

func (s *Store) GetOutboundGroupSession(_ context.Context, room id.RoomID) (*crypto.OutboundGroupSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outbound[room], nil
}

func (s *Store) RemoveOutboundGroupSession(_ context.Context, room id.RoomID) error {
	s.mu.Lock()
	delete(s.outbound, room)
	s.mu.Unlock()
	return nil
}

// ValidateMessageIndex is the replay check: a message index of a session
// seen before with another event ID or timestamp is refused. Indexes are
// read once per session and written in batches (WriteIndexes), in the
// database transaction that marks the events done: an event the database
// says is done has its index there, so the check holds across restarts and
// leaders; one that is not done is re-run with the same event ID.
func (s *Store) ValidateMessageIndex(ctx context.Context, session id.SessionID, eventID id.EventID, index uint, ts int64) (bool, error) {
	return s.shared.validate(ctx, session, eventID, index, ts)
}

func (sh *Shared) validate(ctx context.Context, session id.SessionID, eventID id.EventID, index uint, ts int64) (bool, error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	seen, ok := sh.indexes[session]
	if !ok {
		var err error
		if seen, err = sh.loadIndexes(ctx, session); err != nil {
			return false, err
		}
		if len(sh.indexes) >= maxCachedSessions {
			sh.dropWrittenIndexes()
		}
		sh.indexes[session] = seen
	}
	use, known := seen[index]
	if eventID == "" && ts == 0 {
		return !known, nil // as mautrix's: no ID to compare, so any earlier use refuses it
	}
	if known {
		return use.eventID == eventID && use.timestamp == ts, nil
	}
	use = indexUse{eventID, ts}
	seen[index] = use
	sh.pending = append(sh.pending, pendingIndex{session, index, use})
	return true, nil
}

func (sh *Shared) loadIndexes(ctx context.Context, session id.SessionID) (map[uint]indexUse, error) {
	rows, err := sh.db.Query(ctx, `SELECT "index", event_id, timestamp FROM crypto_message_index WHERE session_id = $1`, session)
	if err != nil {
		return nil, fmt.Errorf("reading the message indexes of session %s: %w", session, err)
	}
	defer rows.Close()
	seen := map[uint]indexUse{}
	for rows.Next() {
		var index uint
		var use indexUse
		if err := rows.Scan(&index, &use.eventID, &use.timestamp); err != nil {
			return nil, err
		}
		seen[index] = use
	}
	return seen, rows.Err()
}

// dropWrittenIndexes forgets the sessions whose indexes are all in the
// database (they are read again when needed).
func (sh *Shared) dropWrittenIndexes() {
	unwritten := map[id.SessionID]bool{}
	for _, p := range sh.pending {
		unwritten[p.session] = true
	}
	for session := range sh.indexes {
		if !unwritten[session] {
			delete(sh.indexes, session)
		}
	}
}

// IndexBatch is message indexes taken to be written.
type IndexBatch []pendingIndex

// TakeIndexes takes the message indexes not written yet. Write them with
// WriteIndexes in a database transaction; if it fails, give them back with
// RestoreIndexes.
func (sh *Shared) TakeIndexes() IndexBatch {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	batch := sh.pending
	sh.pending = nil
	return batch
}

// RestoreIndexes gives back a batch whose transaction failed.
func (sh *Shared) RestoreIndexes(batch IndexBatch) {
	if len(batch) == 0 {
		return
	}
	sh.mu.Lock()
	sh.pending = append(batch, sh.pending...)
	sh.mu.Unlock()
}

// WriteIndexes writes a batch (in the caller's transaction, if ctx has one).
func (sh *Shared) WriteIndexes(ctx context.Context, batch IndexBatch) error {
	const perRow = 4
	for start := 0; start < len(batch); start += 500 {
		chunk := batch[start:min(start+500, len(batch))]
		var q strings.Builder
		q.WriteString(`INSERT INTO crypto_message_index (session_id, "index", event_id, timestamp) VALUES `)
		args := make([]any, 0, perRow*len(chunk))
		for i, p := range chunk {
			if i > 0 {
				q.WriteByte(',')
			}
			n := len(args)
			fmt.Fprintf(&q, "($%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4)
			args = append(args, p.session, p.index, p.eventID, p.timestamp)
		}
		q.WriteString(` ON CONFLICT (session_id, "index") DO NOTHING`)
		if _, err := sh.db.Exec(ctx, q.String(), args...); err != nil {
			return fmt.Errorf("writing %d message indexes: %w", len(chunk), err)
		}
	}
	return nil
}

// FlushIndexes writes the pending message indexes in a transaction of
// their own (for decryptions outside the event path, and at stop).
func (sh *Shared) FlushIndexes(ctx context.Context) error {
	batch := sh.TakeIndexes()
	if len(batch) == 0 {
		return nil
	}
	err := sh.db.DoTxn(ctx, nil, func(ctx context.Context) error { return sh.WriteIndexes(ctx, batch) })
	if err != nil {
		sh.RestoreIndexes(batch)
	}
	return err
}

// FindDeviceByKey is asked for the sender of every decrypted event.
func (s *Store) FindDeviceByKey(ctx context.Context, user id.UserID, key id.IdentityKey) (*id.Device, error) {
	sh := s.shared
	sh.mu.Lock()
	dev, ok := sh.devices[user][key]
	sh.mu.Unlock()
	if ok {
		return dev, nil
	}
	dev, err := s.SQLCryptoStore.FindDeviceByKey(ctx, user, key)
	if err != nil {
		return nil, err
	}
	sh.mu.Lock()
	if sh.devices[user] == nil {
		sh.devices[user] = map[id.IdentityKey]*id.Device{}
	}
	sh.devices[user][key] = dev
	sh.mu.Unlock()
	return dev, nil
}

func (sh *Shared) forgetDevices(user id.UserID) {
	sh.mu.Lock()
	delete(sh.devices, user)
	sh.mu.Unlock()
}

func (s *Store) PutDevice(ctx context.Context, user id.UserID, dev *id.Device) error {
	defer s.shared.forgetDevices(user)
	return s.SQLCryptoStore.PutDevice(ctx, user, dev)
}

func (s *Store) PutDevices(ctx context.Context, user id.UserID, devs map[id.DeviceID]*id.Device) error {
	defer s.shared.forgetDevices(user)
	return s.SQLCryptoStore.PutDevices(ctx, user, devs)
}

// GetCrossSigningKeys is asked for every decrypted event's sender.
func (s *Store) GetCrossSigningKeys(ctx context.Context, user id.UserID) (map[id.CrossSigningUsage]id.CrossSigningKey, error) {
	return readThrough(s.shared, s.shared.xsKeys, user, func() (map[id.CrossSigningUsage]id.CrossSigningKey, error) {
		return s.SQLCryptoStore.GetCrossSigningKeys(ctx, user)
	})
}

// readThrough returns m[k], loading and keeping it on a miss; m is one of
// the Shared maps, guarded by sh.mu (they are cleared, never replaced).
// The load runs unlocked: two may race, both store the same answer.
func readThrough[K comparable, V any](sh *Shared, m map[K]V, k K, load func() (V, error)) (V, error) {
	sh.mu.Lock()
	v, ok := m[k]
	sh.mu.Unlock()
	if ok {
		return v, nil
	}
	v, err := load()
	if err != nil {
		var zero V
		return zero, err
	}
	sh.mu.Lock()
	m[k] = v
	sh.mu.Unlock()
	return v, nil
}

func (sh *Shared) forgetCrossSigning(user id.UserID) {
	sh.mu.Lock()
	delete(sh.xsKeys, user)
	clear(sh.signed) // signatures hang off the keys
	sh.mu.Unlock()
}

func (s *Store) PutCrossSigningKey(ctx context.Context, user id.UserID, usage id.CrossSigningUsage, key id.Ed25519) error {
	defer s.shared.forgetCrossSigning(user)
	return s.SQLCryptoStore.PutCrossSigningKey(ctx, user, usage, key)
}

func (s *Store) ResetMasterKeyTOFU(ctx context.Context, user id.UserID, key id.Ed25519) error {
	defer s.shared.forgetCrossSigning(user)
	return s.SQLCryptoStore.ResetMasterKeyTOFU(ctx, user, key)
}

// IsKeySignedBy is asked twice for every decrypted event of a
// cross-signed sender.
func (s *Store) IsKeySignedBy(ctx context.Context, user id.UserID, key id.Ed25519, signerUser id.UserID, signerKey id.Ed25519) (bool, error) {
	sig := signature{user, key, signerUser, signerKey}
	return readThrough(s.shared, s.shared.signed, sig, func() (bool, error) {
		return s.SQLCryptoStore.IsKeySignedBy(ctx, user, key, signerUser, signerKey)
	})
}

func (s *Store) PutSignature(ctx context.Context, user id.UserID, key id.Ed25519, signerUser id.UserID, signerKey id.Ed25519, sig string) error {
	defer s.shared.forgetSignatures()
	return s.SQLCryptoStore.PutSignature(ctx, user, key, signerUser, signerKey, sig)
}

func (s *Store) DropSignaturesByKey(ctx context.Context, user id.UserID, key id.Ed25519) (int64, error) {
	defer s.shared.forgetSignatures()
	return s.SQLCryptoStore.DropSignaturesByKey(ctx, user, key)
}

func (sh *Shared) forgetSignatures() {
	sh.mu.Lock()
	clear(sh.signed)
	sh.mu.Unlock()
}
