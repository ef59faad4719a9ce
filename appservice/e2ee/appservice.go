package e2ee

import (
	"context"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// This file is appservice key delivery: to-device events (MSC2409), device
// list changes and one-time-key counts (MSC3202) arrive in the homeserver's
// transactions instead of each device's /sync.

// HandleToDevice hands a to-device event from a transaction to the machine
// of the bot device it was sent to. Events for devices opsbot does not run
// are logged and dropped: a machine must never see another device's messages.
func (m *Manager) HandleToDevice(ctx context.Context, evt *event.Event) {
	if isProbe(evt) {
		return // a key delivery probe (delivery.go), from opsbot or its check
	}
	dev := m.devices[evt.ToUserID]
	if dev != nil && dev.DeviceID == evt.ToDeviceID && !dev.viaTransactions {
		return // the device's own /sync brings it
	}
	if dev == nil || dev.DeviceID != evt.ToDeviceID {
		m.opts.Log.Warn().Stringer("to_user_id", evt.ToUserID).Stringer("to_device_id", evt.ToDeviceID).
			Str("type", evt.Type.Type).Stringer("sender", evt.Sender).
			Msg("Dropped a to-device event for a device opsbot does not run")
		m.observe("to_device", "unknown_device")
		return
	}
	evt.Type.Class = event.ToDeviceEventType
	dev.Machine.HandleToDeviceEvent(ctx, evt)
	dev.Machine.MarkOlmHashSavePoint(ctx)
	dev.verificationEvent(ctx, evt)
	m.observe("to_device", "ok")
}

type deviceInfo struct {
	lists *mautrix.DeviceLists
	otks  map[id.UserID]map[id.DeviceID]mautrix.OTKCount
}

// HandleDeviceInfo queues MSC3202 device-list changes and one-time-key counts
// from a transaction. It never blocks the transaction: when the queue is full
// the update is dropped (the next transaction carries fresh counts, and a
// missed device change is caught by the next key query).
func (m *Manager) HandleDeviceInfo(lists *mautrix.DeviceLists, otks map[id.UserID]map[id.DeviceID]mautrix.OTKCount) {
	if !m.deviceInfoWanted.Load() {
		return // every device has its own /sync
	}
	select {
	case m.deviceInfo <- deviceInfo{lists, otks}:
	default:
		m.opts.Log.Warn().Msg("Dropped a device-list/one-time-key update: the encryption queue is full")
	}
}

func (m *Manager) deviceInfoLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case info := <-m.deviceInfo:
			m.ApplyDeviceInfo(ctx, info.lists, info.otks)
		}
	}
}

// ApplyDeviceInfo tells the machines of devices whose keys come through the
// event path about device-list changes and their one-time-key counts. A
// client-mode bot's /sync intake calls it before it stores the batch, so a
// crash in between only repeats it (it is idempotent).
func (m *Manager) ApplyDeviceInfo(ctx context.Context, lists *mautrix.DeviceLists, otks map[id.UserID]map[id.DeviceID]mautrix.OTKCount) {
	// (Bots with their own /sync see them there too: telling the
	// machines twice costs a key query, missing one a wrong session.)
	if lists != nil && len(lists.Changed) > 0 && m.anyViaTransactions() {
		m.devicesChanged(ctx, lists.Changed)
		m.devices[m.order[0]].Machine.HandleDeviceLists(ctx, lists, "")
	}
	for user, devices := range otks {
		for deviceID, count := range devices {
			dev := m.devices[user]
			if dev == nil || dev.DeviceID != deviceID || !dev.viaTransactions {
				continue
			}
			count.UserID, count.DeviceID = user, deviceID
			if m.opts.OnOTKCount != nil {
				m.opts.OnOTKCount(user, count.SignedCurve25519)
			}
			dev.Machine.HandleOTKCounts(ctx, &count)
		}
	}
}

// verificationEvent hands a to-device verification event to the device's
// verification handler. The machine leaves such events alone.
func (d *Device) verificationEvent(ctx context.Context, evt *event.Event) {
	if d.OnVerification == nil || !strings.HasPrefix(evt.Type.Type, "m.key.verification.") {
		return
	}
	evt.Type.Class = event.ToDeviceEventType
	if evt.Content.Parsed == nil {
		_ = evt.Content.ParseRaw(evt.Type)
	}
	d.OnVerification(ctx, evt)
}
