package verification

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// Decisions the operator (or the bot) records on a pending verification.
const (
	DecisionNone      = ""
	DecisionConfirm   = "confirm"   // the operator compared and confirmed
	DecisionCancel    = "cancel"    // the operator cancelled
	DecisionConfirmed = "confirmed" // the bot sent its confirmation
)

// ErrNotPending means no verification with that transaction ID waits.
var ErrNotPending = errors.New("no pending verification with that transaction ID")

// Emoji is one symbol of the short authentication string.
type Emoji struct {
	Symbol string `json:"symbol"`
	Name   string `json:"name"`
}

// Pending is a verification whose short authentication string is known and
// waits for the operator.
type Pending struct {
	TransactionID id.VerificationTransactionID
	Bot           id.UserID
	User          id.UserID
	Device        id.DeviceID
	Emojis        []Emoji
	Decimals      []int
	Decision      string
	Created       time.Time
	Expires       time.Time
}

// SAS is the short authentication string as one line: emojis with their
// names, then the decimals.
func (p Pending) SAS() string {
	var parts []string
	for _, e := range p.Emojis {
		parts = append(parts, e.Symbol+" "+e.Name)
	}
	nums := make([]string, len(p.Decimals))
	for i, d := range p.Decimals {
		nums[i] = fmt.Sprint(d)
	}
	return strings.Join(parts, ", ") + " | " + strings.Join(nums, " ")
}

// Store keeps pending verifications in opsbot's database, where the running
// opsbot and the `verification` CLI meet. The rows only live for minutes
// and are cleared at every start, so the table is created as it is, outside
// the versioned schema.
type Store struct {
	db *dbutil.Database
}

// NewStore returns the Store in db.
func NewStore(db *dbutil.Database) *Store { return &Store{db: db} }

// Init creates the table if needed.
func (s *Store) Init(ctx context.Context) error {
	_, err := s.db.Exec(ctx, `CREATE TABLE IF NOT EXISTS opsbot_verification_pending (
		transaction_id TEXT PRIMARY KEY,
		bot_id         TEXT NOT NULL,
		user_id        TEXT NOT NULL,
		device_id      TEXT NOT NULL,
		emojis         TEXT NOT NULL,
		decimals       TEXT NOT NULL,
		decision       TEXT NOT NULL DEFAULT '',
		created_at     BIGINT NOT NULL,
		expires_at     BIGINT NOT NULL
	)`)
	if err != nil {
		return fmt.Errorf("creating the pending verification table: %w", err)
	}
	return nil
}

// Add records a pending verification.
func (s *Store) Add(ctx context.Context, p Pending) error {
	emojis, _ := json.Marshal(p.Emojis)
	decimals, _ := json.Marshal(p.Decimals)
	_, err := s.db.Exec(ctx, `INSERT INTO opsbot_verification_pending
		(transaction_id, bot_id, user_id, device_id, emojis, decimals, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		p.TransactionID, p.Bot, p.User, p.Device, string(emojis), string(decimals), p.Created.UnixMilli(), p.Expires.UnixMilli())
	return err
}

// List returns the pending verifications, oldest first.
func (s *Store) List(ctx context.Context) ([]Pending, error) {
	rows, err := s.db.Query(ctx, `SELECT transaction_id, bot_id, user_id, device_id, emojis, decimals, decision, created_at, expires_at
		FROM opsbot_verification_pending ORDER BY created_at`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Pending
	for rows.Next() {
		var p Pending
		var emojis, decimals string
		var created, expires int64
		if err := rows.Scan(&p.TransactionID, &p.Bot, &p.User, &p.Device, &emojis, &decimals, &p.Decision, &created, &expires); err != nil {
			return nil, err
		}
		_ = json.Unmarshal([]byte(emojis), &p.Emojis)
		_ = json.Unmarshal([]byte(decimals), &p.Decimals)
		p.Created, p.Expires = time.UnixMilli(created), time.UnixMilli(expires)
		out = append(out, p)
	}
	return out, rows.Err()
}

// Decide records the operator's decision (DecisionConfirm or
// DecisionCancel) on a verification that waits for one.
func (s *Store) Decide(ctx context.Context, txn id.VerificationTransactionID, decision string) error {
	res, err := s.db.Exec(ctx, `UPDATE opsbot_verification_pending SET decision = $2 WHERE transaction_id = $1 AND decision = ''`, txn, decision)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: %s", ErrNotPending, txn)
	}
	return nil
}

// SetDecision overwrites the decision.
func (s *Store) SetDecision(ctx context.Context, txn id.VerificationTransactionID, decision string) error {
	_, err := s.db.Exec(ctx, `UPDATE opsbot_verification_pending SET decision = $2 WHERE transaction_id = $1`, txn, decision)
	return err
}

// Delete removes a verification.
func (s *Store) Delete(ctx context.Context, txn id.VerificationTransactionID) error {
	_, err := s.db.Exec(ctx, `DELETE FROM opsbot_verification_pending WHERE transaction_id = $1`, txn)
	return err
}

// DeleteAll removes every pending verification.
func (s *Store) DeleteAll(ctx context.Context) error {
	_, err := s.db.Exec(ctx, `DELETE FROM opsbot_verification_pending`)
	return err
}
