package appservice

import (
	"context"
	"errors"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/outbox"
)

// roomActions are the outbox's room actions plus fetching earlier events,
// which needs decryption.
type roomActions struct {
	*outbox.Outbox
	s *Service
}

// EventSender says who sent an event; the content (maybe encrypted) is not
// looked at.
func (r roomActions) EventSender(ctx context.Context, bot id.UserID, room id.RoomID, eventID id.EventID) (id.UserID, error) {
	evt, err := r.s.Accounts.Client(bot).GetEvent(ctx, room, eventID)
	if err != nil {
		return "", err
	}
	return evt.Sender, nil
}

// Fetch gets an earlier event of the room as bot, decrypted if it was
// encrypted, with its content parsed.
func (r roomActions) Fetch(ctx context.Context, bot id.UserID, room id.RoomID, eventID id.EventID) (*event.Event, error) {
	evt, err := r.s.Accounts.Client(bot).GetEvent(ctx, room, eventID)
	if err != nil {
		return nil, err
	}
	evt.RoomID = room
	if evt.StateKey != nil {
		evt.Type.Class = event.StateEventType
	} else {
		evt.Type.Class = event.MessageEventType
	}
	_ = evt.Content.ParseRaw(evt.Type)
	if evt.Type == event.EventEncrypted {
		if r.s.E2EE == nil {
			return nil, errors.New("the event is encrypted and encryption is off")
		}
		decrypted, _, err := r.s.E2EE.Decrypt(ctx, evt, []id.UserID{bot})
		if err != nil {
			return nil, err
		}
		return decrypted, nil
	}
	return evt, nil
}
