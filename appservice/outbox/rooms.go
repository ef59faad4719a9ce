package outbox

import (
	"context"
	"fmt"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
)

// SendState sends a state event as bot (never encrypted: Matrix does not
// encrypt room state).
func (o *Outbox) SendState(ctx context.Context, bot id.UserID, room id.RoomID, evtType event.Type, stateKey string, content any) (id.EventID, error) {
	var resp *mautrix.RespSendEvent
	err := o.retry(ctx, "state", func() error {
		var err error
		resp, err = o.opts.Accounts.Actor(bot).SendStateEvent(ctx, room, evtType, stateKey, content)
		return err
	})
	if err != nil {
		return "", err
	}
	return resp.EventID, nil
}

// Typing sets the bot's typing notification.
func (o *Outbox) Typing(ctx context.Context, bot id.UserID, room id.RoomID, typing bool, timeout time.Duration) error {
	return o.retry(ctx, "typing", func() error {
		_, err := o.opts.Accounts.Actor(bot).UserTyping(ctx, room, typing, timeout)
		return err
	})
}

// MarkRead sends a read receipt as bot.
func (o *Outbox) MarkRead(ctx context.Context, bot id.UserID, room id.RoomID, eventID id.EventID) error {
	return o.retry(ctx, "receipt", func() error {
		return o.opts.Accounts.Actor(bot).MarkRead(ctx, room, eventID)
	})
}

// Membership invites, kicks, bans or unbans a user as bot.
func (o *Outbox) Membership(ctx context.Context, bot id.UserID, room id.RoomID, user id.UserID, action skills.Membership, reason string) error {
	actor := o.opts.Accounts.Actor(bot)
	return o.retry(ctx, "membership", func() error {
		var err error
		switch action {
		case skills.Invite:
			_, err = actor.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: user, Reason: reason})
		case skills.Kick:
			_, err = actor.KickUser(ctx, room, &mautrix.ReqKickUser{UserID: user, Reason: reason})
		case skills.Ban:
			_, err = actor.BanUser(ctx, room, &mautrix.ReqBanUser{UserID: user, Reason: reason})
		case skills.Unban:
			_, err = actor.UnbanUser(ctx, room, &mautrix.ReqUnbanUser{UserID: user, Reason: reason})
		default:
			return fmt.Errorf("unknown membership action %q", action)
		}
		return err
	})
}
