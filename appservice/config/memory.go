package config

// Memory says where skills keep their memory.
type Memory struct {
	// InRoomState lists skills whose memory lives in room state events
	// (travels with the room, survives losing the database, but is not
	// end-to-end encrypted). Others keep it in the database.
	InRoomState []string `yaml:"in_room_state"`
}

// Memory has nothing to check on its own: whether a bot runs each skill it
// names needs the bots (Config.crossCheck).
