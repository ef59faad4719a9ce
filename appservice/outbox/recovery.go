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

// alreadySent looks for a message the bot sent into room with txnID, since
// the triggering event (forward from it, however many messages followed),
// and returns its ID. For a room other than the trigger's it looks back
// from the newest event to the trigger's time.
func (o *Outbox) alreadySent(ctx context.Context, bot id.UserID, room id.RoomID, txnID string, trig trigger) (id.EventID, error) {
	client := o.AS.Intent(bot).Client
	filter := &mautrix.FilterPart{Senders: []id.UserID{bot}}
	if trig.room == room && trig.event != "" {
		anchor, err := client.Context(ctx, room, trig.event, filter, 0)
		if err != nil {
			return "", fmt.Errorf("finding the triggering event %s: %w", trig.event, err)
		}
		return o.scan(ctx, client, room, anchor.End, mautrix.DirectionForward, filter, txnID, 0)
	}
	var since int64
	if trig.event != "" {
		if evt, err := o.AS.Intent(bot).Client.GetEvent(ctx, trig.room, trig.event); err == nil {
			since = evt.Timestamp
		}
	}
	return o.scan(ctx, client, room, "", mautrix.DirectionBackward, filter, txnID, since)
}

// scan pages through the bot's messages in a room from a token in a
// direction, until it finds txnID's marker, runs out of events, or (going
// back) reaches events older than since (ms; 0 = the room's beginning).
func (o *Outbox) scan(ctx context.Context, client *mautrix.Client, room id.RoomID, from string, dir mautrix.Direction, filter *mautrix.FilterPart, txnID string, since int64) (id.EventID, error) {
	for {
		resp, err := client.Messages(ctx, room, from, "", dir, filter, 100)
		if err != nil {
			return "", err
		}
		for _, evt := range resp.Chunk {
			if dir == mautrix.DirectionBackward && since > 0 && evt.Timestamp < since {
				return "", nil
			}
			if evt.Sender != client.UserID || evt.Type == event.StateMember {
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
