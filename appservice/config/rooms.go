package config

// Rooms configures how bots treat rooms.
type Rooms struct {
	// LeaveUpgraded makes bots leave a room once they have followed its
	// upgrade (m.room.tombstone) into the replacement room.
	LeaveUpgraded *bool `yaml:"leave_upgraded"`
}

func (r *Rooms) applyDefaults() {
	if r.LeaveUpgraded == nil {
		yes := true
		r.LeaveUpgraded = &yes
	}
}
