package stages

import (
	"context"

	"maunium.net/go/mautrix/event"
)

// Verifier takes in-room verification events (appservice/verification).
type Verifier interface {
	// HandleRoomEvent reports whether the event was part of a verification.
	HandleRoomEvent(ctx context.Context, evt *event.Event) bool
}

// Verification hands in-room verification events (a request in a DM, and
// the m.key.verification.* events after it) to the verification helper:
// they are protocol, not messages for the skills.
type Verification struct {
	verifier Verifier
}

// NewVerification returns the verification stage; verifier is nil when
// encryption is off (the stage then passes every event on).
func NewVerification(verifier Verifier) *Verification { return &Verification{verifier: verifier} }

func (*Verification) Name() string { return "verification" }

func (*Verification) Handles() []event.Type {
	return []event.Type{event.InRoomVerificationStart, event.InRoomVerificationReady, event.InRoomVerificationAccept,
		event.InRoomVerificationKey, event.InRoomVerificationMAC, event.InRoomVerificationCancel, event.InRoomVerificationDone}
}

func (v *Verification) Run(ctx context.Context, ev *Event) Result {
	if v.verifier != nil && v.verifier.HandleRoomEvent(ctx, ev.Evt) {
		return Stop
	}
	return Next
}
