package harness

import (
	"net/http"
	"testing"
)

// RoomOptions describe a room for CreateRoom. The zero value is a private,
// unencrypted, unnamed room with no invites.
type RoomOptions struct {
	Name, Topic string
	// Invite lists user IDs invited at creation.
	Invite []string
	// Encrypted adds an m.room.encryption (m.megolm.v1.aes-sha2) initial state.
	Encrypted bool
	// Preset is "private_chat" (default), "trusted_private_chat" or "public_chat".
	Preset string
	// IsDirect marks the room as a direct chat for the invitees.
	IsDirect bool
	// AliasLocalpart, if set, makes #AliasLocalpart:server point at the room.
	AliasLocalpart string
	// RoomVersion, if set, overrides the server's default room version.
	RoomVersion string
	// InitialState is extra state sent at creation.
	InitialState []StateEvent
	// PowerLevels is merged over the default m.room.power_levels content.
	PowerLevels map[string]any
}

// StateEvent is one state event for RoomOptions.InitialState.
type StateEvent struct {
	Type, StateKey string
	Content        map[string]any
}

// CreateRoom creates a room as u and returns its ID.
func (u *User) CreateRoom(t testing.TB, opts RoomOptions) string {
	t.Helper()
	preset := opts.Preset
	if preset == "" {
		preset = "private_chat"
	}
	req := map[string]any{"preset": preset}
	if opts.Name != "" {
		req["name"] = opts.Name
	}
	if opts.Topic != "" {
		req["topic"] = opts.Topic
	}
	if len(opts.Invite) > 0 {
		req["invite"] = opts.Invite
	}
	if opts.IsDirect {
		req["is_direct"] = true
	}
	if opts.AliasLocalpart != "" {
		req["room_alias_name"] = opts.AliasLocalpart
	}
	if opts.RoomVersion != "" {
		req["room_version"] = opts.RoomVersion
	}
	if opts.PowerLevels != nil {
		req["power_level_content_override"] = opts.PowerLevels
	}
	var state []map[string]any
	if opts.Encrypted {
		state = append(state, map[string]any{
			"type": "m.room.encryption", "state_key": "",
			"content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2"},
		})
	}
	for _, s := range opts.InitialState {
		state = append(state, map[string]any{"type": s.Type, "state_key": s.StateKey, "content": s.Content})
	}
	if len(state) > 0 {
		req["initial_state"] = state
	}
	var res struct {
		RoomID string `json:"room_id"`
	}
	u.MustDo(t, http.MethodPost, "/_matrix/client/v3/createRoom", req, &res)
	return res.RoomID
}

// Invite invites userID into roomID.
func (u *User) Invite(t testing.TB, roomID, userID string) {
	t.Helper()
	u.MustDo(t, http.MethodPost, "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/invite",
		map[string]any{"user_id": userID}, nil)
}

// Join joins a room by ID or alias and returns the room ID.
func (u *User) Join(t testing.TB, roomIDOrAlias string) string {
	t.Helper()
	var res struct {
		RoomID string `json:"room_id"`
	}
	u.MustDo(t, http.MethodPost, "/_matrix/client/v3/join/"+pathEscape(roomIDOrAlias), map[string]any{}, &res)
	return res.RoomID
}

// Leave leaves (or rejects the invite to) roomID.
func (u *User) Leave(t testing.TB, roomID string) {
	t.Helper()
	u.MustDo(t, http.MethodPost, "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/leave", map[string]any{}, nil)
}

// Kick removes userID from roomID.
func (u *User) Kick(t testing.TB, roomID, userID, reason string) {
	t.Helper()
	u.MustDo(t, http.MethodPost, "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/kick",
		map[string]any{"user_id": userID, "reason": reason}, nil)
}

// SendText sends an m.text message and returns its event ID.
func (u *User) SendText(t testing.TB, roomID, body string) string {
	t.Helper()
	return u.SendEvent(t, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": body})
}

// SendEvent sends a message event (any type, e.g. m.reaction) and returns
// its event ID.
func (u *User) SendEvent(t testing.TB, roomID, eventType string, content any) string {
	t.Helper()
	var res struct {
		EventID string `json:"event_id"`
	}
	u.MustDo(t, http.MethodPut, "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/send/"+
		pathEscape(eventType)+"/"+pathEscape(u.nextTxnID()), content, &res)
	return res.EventID
}

// SendState sets a state event and returns its event ID.
func (u *User) SendState(t testing.TB, roomID, eventType, stateKey string, content any) string {
	t.Helper()
	var res struct {
		EventID string `json:"event_id"`
	}
	u.MustDo(t, http.MethodPut, "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/state/"+
		pathEscape(eventType)+"/"+pathEscape(stateKey), content, &res)
	return res.EventID
}

// State reads the content of one state event into out.
func (u *User) State(t testing.TB, roomID, eventType, stateKey string, out any) {
	t.Helper()
	u.Get(t, "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/state/"+
		pathEscape(eventType)+"/"+pathEscape(stateKey), out)
}

// Redact redacts eventID and returns the redaction's event ID.
func (u *User) Redact(t testing.TB, roomID, eventID, reason string) string {
	t.Helper()
	body := map[string]any{}
	if reason != "" {
		body["reason"] = reason
	}
	var res struct {
		EventID string `json:"event_id"`
	}
	u.MustDo(t, http.MethodPut, "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/redact/"+
		pathEscape(eventID)+"/"+pathEscape(u.nextTxnID()), body, &res)
	return res.EventID
}

// UpgradeRoom upgrades roomID to newVersion and returns the new room's ID.
func (u *User) UpgradeRoom(t testing.TB, roomID, newVersion string) string {
	t.Helper()
	var res struct {
		ReplacementRoom string `json:"replacement_room"`
	}
	u.MustDo(t, http.MethodPost, "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/upgrade",
		map[string]any{"new_version": newVersion}, &res)
	return res.ReplacementRoom
}

// Member is one entry of JoinedMembers.
type Member struct {
	DisplayName string `json:"display_name"`
	AvatarURL   string `json:"avatar_url"`
}

// JoinedMembers returns the room's joined members by user ID.
func (u *User) JoinedMembers(t testing.TB, roomID string) map[string]Member {
	t.Helper()
	var res struct {
		Joined map[string]Member `json:"joined"`
	}
	u.Get(t, "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/joined_members", &res)
	return res.Joined
}

// JoinedRooms returns the IDs of the rooms u is joined to.
func (u *User) JoinedRooms(t testing.TB) []string {
	t.Helper()
	var res struct {
		JoinedRooms []string `json:"joined_rooms"`
	}
	u.Get(t, "/_matrix/client/v3/joined_rooms", &res)
	return res.JoinedRooms
}

// SetDisplayName sets u's global display name.
func (u *User) SetDisplayName(t testing.TB, name string) {
	t.Helper()
	u.MustDo(t, http.MethodPut, "/_matrix/client/v3/profile/"+pathEscape(u.ID)+"/displayname",
		map[string]any{"displayname": name}, nil)
}
