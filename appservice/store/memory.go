package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
)

// Limits on skill memory entries, so one skill cannot fill the database.
const (
	MaxMemoryKeyBytes   = 255
	MaxMemoryValueBytes = 64 << 10
)

func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }

// Memory returns the memory of a skill in a room; it implements skills.MemoryStore.
func (s *Store) Memory(skill string, room id.RoomID) skills.Memory {
	return &roomMemory{s: s, skill: skill, room: string(room)}
}

type roomMemory struct {
	s     *Store
	skill string
	room  string
}

func checkKey(key string) error {
	if key == "" || len(key) > MaxMemoryKeyBytes {
		return fmt.Errorf("memory key must be 1 to %d bytes, got %d", MaxMemoryKeyBytes, len(key))
	}
	return nil
}

func (m *roomMemory) Get(ctx context.Context, key string, v any) (bool, error) {
	if err := checkKey(key); err != nil {
		return false, err
	}
	var raw string
	err := m.s.DB.QueryRow(ctx, `SELECT value FROM opsbot_memory WHERE skill=$1 AND room_id=$2 AND mkey=$3`, m.skill, m.room, key).Scan(&raw)
	if isNoRows(err) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("reading memory %q: %w", key, err)
	}
	if err := json.Unmarshal([]byte(raw), v); err != nil {
		return true, fmt.Errorf("decoding memory %q: %w", key, err)
	}
	return true, nil
}

func (m *roomMemory) Put(ctx context.Context, key string, v any) error {
	if err := checkKey(key); err != nil {
		return err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding memory %q: %w", key, err)
	}
	if len(data) > MaxMemoryValueBytes {
		return fmt.Errorf("memory value for %q is %d bytes, more than the %d allowed", key, len(data), MaxMemoryValueBytes)
	}
	_, err = m.s.DB.Exec(ctx, `INSERT INTO opsbot_memory (skill, room_id, mkey, value, updated_at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (skill, room_id, mkey) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
		m.skill, m.room, key, string(data), time.Now().UnixMilli())
	if err != nil {
		return fmt.Errorf("writing memory %q: %w", key, err)
	}
	return nil
}

func (m *roomMemory) Delete(ctx context.Context, key string) error {
	_, err := m.s.DB.Exec(ctx, `DELETE FROM opsbot_memory WHERE skill=$1 AND room_id=$2 AND mkey=$3`, m.skill, m.room, key)
	return err
}

func (m *roomMemory) Keys(ctx context.Context) ([]string, error) {
	rows, err := m.s.DB.Query(ctx, `SELECT mkey FROM opsbot_memory WHERE skill=$1 AND room_id=$2 ORDER BY mkey`, m.skill, m.room)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var keys []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

// BotProfile returns the profile last set for a bot ("" if never).
func (s *Store) BotProfile(ctx context.Context, userID id.UserID) (displayname, avatar string, err error) {
	err = s.DB.QueryRow(ctx, `SELECT displayname, avatar FROM opsbot_bot_profile WHERE user_id=$1`, userID).Scan(&displayname, &avatar)
	if isNoRows(err) {
		return "", "", nil
	}
	return displayname, avatar, err
}

// SetBotProfile records the profile just set for a bot.
func (s *Store) SetBotProfile(ctx context.Context, userID id.UserID, displayname, avatar string) error {
	_, err := s.DB.Exec(ctx, `INSERT INTO opsbot_bot_profile (user_id, displayname, avatar) VALUES ($1, $2, $3)
		ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname, avatar = excluded.avatar`, userID, displayname, avatar)
	return err
}
