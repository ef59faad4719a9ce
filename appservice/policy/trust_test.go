package policy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/skills"
)

func trustPolicy(global, plain string, skills map[string]config.SkillPolicy, refused *[]string) *Policy {
	p := New(Options{Permissions: config.Permissions{Skills: skills, RateLimit: config.RateLimit{UserPerMinute: intp(0), RoomPerMinute: intp(0)}}, Trust: &TrustOptions{Encryption: config.Encryption{CommandTrust: global, CommandTrustPlainRooms: plain},
		Log: zerolog.Nop(), Refused: func(reason string) { *refused = append(*refused, reason) }}})
	return p
}

// encrypted is a decrypted event from device dev with the trust mautrix gave it.
func encrypted(sender id.UserID, dev id.DeviceID, state id.TrustState) *event.Event {
	evt := &event.Event{Sender: sender, RoomID: "!r:x", ID: "$e", Type: event.EventMessage}
	evt.Mautrix.WasEncrypted = true
	evt.Mautrix.TrustState = state
	if dev != "" {
		evt.Mautrix.TrustSource = &id.Device{UserID: sender, DeviceID: dev}
	}
	return evt
}

func TestTrustDecisions(t *testing.T) {
	plain := &event.Event{Sender: "@a:x", RoomID: "!plain:x", ID: "$p", Type: event.EventMessage}
	cases := []struct {
		global, plainRooms, skillLevel, adminLevel string
		skill                                      string
		evt                                        *event.Event
		want                                       bool
		reason                                     string
	}{
		// all obeys everything, encrypted or not.
		{"all", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateUnset), true, ""},
		{"all", "refuse", "", "", "ping", plain, true, ""},
		// cross-signed: TOFU or better.
		{"cross-signed", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateUnset), false, ReasonNotCrossSigned},
		{"cross-signed", "refuse", "", "", "ping", encrypted("@a:x", "", id.TrustStateUnknownDevice), false, ReasonNotCrossSigned},
		{"cross-signed", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateForwarded), false, ReasonNotCrossSigned},
		{"cross-signed", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateBackup), false, ReasonNotCrossSigned},
		{"cross-signed", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateCrossSignedUntrusted), false, ReasonNotCrossSigned},
		{"cross-signed", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateDeviceKeyMismatch), false, ReasonNotCrossSigned},
		{"cross-signed", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateBlacklisted), false, ReasonNotCrossSigned},
		{"cross-signed", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateCrossSignedTOFU), true, ""},
		{"cross-signed", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateCrossSignedVerified), true, ""},
		{"cross-signed", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateVerified), true, ""},
		// verified: the bot verified the identity or the device.
		{"verified", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateCrossSignedTOFU), false, ReasonNotVerified},
		{"verified", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateUnset), false, ReasonNotCrossSigned},
		{"verified", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateCrossSignedVerified), true, ""},
		{"verified", "refuse", "", "", "ping", encrypted("@a:x", "D", id.TrustStateVerified), true, ""},
		// Plain rooms: no device; the setting decides.
		{"cross-signed", "refuse", "", "", "ping", plain, false, ReasonPlainRoom},
		{"cross-signed", "obey", "", "", "ping", plain, true, ""},
		{"verified", "obey", "", "", "ping", plain, true, ""},
		// Per-skill overrides, looser and stricter.
		{"cross-signed", "refuse", "all", "", "ping", encrypted("@a:x", "D", id.TrustStateUnset), true, ""},
		{"cross-signed", "refuse", "all", "", "ping", plain, true, ""},
		{"all", "refuse", "verified", "", "ping", encrypted("@a:x", "D", id.TrustStateCrossSignedTOFU), false, ReasonNotVerified},
		{"all", "refuse", "verified", "", "echo", encrypted("@a:x", "D", id.TrustStateUnset), true, ""}, // another skill
		// Admin commands: the stricter of the global and their own.
		{"verified", "refuse", "", "all", "admin", encrypted("@a:x", "D", id.TrustStateCrossSignedTOFU), false, ReasonNotVerified},
		{"cross-signed", "refuse", "", "verified", "admin", encrypted("@a:x", "D", id.TrustStateCrossSignedTOFU), false, ReasonNotVerified},
		{"all", "refuse", "", "cross-signed", "admin", encrypted("@a:x", "D", id.TrustStateCrossSignedTOFU), true, ""},
		{"all", "refuse", "", "cross-signed", "admin", encrypted("@a:x", "D", id.TrustStateUnset), false, ReasonNotCrossSigned},
	}
	for i, c := range cases {
		skills := map[string]config.SkillPolicy{}
		if c.skillLevel != "" {
			skills["ping"] = config.SkillPolicy{CommandTrust: c.skillLevel}
		}
		if c.adminLevel != "" {
			skills["admin"] = config.SkillPolicy{CommandTrust: c.adminLevel}
		}
		var refused []string
		p := trustPolicy(c.global, c.plainRooms, skills, &refused)
		ok, answer := p.Trust(context.Background(), c.skill, c.evt)
		if ok != c.want {
			t.Errorf("case %d (%+v, state %v): ok %v, want %v", i, c, c.evt.Mautrix.TrustState, ok, c.want)
			continue
		}
		if ok {
			if answer != "" || len(refused) != 0 {
				t.Errorf("case %d: obeyed, yet answer %q and refusals %v", i, answer, refused)
			}
			continue
		}
		if len(refused) != 1 || refused[0] != c.reason {
			t.Errorf("case %d: refusals %v, want [%s]", i, refused, c.reason)
		}
		if answer == "" {
			t.Errorf("case %d: a first refusal must be explained", i)
		}
	}
}

func TestTrustAnswersOncePerDeviceAndHour(t *testing.T) {
	var refused []string
	p := trustPolicy("cross-signed", "refuse", nil, &refused)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return now }
	ctx := context.Background()
	unsigned := encrypted("@a:x", "NEWDEVICE", id.TrustStateUnset)
	ok, answer := p.Trust(ctx, "ping", unsigned)
	if ok || !strings.Contains(answer, "verify this session from another one") || !strings.Contains(answer, "NEWDEVICE") {
		t.Fatalf("first refusal: %v %q", ok, answer)
	}
	now = now.Add(59 * time.Minute)
	if ok, answer := p.Trust(ctx, "deploy", unsigned); ok || answer != "" {
		t.Fatalf("second refusal within the hour: %v %q, want refused in silence", ok, answer)
	}
	// Another device of the same person, and another person, get their own.
	if _, answer := p.Trust(ctx, "ping", encrypted("@a:x", "OTHER", id.TrustStateUnset)); answer == "" {
		t.Fatal("another device was not told")
	}
	if _, answer := p.Trust(ctx, "ping", encrypted("@b:x", "NEWDEVICE", id.TrustStateUnset)); answer == "" {
		t.Fatal("another person was not told")
	}
	now = now.Add(time.Minute)
	if _, answer := p.Trust(ctx, "ping", unsigned); answer == "" {
		t.Fatal("not told again after an hour")
	}
	if len(refused) != 5 {
		t.Fatalf("every refusal counts: %v", refused)
	}
	// The memory outlives a reload: a new policy sharing it stays quiet.
	shared := skills.NewSeen()
	for i := 0; i < 2; i++ {
		q := New(Options{Permissions: config.Permissions{RateLimit: config.RateLimit{UserPerMinute: intp(0), RoomPerMinute: intp(0)}},
			Trust: &TrustOptions{Encryption: config.Encryption{CommandTrust: "verified", CommandTrustPlainRooms: "refuse"}, Log: zerolog.Nop(), Answered: shared}})
		_, answer := q.Trust(ctx, "ping", encrypted("@c:x", "D", id.TrustStateCrossSignedTOFU))
		if (i == 0) != (answer != "") {
			t.Fatalf("policy %d: answer %q", i, answer)
		}
		if i == 0 && !strings.Contains(answer, "verify me") {
			t.Fatalf("not-verified answer: %q", answer)
		}
	}
}
