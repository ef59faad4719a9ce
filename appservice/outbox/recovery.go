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

// trigger is the event whose handling is being re-run.
type trigger struct {
	room  id.RoomID
	event id.EventID
}

// WithRecovery marks ctx as re-running the handling of an event that an
// earlier leader (or an earlier run of this process, before a crash) had
// begun: it may have sent some of its actions already. Sends made under it
// first look for a message the bot sent with the same transaction ID since
// that event: a homeserver's own transaction-ID de-duplication can miss a
// send whose client died mid-request (Dendrite's does), or one made by
// another replica, and a second copy must not go out.
func WithRecovery(ctx context.Context, room id.RoomID, eventID id.EventID) context.Context {
	return context.WithValue(ctx, recoveryKey{}, trigger{room, eventID})
}

func recovering(ctx context.Context) (trigger, bool) {
	t, ok := ctx.Value(recoveryKey{}).(trigger)
	return t, ok
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

// alreadySent looks for a message the bot sent into room with txnID since
// the triggering event, and returns its ID: it pages back from the room's
// newest events to the trigger's time, however many messages the bot sent
// since. (Not forward from the trigger: Dendrite does not take the tokens
// of /context in /messages.)
func (o *Outbox) alreadySent(ctx context.Context, bot id.UserID, room id.RoomID, txnID string, trig trigger) (id.EventID, error) {
	client := o.opts.Accounts.Client(bot)
	var since int64
	if trig.event != "" {
		evt, err := client.GetEvent(ctx, trig.room, trig.event)
		if err != nil {
			return "", fmt.Errorf("reading the triggering event %s: %w", trig.event, err)
		}
		since = evt.Timestamp
	}
	filter := &mautrix.FilterPart{Senders: []id.UserID{bot}}
	from := ""
	for {
		resp, err := client.Messages(ctx, room, from, "", mautrix.DirectionBackward, filter, 100)
		if err != nil {
			return "", err
		}
		for _, evt := range resp.Chunk {
			if since > 0 && evt.Timestamp < since {
				return "", nil // before the trigger: nothing sent for it
			}
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
		if len(resp.Chunk) == 0 || resp.End == "" || resp.End == from {
			return "", nil
		}
		from = resp.End
	}
}
