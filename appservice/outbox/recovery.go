package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TxnMarker is the content key every bot message carries its transaction
// ID under (outside the encrypted payload, so opsbot can find it without
// decrypting; the ID is a hash that reveals nothing).
const TxnMarker = "org.opsbot.txn_id"

type recoveryKey struct{}

// WithRecovery marks ctx as re-handling an event left unfinished by a
// crash. Sends made under it first look for a message the bot already sent
// with the same transaction ID: a homeserver's own transaction-ID
// de-duplication can miss a send whose client died mid-request (Dendrite's
// does), and a second copy must not go out.
func WithRecovery(ctx context.Context) context.Context {
	return context.WithValue(ctx, recoveryKey{}, true)
}

func recovering(ctx context.Context) bool {
	v, _ := ctx.Value(recoveryKey{}).(bool)
	return v
}

// withMarker returns content as a JSON object with the transaction marker,
// added to the encoded object rather than decoded and encoded again (this
// runs for every message the bots send).
func withMarker(content any, txnID string) (json.RawMessage, error) {
	data, err := json.Marshal(content)
	if err != nil {
		return nil, err
	}
	data = bytes.TrimSpace(data)
	if len(data) < 2 || data[0] != '{' || data[len(data)-1] != '}' {
		return nil, fmt.Errorf("content is not a JSON object: %.40s", data)
	}
	marker, err := json.Marshal(txnID)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(data)+len(TxnMarker)+len(marker)+4)
	out = append(out, data[:len(data)-1]...)
	if len(bytes.TrimSpace(data[1:len(data)-1])) > 0 {
		out = append(out, ',')
	}
	out = append(out, '"')
	out = append(out, TxnMarker...)
	out = append(out, '"', ':')
	out = append(out, marker...)
	out = append(out, '}')
	return out, nil
}

// alreadySent looks through the room's recent history for a message the
// bot sent with txnID, and returns its ID.
func (o *Outbox) alreadySent(ctx context.Context, bot id.UserID, room id.RoomID, txnID string) (id.EventID, error) {
	filter := &mautrix.FilterPart{Senders: []id.UserID{bot}}
	resp, err := o.AS.Intent(bot).Client.Messages(ctx, room, "", "", mautrix.DirectionBackward, filter, 100)
	if err != nil {
		return "", err
	}
	for _, evt := range resp.Chunk {
		if evt.Sender != bot || evt.Type == event.StateMember {
			continue
		}
		var c map[string]any
		if err := json.Unmarshal(evt.Content.VeryRaw, &c); err != nil {
			continue
		}
		if c[TxnMarker] == txnID {
			return evt.ID, nil
		}
	}
	return "", nil
}
