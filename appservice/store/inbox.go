package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"

	"github.com/opsbot/opsbot/appservice/leader"
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
	// Recovered is set for events an earlier leader had claimed and not
	// finished: it may have acted on them already.
	Recovered bool
	Payload   []byte // the event JSON as the homeserver sent it
	// Decoded is the payload as intake decoded it, handed on with a fresh
	// event so that it is decoded once; nil for events read back from the
	// database. It is not stored.
	Decoded *event.Event
}

// ErrFenced is returned by the claiming and marking writes when their
// leadership term no longer holds.
var ErrFenced = errors.New("this opsbot is no longer the leader")

// Fence is the leadership term under which events are claimed and marked
// done (leader.Term).
type Fence interface {
	Epoch() int64
	// Hold, called inside a database transaction, fails unless the term
	// still holds; the transaction then commits before any newer term
	// begins, or not at all. An error leader.Unconfirmed reports means
	// the database could not say (a lost connection), not that the term
	// is over.
	Hold(ctx context.Context) error
}

// hold runs fence.Hold in a transaction: ErrFenced when the term is over;
// when the database could not confirm it (a lost connection), the error
// as it is, so that the write is tried again. Nothing done under a term in
// doubt is lost by writing it later: sends wait until the term is
// confirmed (appservice/outbox), and a newer leader re-runs what an
// earlier one claimed and did not mark done.
func hold(ctx context.Context, fence Fence) error {
	err := fence.Hold(ctx)
	if err == nil || leader.Unconfirmed(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrFenced, err)
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
// claimed says whether the events were claimed by fence's term in the same
// transaction (the caller then hands them to its pipeline); a term that no
// longer holds (or a nil fence) records them unclaimed, for the leader to
// pick up.
//
// The events go in with one multi-row INSERT per chunk of insertChunk
// events rather than one statement each (a round trip each on Postgres;
// docs/performance.md).
func (s *Store) RecordTransaction(ctx context.Context, txnID string, events []InboxEvent, fence Fence) (recorded []InboxEvent, claimed, duplicate bool, err error) {
	now := time.Now().UnixMilli()
	err = s.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		claimed = fence != nil && fence.Hold(ctx) == nil
		var epoch int64
		if claimed {
			epoch = fence.Epoch()
		}
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
		recorded, err = s.insertAll(ctx, txnID, now, epoch, todo)
		return err
	})
	if err != nil {
		return nil, false, false, err
	}
	return recorded, claimed, duplicate, nil
}

// insertAll writes events in chunks of insertChunk (insertEvents) and
// returns those that were new, in order.
func (s *Store) insertAll(ctx context.Context, txnID string, now, epoch int64, events []InboxEvent) ([]InboxEvent, error) {
	var recorded []InboxEvent
	for chunk := range slices.Chunk(events, insertChunk) {
		got, err := s.insertEvents(ctx, txnID, now, epoch, chunk)
		if err != nil {
			return nil, err
		}
		recorded = append(recorded, got...)
	}
	return recorded, nil
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
func (s *Store) insertEvents(ctx context.Context, txnID string, now, epoch int64, events []InboxEvent) ([]InboxEvent, error) {
	var q strings.Builder
	q.WriteString(`INSERT INTO opsbot_inbox (txn_id, event_id, room_id, kind, payload, received_at, claimed_epoch) VALUES `)
	args := make([]any, 3, 3+4*len(events))
	args[0], args[1], args[2] = txnID, now, epoch
	for i, ev := range events {
		if i > 0 {
			q.WriteByte(',')
		}
		n := len(args)
		fmt.Fprintf(&q, "($1, $%d, $%d, $%d, $%d, $2, $3)", n+1, n+2, n+3, n+4)
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

// PendingEvents returns inbox events not yet handled, oldest first.
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

// ClaimPending claims for fence's term up to limit unfinished events that
// no leader claimed, or an earlier one did, oldest first: the work a crash,
// a lost leadership or another replica's intake left. Those an earlier
// term had claimed come back Recovered.
func (s *Store) ClaimPending(ctx context.Context, fence Fence, limit int) (claimed []InboxEvent, err error) {
	err = s.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		claimed = claimed[:0]
		if err := hold(ctx, fence); err != nil {
			return err
		}
		rows, err := s.DB.Query(ctx, `SELECT seq, txn_id, event_id, room_id, kind, payload, claimed_epoch FROM opsbot_inbox
			WHERE NOT done AND claimed_epoch < $1 ORDER BY seq LIMIT $2`, fence.Epoch(), limit)
		if err != nil {
			return err
		}
		for rows.Next() {
			var ev InboxEvent
			var payload string
			var epoch int64
			if err := rows.Scan(&ev.Seq, &ev.TxnID, &ev.EventID, &ev.RoomID, &ev.Kind, &payload, &epoch); err != nil {
				rows.Close()
				return err
			}
			ev.Payload, ev.Recovered = []byte(payload), epoch != 0
			claimed = append(claimed, ev)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		return s.updateSeqs(ctx, `UPDATE opsbot_inbox SET claimed_epoch = $1 WHERE seq IN (%s)`, fence.Epoch(), seqsOf(claimed))
	})
	return claimed, err
}

// MarkDone marks events of fence's term handled, in one database
// transaction, with one UPDATE per chunk of insertChunk.
func (s *Store) MarkDone(ctx context.Context, fence Fence, seqs []int64) error {
	if len(seqs) == 0 {
		return nil
	}
	return s.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := hold(ctx, fence); err != nil {
			return err
		}
		return s.updateSeqs(ctx, `UPDATE opsbot_inbox SET done = true WHERE claimed_epoch = $1 AND seq IN (%s)`, fence.Epoch(), seqs)
	})
}

// ReleaseClaims gives events of fence's term that it did not start back
// to whichever leader comes next, which then runs them without the care
// due to events an earlier leader may have acted on.
func (s *Store) ReleaseClaims(ctx context.Context, fence Fence, seqs []int64) error {
	if len(seqs) == 0 {
		return nil
	}
	return s.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := hold(ctx, fence); err != nil {
			return err
		}
		return s.updateSeqs(ctx, `UPDATE opsbot_inbox SET claimed_epoch = 0 WHERE NOT done AND claimed_epoch = $1 AND seq IN (%s)`, fence.Epoch(), seqs)
	})
}

// updateSeqs runs an UPDATE whose query has $1 for epoch and %s for the
// list of sequence numbers, in chunks of insertChunk.
func (s *Store) updateSeqs(ctx context.Context, query string, epoch int64, seqs []int64) error {
	for chunk := range slices.Chunk(seqs, insertChunk) {
		args := make([]any, 1, 1+len(chunk))
		args[0] = epoch
		var list strings.Builder
		for i, seq := range chunk {
			if i > 0 {
				list.WriteByte(',')
			}
			fmt.Fprintf(&list, "$%d", i+2)
			args = append(args, seq)
		}
		if _, err := s.DB.Exec(ctx, fmt.Sprintf(query, list.String()), args...); err != nil {
			return err
		}
	}
	return nil
}

func seqsOf(events []InboxEvent) []int64 {
	out := make([]int64, len(events))
	for i, ev := range events {
		out[i] = ev.Seq
	}
	return out
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

// PruneLoop forgets handled events and transaction IDs older than a week,
// once an hour, until ctx ends.
func (s *Store) PruneLoop(ctx context.Context, log zerolog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		events, txns, err := s.Prune(ctx, time.Now().Add(-7*24*time.Hour))
		if err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Msg("Pruning the inbox failed")
		} else if events+txns > 0 {
			log.Debug().Int64("events", events).Int64("transactions", txns).Msg("Pruned the inbox")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
