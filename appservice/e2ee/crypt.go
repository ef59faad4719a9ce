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

// Decrypt decrypts a Megolm event with the device of one of the bots in the
// room. A room key often arrives after the event it unlocks (the homeserver
// pushes the event while the key travels through the bot's to-device
// stream), so a missing session is waited for, and after a short while
// requested from the sender's devices, up to DecryptWait. The returned
// reason is for logs and metrics: ok, late_key, no_session or error.
func (m *Manager) Decrypt(ctx context.Context, evt *event.Event, roomBots []id.UserID) (*event.Event, string, error) {
	var devs []*Device
	noKeys := ""
	for _, b := range roomBots {
		d := m.devices[b]
		if d == nil {
			continue
		}
		if problem := d.keyProblem(); problem != "" {
			noKeys = problem
			continue
		}
		devs = append(devs, d)
	}
	if len(devs) == 0 && noKeys != "" {
		return nil, "no_key_delivery", fmt.Errorf("%w: %s", ErrNoKeyDelivery, noKeys)
	}
	if len(devs) == 0 {
		return nil, "error", ErrNoBotDevice
	}
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if !ok {
		return nil, "error", fmt.Errorf("m.room.encrypted event without encrypted content")
	}
	decrypted, err := m.tryDecrypt(ctx, evt, devs)
	if err == nil {
		return decrypted, "ok", nil
	}
	if !errors.Is(err, crypto.ErrNoSessionFound) {
		return nil, "error", err
	}
	// Wait for the key: first briefly, then ask the sender's devices for it.
	deadline := time.Now().Add(m.opts.DecryptWait)
	first := min(3*time.Second, m.opts.DecryptWait)
	log := devs[0].log.With().Stringer("event_id", evt.ID).Stringer("session_id", content.SessionID).Logger()
	log.Debug().Msg("Room key not here yet; waiting for it")
	if waitAny(ctx, devs, evt.RoomID, content, first) {
		if decrypted, err = m.tryDecrypt(ctx, evt, devs); err == nil {
			return decrypted, "late_key", nil
		}
	}
	if rest := time.Until(deadline); rest > 0 {
		for _, d := range devs {
			//lint:ignore SA1019 asking every device of the sender is what we want
			req := map[id.UserID][]id.DeviceID{evt.Sender: {"*"}}
			if err := d.Machine.SendRoomKeyRequest(ctx, evt.RoomID, content.SenderKey, content.SessionID, "", req); err != nil {
				log.Warn().Err(err).Msg("Could not send a room key request")
			}
		}
		log.Info().Dur("wait", rest).Msg("Room key still missing; asked the sender's devices for it")
		if waitAny(ctx, devs, evt.RoomID, content, rest) {
			if decrypted, err = m.tryDecrypt(ctx, evt, devs); err == nil {
				return decrypted, "late_key", nil
			}
		}
	}
	if err == nil || errors.Is(err, crypto.ErrNoSessionFound) {
		return nil, "no_session", fmt.Errorf("the room key (session %s) did not arrive within %v", content.SessionID, m.opts.DecryptWait)
	}
	return nil, "error", err
}

func (m *Manager) tryDecrypt(ctx context.Context, evt *event.Event, devs []*Device) (*event.Event, error) {
	var firstErr error
	for _, d := range devs {
		decrypted, err := d.Machine.DecryptMegolmEvent(ctx, evt)
		if err == nil {
			decrypted.Mautrix.EventSource |= event.SourceDecrypted
			return decrypted, nil
		}
		if firstErr == nil || (errors.Is(firstErr, crypto.ErrNoSessionFound) && !errors.Is(err, crypto.ErrNoSessionFound)) {
			firstErr = err
		}
	}
	return nil, firstErr
}

// waitAny waits until any of the devices has the session, or timeout.
func waitAny(ctx context.Context, devs []*Device, room id.RoomID, content *event.EncryptedEventContent, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	found := make(chan struct{}, len(devs))
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d.Machine.WaitForSession(ctx, room, content.SenderKey, content.SessionID, timeout) {
				found <- struct{}{}
			}
		}()
	}
	go func() { wg.Wait(); close(found) }()
	select {
	case _, ok := <-found:
		return ok
	case <-ctx.Done():
		return false
	}
}

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
