package e2ee

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// ErrNoBotDevice means no bot in the room has an encryption device.
var ErrNoBotDevice = errors.New("no bot in this room has an encryption device")

// TryDecrypt decrypts a Megolm event with the device of one of the bots in
// the room, without waiting. The reason is for logs and metrics: ok,
// no_session (the room key is not here, yet), no_key_delivery (no bot in
// the room can receive keys; the error says why) or error.
func (m *Manager) TryDecrypt(ctx context.Context, evt *event.Event, roomBots []id.UserID) (*event.Event, string, error) {
	devs, noKeys := m.roomDevices(roomBots)
	if len(devs) == 0 && noKeys != "" {
		return nil, "no_key_delivery", fmt.Errorf("%w: %s", ErrNoKeyDelivery, noKeys)
	}
	if len(devs) == 0 {
		return nil, "error", ErrNoBotDevice
	}
	if _, ok := evt.Content.Parsed.(*event.EncryptedEventContent); !ok {
		return nil, "error", fmt.Errorf("m.room.encrypted event without encrypted content")
	}
	var firstErr error
	for _, d := range devs {
		decrypted, err := d.Machine.DecryptMegolmEvent(ctx, evt)
		if err == nil {
			decrypted.Mautrix.EventSource |= event.SourceDecrypted
			return decrypted, "ok", nil
		}
		if firstErr == nil || (errors.Is(firstErr, crypto.ErrNoSessionFound) && !errors.Is(err, crypto.ErrNoSessionFound)) {
			firstErr = err
		}
	}
	if errors.Is(firstErr, crypto.ErrNoSessionFound) {
		return nil, "no_session", firstErr
	}
	return nil, "error", firstErr
}

// roomDevices are the devices of the room's bots that receive keys (or
// may still, moments after start), and why the others do not.
func (m *Manager) roomDevices(roomBots []id.UserID) (devs []*Device, noKeys string) {
	for _, b := range roomBots {
		d := m.devices[b]
		if d == nil {
			continue
		}
		if problem := d.keyProblem(); problem != "" && !d.mayStillGetKeys() {
			noKeys = problem
			continue
		}
		devs = append(devs, d)
	}
	return devs, noKeys
}

// WaitForKey returns a channel that is closed when any of the room's bot
// devices receives the room key of an encrypted event, until the deadline
// or ctx ends (then it is never closed).
func (m *Manager) WaitForKey(ctx context.Context, evt *event.Event, roomBots []id.UserID, until time.Time) <-chan struct{} {
	found := make(chan struct{})
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	devs, _ := m.roomDevices(roomBots)
	if !ok || len(devs) == 0 {
		return found
	}
	var once sync.Once
	for _, d := range devs {
		go func() {
			if d.Machine.WaitForSession(ctx, evt.RoomID, content.SenderKey, content.SessionID, time.Until(until)) {
				once.Do(func() { close(found) })
			}
		}()
	}
	return found
}

// RequestKey asks the sender's devices for the room key of an encrypted
// event, from every bot device in the room.
func (m *Manager) RequestKey(ctx context.Context, evt *event.Event, roomBots []id.UserID) {
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	devs, _ := m.roomDevices(roomBots)
	if !ok {
		return
	}
	for _, d := range devs {
		//lint:ignore SA1019 asking every device of the sender is what we want
		req := map[id.UserID][]id.DeviceID{evt.Sender: {"*"}}
		if err := d.Machine.SendRoomKeyRequest(ctx, evt.RoomID, content.SenderKey, content.SessionID, "", req); err != nil {
			d.log.Warn().Err(err).Stringer("session_id", content.SessionID).Msg("Could not send a room key request")
		}
	}
}

// Decrypt is TryDecrypt that waits for a late room key up to DecryptWait,
// asking the sender's devices for it after a few seconds: for callers that
// may block (a skill fetching an earlier event). The event path parks the
// room instead (appservice/stages). The reason adds late_key.
func (m *Manager) Decrypt(ctx context.Context, evt *event.Event, roomBots []id.UserID) (*event.Event, string, error) {
	decrypted, reason, err := m.TryDecrypt(ctx, evt, roomBots)
	if reason != "no_session" {
		return decrypted, reason, err
	}
	deadline := time.Now().Add(m.opts.DecryptWait)
	first := time.Now().Add(min(RequestKeyAfter, m.opts.DecryptWait))
	for _, until := range []time.Time{first, deadline} {
		if until.After(first) {
			m.RequestKey(ctx, evt, roomBots)
		}
		select {
		case <-m.WaitForKey(ctx, evt, roomBots, until):
		case <-time.After(time.Until(until)):
		case <-ctx.Done():
			return nil, "error", ctx.Err()
		}
		if decrypted, reason, err = m.TryDecrypt(ctx, evt, roomBots); reason != "no_session" {
			if reason == "ok" {
				reason = "late_key"
			}
			return decrypted, reason, err
		}
	}
	content, _ := evt.Content.Parsed.(*event.EncryptedEventContent)
	return nil, "no_session", fmt.Errorf("the room key (session %s) did not arrive within %v", content.SessionID, m.opts.DecryptWait)
}

// RequestKeyAfter is how long a missing room key is waited for before the
// sender's devices are asked for it.
const RequestKeyAfter = 3 * time.Second

// DecryptWait bounds the wait for a late room key (encryption.decrypt_wait).
func (m *Manager) DecryptWait() time.Duration { return m.opts.DecryptWait }

// Encrypt encrypts content for a room as a bot, creating and sharing a
// Megolm session with the room's members when there is none (or the old one
// was rotated because someone left or a device changed).
func (m *Manager) Encrypt(ctx context.Context, bot id.UserID, room id.RoomID, evtType event.Type, content any) (event.Type, any, error) {
	dev := m.devices[bot]
	if dev == nil {
		return evtType, nil, fmt.Errorf("bot %s has no encryption device", bot)
	}
	lock, _ := m.encryptLocks.LoadOrStore(string(bot)+"|"+string(room), &sync.Mutex{})
	lock.(*sync.Mutex).Lock()
	defer lock.(*sync.Mutex).Unlock()
	encrypted, err := dev.Machine.EncryptMegolmEvent(ctx, room, evtType, content)
	if errors.Is(err, crypto.ErrNoGroupSession) || errors.Is(err, crypto.ErrSessionExpired) || errors.Is(err, crypto.ErrSessionNotShared) {
		members, merr := m.opts.StateStore.GetRoomJoinedOrInvitedMembers(ctx, room)
		if merr != nil {
			return evtType, nil, fmt.Errorf("listing room members to share keys with: %w", merr)
		}
		if err := dev.Machine.ShareGroupSession(ctx, room, members); err != nil {
			return evtType, nil, fmt.Errorf("sharing the room key: %w", err)
		}
		dev.log.Debug().Stringer("room_id", room).Int("members", len(members)).Msg("Shared a new room key")
		encrypted, err = dev.Machine.EncryptMegolmEvent(ctx, room, evtType, content)
	}
	if err != nil {
		m.observe("encrypt", "error")
		return evtType, nil, err
	}
	m.observe("encrypt", "ok")
	return event.EventEncrypted, encrypted, nil
}

func (m *Manager) observe(op, outcome string) {
	if m.opts.Observe != nil {
		m.opts.Observe(op, outcome)
	}
}

// clientCrypto lets a bot device's own mautrix client encrypt what it sends
// into encrypted rooms (mautrix.Client.SendMessageEvent asks its Crypto),
// through the same per-room locking and session sharing as the outbox.
type clientCrypto struct {
	m   *Manager
	bot id.UserID
}

func (c clientCrypto) Encrypt(ctx context.Context, room id.RoomID, evtType event.Type, content any) (*event.EncryptedEventContent, error) {
	_, encrypted, err := c.m.Encrypt(ctx, c.bot, room, evtType, content)
	if err != nil {
		return nil, err
	}
	enc, ok := encrypted.(*event.EncryptedEventContent)
	if !ok {
		return nil, fmt.Errorf("encryption returned %T, not encrypted content", encrypted)
	}
	return enc, nil
}

func (c clientCrypto) Decrypt(ctx context.Context, evt *event.Event) (*event.Event, error) {
	decrypted, _, err := c.m.Decrypt(ctx, evt, []id.UserID{c.bot})
	return decrypted, err
}

func (c clientCrypto) WaitForSession(ctx context.Context, room id.RoomID, senderKey id.SenderKey, session id.SessionID, timeout time.Duration) bool {
	dev := c.m.devices[c.bot]
	return dev != nil && dev.Machine.WaitForSession(ctx, room, senderKey, session, timeout)
}

func (c clientCrypto) RequestSession(context.Context, id.RoomID, id.SenderKey, id.SessionID, id.UserID, id.DeviceID) {
}

func (c clientCrypto) Init(context.Context) error { return nil }
