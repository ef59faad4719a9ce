package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix/id"
)

// ClientSession is a client-mode bot's login and /sync position.
type ClientSession struct {
	DeviceID    id.DeviceID
	AccessToken string
	// NextBatch is where the bot's /sync resumes; "" before the first sync.
	NextBatch string
}

// ErrSyncMoved is returned by RecordSync when the stored position is not the
// one the batch started from: another process synced the bot meanwhile.
var ErrSyncMoved = errors.New("the bot's /sync position moved under this process")

// ClientSession returns a bot's stored login, or nil if it never logged in.
func (s *Store) ClientSession(ctx context.Context, bot id.UserID) (*ClientSession, error) {
	var cs ClientSession
	err := s.DB.QueryRow(ctx, `SELECT device_id, access_token, next_batch FROM opsbot_client_session WHERE bot = $1`, bot).
		Scan(&cs.DeviceID, &cs.AccessToken, &cs.NextBatch)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the login of %s: %w", bot, err)
	}
	return &cs, nil
}

// SaveLogin stores a bot's device and access token. The /sync position is
// kept if the device is the same, and starts over for a new device.
func (s *Store) SaveLogin(ctx context.Context, bot id.UserID, device id.DeviceID, token string) error {
	_, err := s.DB.Exec(ctx, `INSERT INTO opsbot_client_session (bot, device_id, access_token, next_batch, updated_at) VALUES ($1, $2, $3, '', $4)
		ON CONFLICT (bot) DO UPDATE SET access_token = excluded.access_token, updated_at = excluded.updated_at,
			next_batch = CASE WHEN opsbot_client_session.device_id = excluded.device_id THEN opsbot_client_session.next_batch ELSE '' END,
			device_id = excluded.device_id`,
		bot, device, token, time.Now().UnixMilli())
	if err != nil {
		return fmt.Errorf("storing the login of %s: %w", bot, err)
	}
	return nil
}

// ForgetLogin deletes a bot's stored login and /sync position: its next
// start logs in anew (a new device).
func (s *Store) ForgetLogin(ctx context.Context, bot id.UserID) error {
	if _, err := s.DB.Exec(ctx, `DELETE FROM opsbot_client_session WHERE bot = $1`, bot); err != nil {
		return fmt.Errorf("forgetting the login of %s: %w", bot, err)
	}
	return nil
}

// RecordSync records the events of one /sync batch of a client-mode bot and
// moves its position from since to next, in one database transaction: a
// crash leaves either both (the batch is in the inbox, the next sync starts
// after it) or neither (the batch is fetched again). The events are claimed
// by fence's term, which must hold (only the leader syncs); they are
// de-duplicated by event ID like a transaction's, so an event two bots see,
// or an appservice transaction carried too, is handled once.
func (s *Store) RecordSync(ctx context.Context, bot id.UserID, since, next string, events []InboxEvent, fence Fence) (recorded []InboxEvent, err error) {
	now := time.Now().UnixMilli()
	txnID := "sync:" + bot.String() + ":" + next
	err = s.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := hold(ctx, fence); err != nil {
			return err
		}
		res, err := s.DB.Exec(ctx, `UPDATE opsbot_client_session SET next_batch = $1, updated_at = $2 WHERE bot = $3 AND next_batch = $4`,
			next, now, bot, since)
		if err != nil {
			return fmt.Errorf("moving the /sync position of %s: %w", bot, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n != 1 {
			return fmt.Errorf("%w (%s)", ErrSyncMoved, bot)
		}
		recorded, err = s.insertAll(ctx, txnID, now, fence.Epoch(), events)
		return err
	})
	if err != nil {
		return nil, err
	}
	return recorded, nil
}
