package e2ee

import (
	"context"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// syncFilter keeps a bot device's /sync to what encryption needs (to-device
// messages, device-list changes and one-time-key counts) plus the typing
// notifications and read receipts of its rooms, which homeservers without
// MSC2409 do not push to appservices. Room events reach opsbot through the
// appservice transactions instead.
func syncFilter() *mautrix.Filter {
	none := &mautrix.FilterPart{NotTypes: []event.Type{{Type: "*"}}, Limit: 1}
	return &mautrix.Filter{
		AccountData: none,
		Presence:    none,
		Room: &mautrix.RoomFilter{
			AccountData: none,
			Ephemeral:   &mautrix.FilterPart{Types: []event.Type{event.EphemeralEventTyping, event.EphemeralEventReceipt}},
			State:       none,
			Timeline:    none,
		},
	}
}

// syncLoop runs a device's /sync until ctx ends, restarting after errors.
func (m *Manager) syncLoop(ctx context.Context, d *Device) {
	syncer := mautrix.NewDefaultSyncer()
	syncer.FilterJSON = syncFilter()
	syncer.OnSync(func(ctx context.Context, resp *mautrix.RespSync, since string) bool {
		if m.opts.OnEphemeral != nil {
			for room, joined := range resp.Rooms.Join {
				for _, evt := range joined.Ephemeral.Events {
					evt.RoomID = room
					evt.Type.Class = event.EphemeralEventType
					evt.Mautrix.EventSource = event.SourceEphemeral
					_ = evt.Content.ParseRaw(evt.Type)
					m.opts.OnEphemeral(ctx, d.UserID, evt)
				}
			}
		}
		if len(resp.DeviceLists.Changed) > 0 {
			// Tell the other bots first: this machine's own refetch below
			// updates the shared device tables.
			m.devicesChanged(ctx, resp.DeviceLists.Changed)
		}
		if m.opts.OnOTKCount != nil {
			m.opts.OnOTKCount(d.UserID, resp.DeviceOTKCount.SignedCurve25519)
		}
		ok := d.Machine.ProcessSyncResponse(ctx, resp, since)
		for _, evt := range resp.ToDevice.Events {
			d.verificationEvent(ctx, evt)
		}
		return ok
	})
	d.Client.Syncer = syncer
	d.log.Info().Stringer("device_id", d.DeviceID).Msg("Receiving encryption keys through /sync")
	for ctx.Err() == nil {
		err := d.Client.SyncWithContext(ctx)
		if ctx.Err() != nil {
			return
		}
		d.log.Warn().Err(err).Msg("Encryption /sync stopped; restarting in 5 s")
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}
