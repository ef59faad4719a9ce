package store

import (
	"context"
	"time"

	"maunium.net/go/mautrix/id"
)

// RecordUpgrade remembers that oldRoom was replaced by newRoom, until the
// bots have joined the new room and its memory has moved.
func (s *Store) RecordUpgrade(ctx context.Context, oldRoom, newRoom id.RoomID) error {
	_, err := s.DB.Exec(ctx, `INSERT INTO opsbot_room_upgrade (old_room_id, new_room_id, created_at) VALUES ($1, $2, $3)
		ON CONFLICT (new_room_id) DO NOTHING`, oldRoom, newRoom, time.Now().UnixMilli())
	return err
}

// UpgradeOf returns the room that newRoom replaced, if an upgrade is pending.
func (s *Store) UpgradeOf(ctx context.Context, newRoom id.RoomID) (oldRoom id.RoomID, err error) {
	err = s.DB.QueryRow(ctx, `SELECT old_room_id FROM opsbot_room_upgrade WHERE new_room_id = $1`, newRoom).Scan(&oldRoom)
	if isNoRows(err) {
		return "", nil
	}
	return oldRoom, err
}

// FinishUpgrade forgets a pending upgrade.
func (s *Store) FinishUpgrade(ctx context.Context, newRoom id.RoomID) error {
	_, err := s.DB.Exec(ctx, `DELETE FROM opsbot_room_upgrade WHERE new_room_id = $1`, newRoom)
	return err
}

// MoveMemory moves every skill's memory from oldRoom to newRoom. Keys the
// new room already has win. It returns how many entries moved.
func (s *Store) MoveMemory(ctx context.Context, oldRoom, newRoom id.RoomID) (moved int64, err error) {
	err = s.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		res, err := s.DB.Exec(ctx, `INSERT INTO opsbot_memory (skill, room_id, mkey, value, updated_at)
			SELECT skill, $2, mkey, value, updated_at FROM opsbot_memory WHERE room_id = $1
			ON CONFLICT (skill, room_id, mkey) DO NOTHING`, oldRoom, newRoom)
		if err != nil {
			return err
		}
		moved, _ = res.RowsAffected()
		_, err = s.DB.Exec(ctx, `DELETE FROM opsbot_memory WHERE room_id = $1`, oldRoom)
		return err
	})
	return moved, err
}

// LastRun returns when a cron job last ran (zero if never).
func (s *Store) LastRun(ctx context.Context, key string) (time.Time, error) {
	var ms int64
	err := s.DB.QueryRow(ctx, `SELECT last_run FROM opsbot_cron WHERE job_key = $1`, key).Scan(&ms)
	if isNoRows(err) {
		return time.Time{}, nil
	} else if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(ms), nil
}

// SetLastRun records a cron job's run.
func (s *Store) SetLastRun(ctx context.Context, key string, at time.Time) error {
	_, err := s.DB.Exec(ctx, `INSERT INTO opsbot_cron (job_key, last_run) VALUES ($1, $2)
		ON CONFLICT (job_key) DO UPDATE SET last_run = excluded.last_run`, key, at.UnixMilli())
	return err
}
