package store

import (
	"context"
	"time"
)

// SeenFeatures returns the transaction features (msc2409, msc3202) the
// homeserver has been seen using, with when they were first recorded.
func (s *Store) SeenFeatures(ctx context.Context) (map[string]time.Time, error) {
	rows, err := s.DB.Query(ctx, `SELECT feature, seen_at FROM opsbot_homeserver_feature`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var name string
		var ms int64
		if err := rows.Scan(&name, &ms); err != nil {
			return nil, err
		}
		out[name] = time.UnixMilli(ms)
	}
	return out, rows.Err()
}

// RecordFeatures remembers that the homeserver used these features.
func (s *Store) RecordFeatures(ctx context.Context, names ...string) error {
	for _, n := range names {
		if _, err := s.DB.Exec(ctx, `INSERT INTO opsbot_homeserver_feature (feature, seen_at) VALUES ($1, $2)
			ON CONFLICT (feature) DO NOTHING`, n, time.Now().UnixMilli()); err != nil {
			return err
		}
	}
	return nil
}

// ForgetFeatures forgets what the homeserver was seen using.
func (s *Store) ForgetFeatures(ctx context.Context) error {
	_, err := s.DB.Exec(ctx, `DELETE FROM opsbot_homeserver_feature`)
	return err
}
