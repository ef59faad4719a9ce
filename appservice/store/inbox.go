package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
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
//
// The events go in with one multi-row INSERT per chunk of insertChunk
// events rather than one statement each (a round trip each on Postgres;
// docs/performance.md).
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
		todo := events
		if duplicate {
			// Only the room events of a retry may be new.
			todo = make([]InboxEvent, 0, len(events))
			for _, ev := range events {
				if ev.EventID != "" {
					todo = append(todo, ev)
				}
			}
		}
		for chunk := range slices.Chunk(todo, insertChunk) {
			got, err := s.insertEvents(ctx, txnID, now, chunk)
			if err != nil {
				return err
			}
			recorded = append(recorded, got...)
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return recorded, duplicate, nil
}

// insertChunk bounds the rows of one INSERT: 4 parameters a row keeps it
// far below SQLite's and Postgres's parameter limits (32766 and 65535).
const insertChunk = 500

// insertEvents writes events with one INSERT and returns those that were new
// (an event ID already in the inbox, or earlier in the same statement, is
// skipped), in the order given, with their sequence numbers. RETURNING does
// not promise any row order, so rows are matched back by event ID, and events
// without an ID (ephemeral ones, never skipped) by sequence number: a
// statement assigns its new rows increasing numbers in the order of VALUES.
func (s *Store) insertEvents(ctx context.Context, txnID string, now int64, events []InboxEvent) ([]InboxEvent, error) {
	var q strings.Builder
	q.WriteString(`INSERT INTO opsbot_inbox (txn_id, event_id, room_id, kind, payload, received_at) VALUES `)
	args := make([]any, 2, 2+4*len(events))
	args[0], args[1] = txnID, now
	for i, ev := range events {
		if i > 0 {
			q.WriteByte(',')
		}
		n := len(args)
		fmt.Fprintf(&q, "($1, $%d, $%d, $%d, $%d, $2)", n+1, n+2, n+3, n+4)
		args = append(args, ev.EventID, ev.RoomID, ev.Kind, string(ev.Payload))
	}
	q.WriteString(` ON CONFLICT DO NOTHING RETURNING seq, event_id`)
	rows, err := s.DB.Query(ctx, q.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("recording %d events: %w", len(events), err)
	}
	defer rows.Close()
	byID := make(map[string]int64, len(events))
	var noID []int64
	for rows.Next() {
		var seq int64
		var eventID string
		if err := rows.Scan(&seq, &eventID); err != nil {
			return nil, fmt.Errorf("recording %d events: %w", len(events), err)
		}
		if eventID == "" {
			noID = append(noID, seq)
		} else {
			byID[eventID] = seq
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("recording %d events: %w", len(events), err)
	}
	slices.Sort(noID)
	out := make([]InboxEvent, 0, len(byID)+len(noID))
	for _, ev := range events {
		if ev.EventID == "" {
			if len(noID) == 0 {
				return nil, fmt.Errorf("recording %d events: fewer rows returned than events without an ID", len(events))
			}
			ev.Seq, noID = noID[0], noID[1:]
		} else {
			seq, ok := byID[ev.EventID]
			if !ok {
				continue // already in the inbox, from an earlier transaction or this one
			}
			delete(byID, ev.EventID) // a second copy in the same transaction was skipped
			ev.Seq = seq
		}
		ev.TxnID = txnID
		out = append(out, ev)
	}
	if len(noID) > 0 || len(byID) > 0 {
		return nil, fmt.Errorf("recording %d events: %d returned rows match no event", len(events), len(noID)+len(byID))
	}
	return out, nil
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

// MarkDoneBatch marks several inbox events handled, with one UPDATE per
// chunk of insertChunk and one commit for all.
func (s *Store) MarkDoneBatch(ctx context.Context, seqs []int64) error {
	switch len(seqs) {
	case 0:
		return nil
	case 1:
		return s.MarkDone(ctx, seqs[0])
	}
	mark := func(ctx context.Context) error {
		for chunk := range slices.Chunk(seqs, insertChunk) {
			var q strings.Builder
			q.WriteString(`UPDATE opsbot_inbox SET done = true WHERE seq IN (`)
			args := make([]any, len(chunk))
			for i, seq := range chunk {
				if i > 0 {
					q.WriteByte(',')
				}
				fmt.Fprintf(&q, "$%d", i+1)
				args[i] = seq
			}
			q.WriteByte(')')
			if _, err := s.DB.Exec(ctx, q.String(), args...); err != nil {
				return err
			}
		}
		return nil
	}
	if len(seqs) <= insertChunk {
		return mark(ctx)
	}
	return s.DB.DoTxn(ctx, nil, mark)
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
