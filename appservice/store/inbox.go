package store

import (
	"context"
	"fmt"
	"time"
)

// Kinds of inbox entries.
const (
	KindPDU       = "pdu"       // room events (timeline and state)
	KindEphemeral = "ephemeral" // typing, receipts, presence
	KindToDevice  = "to_device" // encryption keys and verification
)

// InboxEvent is one event of a recorded transaction.
type InboxEvent struct {
	Seq     int64
	TxnID   string
	EventID string // "" for ephemeral events
	RoomID  string
	Kind    string
	Type    string // the event type (not stored: only for logs)
	// Recovered is set for events resumed at start-up, after a crash.
	Recovered bool
	Payload   []byte // the event JSON as the homeserver sent it
}

// RecordTransaction durably records a transaction and its events in one
// database transaction. duplicate is true when txnID was recorded before (a
// homeserver retry, even across restarts). Events are de-duplicated by event
// ID, not only by transaction: Dendrite re-sends a failed transaction under
// the same ID with newer events appended, so the room events of a duplicate
// are still recorded if they are new (its ephemeral events, which have no ID,
// are not). recorded holds the newly written events with their sequence
// numbers, in order.
func (s *Store) RecordTransaction(ctx context.Context, txnID string, events []InboxEvent) (recorded []InboxEvent, duplicate bool, err error) {
	now := time.Now().UnixMilli()
	err = s.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		recorded = recorded[:0]
		res, err := s.DB.Exec(ctx, `INSERT INTO opsbot_transaction (txn_id, received_at) VALUES ($1, $2) ON CONFLICT DO NOTHING`, txnID, now)
		if err != nil {
			return fmt.Errorf("recording transaction: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		duplicate = n == 0
		for _, ev := range events {
			if duplicate && ev.EventID == "" {
				continue
			}
			row := s.DB.QueryRow(ctx, `INSERT INTO opsbot_inbox (txn_id, event_id, room_id, kind, payload, received_at)
				VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING seq`,
				txnID, ev.EventID, ev.RoomID, ev.Kind, string(ev.Payload), now)
			if err := row.Scan(&ev.Seq); err != nil {
				if isNoRows(err) {
					continue // already in the inbox from an earlier transaction
				}
				return fmt.Errorf("recording event %s: %w", ev.EventID, err)
			}
			ev.TxnID = txnID
			recorded = append(recorded, ev)
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return recorded, duplicate, nil
}

// PendingEvents returns inbox events not yet handled, oldest first: the work
// left over by a crash, picked up again at start-up.
func (s *Store) PendingEvents(ctx context.Context, limit int) ([]InboxEvent, error) {
	rows, err := s.DB.Query(ctx, `SELECT seq, txn_id, event_id, room_id, kind, payload FROM opsbot_inbox
		WHERE NOT done ORDER BY seq LIMIT $1`, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []InboxEvent
	for rows.Next() {
		var ev InboxEvent
		var payload string
		if err := rows.Scan(&ev.Seq, &ev.TxnID, &ev.EventID, &ev.RoomID, &ev.Kind, &payload); err != nil {
			return nil, err
		}
		ev.Payload = []byte(payload)
		out = append(out, ev)
	}
	return out, rows.Err()
}

// MarkDone marks an inbox event handled.
func (s *Store) MarkDone(ctx context.Context, seq int64) error {
	_, err := s.DB.Exec(ctx, `UPDATE opsbot_inbox SET done = true WHERE seq = $1`, seq)
	return err
}

// CountPending returns how many inbox events wait to be handled.
func (s *Store) CountPending(ctx context.Context) (n int, err error) {
	err = s.DB.QueryRow(ctx, `SELECT COUNT(*) FROM opsbot_inbox WHERE NOT done`).Scan(&n)
	return n, err
}

// Prune forgets handled events and transaction IDs older than the cutoff.
// The homeserver retries a transaction for minutes, not days, so a week of
// history is plenty for de-duplication.
func (s *Store) Prune(ctx context.Context, olderThan time.Time) (events, txns int64, err error) {
	cutoff := olderThan.UnixMilli()
	res, err := s.DB.Exec(ctx, `DELETE FROM opsbot_inbox WHERE done AND received_at < $1`, cutoff)
	if err != nil {
		return 0, 0, err
	}
	events, _ = res.RowsAffected()
	res, err = s.DB.Exec(ctx, `DELETE FROM opsbot_transaction WHERE received_at < $1`, cutoff)
	if err != nil {
		return events, 0, err
	}
	txns, _ = res.RowsAffected()
	return events, txns, nil
}
