package policy

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/config"
)

func intp(n int) *int { return &n }

func TestAllow(t *testing.T) {
	p := New(Options{Permissions: config.Permissions{
		RateLimit: config.RateLimit{UserPerMinute: intp(0), RoomPerMinute: intp(0)},
		Skills: map[string]config.SkillPolicy{
			"deploy": {AllowServers: []string{"corp.example"}, DenyUsers: []string{"@intern:corp.example"}, MinPowerLevel: 50},
			"echo":   {DenyRooms: []string{"!quiet:x"}},
		},
	}, PowerLevel: func(ctx context.Context, room id.RoomID, user id.UserID) (int, error) {
		if user == "@boss:corp.example" {
			return 100, nil
		}
		return 0, nil
	}})
	ctx := context.Background()
	cases := []struct {
		skill  string
		room   id.RoomID
		sender id.UserID
		want   bool
	}{
		{"deploy", "!r:x", "@boss:corp.example", true},
		{"deploy", "!r:x", "@dev:corp.example", false},       // power level 0 < 50
		{"deploy", "!r:x", "@intern:corp.example", false},    // denied
		{"deploy", "!r:x", "@boss:elsewhere.example", false}, // wrong server
		{"echo", "!quiet:x", "@anyone:x", false},
		{"echo", "!loud:x", "@anyone:x", true},
		{"ping", "!quiet:x", "@anyone:x", true}, // no policy
	}
	for _, c := range cases {
		if got := p.Allow(ctx, c.skill, c.room, c.sender); got != c.want {
			t.Errorf("%s by %s in %s: %v, want %v", c.skill, c.sender, c.room, got, c.want)
		}
	}
}

func TestLimit(t *testing.T) {
	p := New(Options{Permissions: config.Permissions{RateLimit: config.RateLimit{UserPerMinute: intp(3), RoomPerMinute: intp(5)}}})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return now }
	var results []string
	for i := 0; i < 5; i++ {
		ok, warn := p.Limit("!r:x", "@a:x")
		results = append(results, map[[2]bool]string{{true, false}: "ok", {false, true}: "warn", {false, false}: "quiet"}[[2]bool{ok, warn}])
	}
	if got := results; got[0] != "ok" || got[2] != "ok" || got[3] != "warn" || got[4] != "quiet" {
		t.Fatalf("user limit: %v", got)
	}
	// Another user in the room still has room budget left... until the room limit.
	if ok, _ := p.Limit("!r:x", "@b:x"); ok {
		t.Fatal("room limit of 5 exceeded by the 6th answer")
	}
	now = now.Add(time.Minute)
	if ok, _ := p.Limit("!r:x", "@a:x"); !ok {
		t.Fatal("limit did not reset after a minute")
	}
}
