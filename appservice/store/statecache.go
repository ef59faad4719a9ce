package store

import (
	"context"
	"sync"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/sqlstatestore"
)

// CachedStateStore is mautrix's SQL room state store with an in-memory cache
// of the two answers asked for on every event: a user's membership in a room
// (the bots in the room, and mautrix's EnsureJoined before every send) and
// whether a room is encrypted (before every send, and by the crypto
// machine). Each was a SQL statement per call (docs/performance.md).
//
// Every write through the store drops what it may change (SetMembership,
// SetMember, ReplaceCachedMembers, ClearCachedMembers, SetEncryptionEvent),
// and mautrix writes through the store it was given: the appservice's
// transaction handler and UpdateStateStore, the intents' and clients' joins,
// invites, leaves and member fetches. So the cache is as fresh as the
// database as long as nothing writes the mx_ tables behind its back: the
// store must be the one object given to the appservice (as.StateStore),
// the pipeline and encryption, and no other process may write the same
// tables while this one handles events (only the leader does; Upgrade,
// called when a process becomes the leader, empties the cache).
//
// A lookup fills the cache only if no write happened while it read the
// database, so a reader cannot put back an answer a concurrent write just
// replaced. Reads inside a database transaction bypass the cache, and a write
// inside a caller's transaction (which commits after the write returns, so a
// reader could cache the old row in between) switches the cache off for
// good; neither mautrix nor opsbot does that today.
type CachedStateStore struct {
	*sqlstatestore.SQLStateStore

	mu         sync.Mutex
	gen        uint64 // bumped by every write
	off        bool
	entries    int
	members    map[id.RoomID]map[id.UserID]*event.MemberEventContent // nil: no row
	encryption map[id.RoomID]*event.EncryptionEventContent           // nil: not encrypted
}

// maxCachedEntries bounds the cache: when it is full it starts over. Bots
// are few, so membership entries are about rooms × bots, plus the
// occasional lookup of another user.
const maxCachedEntries = 100_000

// NewCachedStateStore returns a cached sqlstatestore.SQLStateStore on db.
func NewCachedStateStore(db *dbutil.Database) *CachedStateStore {
	return &CachedStateStore{SQLStateStore: sqlstatestore.NewSQLStateStore(db, nil, false)}
}

// Upgrade migrates the state store's tables and empties the cache.
func (c *CachedStateStore) Upgrade(ctx context.Context) error {
	c.Reset()
	err := c.SQLStateStore.Upgrade(ctx)
	c.Reset()
	return err
}

// Reset empties the cache.
func (c *CachedStateStore) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.clear()
}

func (c *CachedStateStore) clear() {
	c.members = make(map[id.RoomID]map[id.UserID]*event.MemberEventContent)
	c.encryption = make(map[id.RoomID]*event.EncryptionEventContent)
	c.entries = 0
}

func (c *CachedStateStore) inTxn(ctx context.Context) bool {
	_, ok := c.Execable(ctx).(dbutil.Transaction)
	return ok
}

// written drops what a write may have changed: one member (user != ""), or
// all members of a room (members), or the room's encryption.
func (c *CachedStateStore) written(ctx context.Context, room id.RoomID, user id.UserID, members, encryption bool) {
	txn := c.inTxn(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if txn && !c.off {
		c.off = true
		zerolog.Ctx(ctx).Warn().Msg("Room state written inside a database transaction: the state store cache is off from now on")
	}
	if c.members == nil {
		return
	}
	if m := c.members[room]; m != nil {
		if members {
			c.entries -= len(m)
			delete(c.members, room)
		} else if _, ok := m[user]; ok && user != "" {
			c.entries--
			delete(m, user)
		}
	}
	if _, ok := c.encryption[room]; ok && encryption {
		c.entries--
		delete(c.encryption, room)
	}
}

// TryGetMember returns a user's member event content in a room, nil if the
// store has none.
func (c *CachedStateStore) TryGetMember(ctx context.Context, room id.RoomID, user id.UserID) (*event.MemberEventContent, error) {
	if c.inTxn(ctx) {
		return c.SQLStateStore.TryGetMember(ctx, room, user)
	}
	c.mu.Lock()
	if m, ok := c.members[room][user]; ok {
		c.mu.Unlock()
		return copyMember(m), nil
	}
	gen, off := c.gen, c.off
	c.mu.Unlock()
	m, err := c.SQLStateStore.TryGetMember(ctx, room, user)
	if err != nil || off {
		return m, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen {
		if c.members == nil || c.entries >= maxCachedEntries {
			c.clear()
		}
		rm := c.members[room]
		if rm == nil {
			rm = make(map[id.UserID]*event.MemberEventContent)
			c.members[room] = rm
		}
		rm[user] = copyMember(m)
		c.entries++
	}
	return m, nil
}

func copyMember(m *event.MemberEventContent) *event.MemberEventContent {
	if m == nil {
		return nil
	}
	cp := *m
	return &cp
}

// GetMember is TryGetMember with "leave" for a user the store does not know.
func (c *CachedStateStore) GetMember(ctx context.Context, room id.RoomID, user id.UserID) (*event.MemberEventContent, error) {
	m, err := c.TryGetMember(ctx, room, user)
	if m == nil && err == nil {
		m = &event.MemberEventContent{Membership: event.MembershipLeave}
	}
	return m, err
}

// GetMembership returns a user's membership in a room, "leave" if unknown.
func (c *CachedStateStore) GetMembership(ctx context.Context, room id.RoomID, user id.UserID) (event.Membership, error) {
	m, err := c.TryGetMember(ctx, room, user)
	if err != nil {
		return "", err
	}
	if m == nil {
		return event.MembershipLeave, nil
	}
	return m.Membership, nil
}

// IsInRoom reports whether the user has joined the room.
func (c *CachedStateStore) IsInRoom(ctx context.Context, room id.RoomID, user id.UserID) bool {
	return c.IsMembership(ctx, room, user, event.MembershipJoin)
}

// IsInvited reports whether the user has joined or been invited.
func (c *CachedStateStore) IsInvited(ctx context.Context, room id.RoomID, user id.UserID) bool {
	return c.IsMembership(ctx, room, user, event.MembershipJoin, event.MembershipInvite)
}

// IsMembership reports whether the user's membership is one of allowed.
func (c *CachedStateStore) IsMembership(ctx context.Context, room id.RoomID, user id.UserID, allowed ...event.Membership) bool {
	membership, err := c.GetMembership(ctx, room, user)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to get membership")
		return false
	}
	for _, a := range allowed {
		if a == membership {
			return true
		}
	}
	return false
}

// GetEncryptionEvent returns the room's m.room.encryption content, nil if
// the room is not encrypted.
func (c *CachedStateStore) GetEncryptionEvent(ctx context.Context, room id.RoomID) (*event.EncryptionEventContent, error) {
	if c.inTxn(ctx) {
		return c.SQLStateStore.GetEncryptionEvent(ctx, room)
	}
	c.mu.Lock()
	if e, ok := c.encryption[room]; ok {
		c.mu.Unlock()
		return copyEncryption(e), nil
	}
	gen, off := c.gen, c.off
	c.mu.Unlock()
	e, err := c.SQLStateStore.GetEncryptionEvent(ctx, room)
	if err != nil || off {
		return e, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen {
		if c.encryption == nil || c.entries >= maxCachedEntries {
			c.clear()
		}
		c.encryption[room] = copyEncryption(e)
		c.entries++
	}
	return e, nil
}

func copyEncryption(e *event.EncryptionEventContent) *event.EncryptionEventContent {
	if e == nil {
		return nil
	}
	cp := *e
	return &cp
}

// IsEncrypted reports whether the room uses Megolm.
func (c *CachedStateStore) IsEncrypted(ctx context.Context, room id.RoomID) (bool, error) {
	e, err := c.GetEncryptionEvent(ctx, room)
	return e != nil && e.Algorithm == id.AlgorithmMegolmV1, err
}

// SetMembership writes a user's membership.
func (c *CachedStateStore) SetMembership(ctx context.Context, room id.RoomID, user id.UserID, membership event.Membership) error {
	defer c.written(ctx, room, user, false, false)
	return c.SQLStateStore.SetMembership(ctx, room, user, membership)
}

// SetMember writes a user's member event content.
func (c *CachedStateStore) SetMember(ctx context.Context, room id.RoomID, user id.UserID, member *event.MemberEventContent) error {
	defer c.written(ctx, room, user, false, false)
	return c.SQLStateStore.SetMember(ctx, room, user, member)
}

// ReplaceCachedMembers replaces the room's members (all, or those with the
// given memberships).
func (c *CachedStateStore) ReplaceCachedMembers(ctx context.Context, room id.RoomID, evts []*event.Event, onlyMemberships ...event.Membership) error {
	defer c.written(ctx, room, "", true, false)
	return c.SQLStateStore.ReplaceCachedMembers(ctx, room, evts, onlyMemberships...)
}

// ClearCachedMembers forgets the room's members (all, or those with the
// given memberships).
func (c *CachedStateStore) ClearCachedMembers(ctx context.Context, room id.RoomID, memberships ...event.Membership) error {
	defer c.written(ctx, room, "", true, false)
	return c.SQLStateStore.ClearCachedMembers(ctx, room, memberships...)
}

// SetEncryptionEvent writes the room's m.room.encryption content.
func (c *CachedStateStore) SetEncryptionEvent(ctx context.Context, room id.RoomID, content *event.EncryptionEventContent) error {
	defer c.written(ctx, room, "", false, true)
	return c.SQLStateStore.SetEncryptionEvent(ctx, room, content)
}
