package store

import (
	"context"

	"maunium.net/go/mautrix/id"
)

// PublishedDescriptions returns the command descriptions bot has in room's
// state, state key to content digest.
func (s *Store) PublishedDescriptions(ctx context.Context, room id.RoomID, bot id.UserID) (map[string]string, error) {
	rows, err := s.DB.Query(ctx, `SELECT state_key, digest FROM opsbot_command_description WHERE room_id = $1 AND bot = $2`, room, bot)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var key, digest string
		if err := rows.Scan(&key, &digest); err != nil {
			return nil, err
		}
		out[key] = digest
	}
	return out, rows.Err()
}

// SetPublishedDescription records a description sent; an empty digest
// records that it was emptied (the row goes).
func (s *Store) SetPublishedDescription(ctx context.Context, room id.RoomID, bot id.UserID, stateKey, digest string) error {
	if digest == "" {
		_, err := s.DB.Exec(ctx, `DELETE FROM opsbot_command_description WHERE room_id = $1 AND bot = $2 AND state_key = $3`, room, bot, stateKey)
		return err
	}
	_, err := s.DB.Exec(ctx, `INSERT INTO opsbot_command_description (room_id, bot, state_key, digest) VALUES ($1, $2, $3, $4)
		ON CONFLICT (room_id, bot, state_key) DO UPDATE SET digest = excluded.digest`, room, bot, stateKey, digest)
	return err
}
