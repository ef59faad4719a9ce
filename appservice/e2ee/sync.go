package e2ee

import (
	"context"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// syncFilter keeps a bot device's /sync to what encryption needs: to-device
// messages, device-list changes and one-time-key counts. Room events reach
// opsbot through the appservice transactions instead.
func syncFilter() *mautrix.Filter {
	none := &mautrix.FilterPart{NotTypes: []event.Type{{Type: "*"}}, Limit: 1}
	return &mautrix.Filter{
		AccountData: none,
		Presence:    none,
		Room: &mautrix.RoomFilter{
			Rooms:       []id.RoomID{"!opsbot-no-rooms:invalid"},
			AccountData: none,
			Ephemeral:   none,
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
		if len(resp.DeviceLists.Changed) > 0 {
			// Tell the other bots first: this machine's own refetch below
			// updates the shared device tables.
			m.devicesChanged(ctx, resp.DeviceLists.Changed)
		}
		return d.Machine.ProcessSyncResponse(ctx, resp, since)
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
