package describe

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/event/cmdschema"
	"maunium.net/go/mautrix/id"
)

type memStore struct {
	mu   sync.Mutex
	rows map[string]string
}

func (m *memStore) PublishedDescriptions(_ context.Context, room id.RoomID, bot id.UserID) (map[string]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for k, v := range m.rows {
		out[k] = v
	}
	return out, nil
}

func (m *memStore) SetPublishedDescription(_ context.Context, room id.RoomID, bot id.UserID, key, digest string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if digest == "" {
		delete(m.rows, key)
	} else {
		m.rows[key] = digest
	}
	return nil
}

const bot = id.UserID("@bot:x")

func TestPublisher(t *testing.T) {
	var mu sync.Mutex
	commands := []string{"ping", "echo"}
	var sent []string // "command" or "-" for an emptied one
	may, forbid := true, false
	st := &memStore{rows: map[string]string{}}
	p := New(Options{
		Store: st,
		Descriptions: func(id.UserID) []*cmdschema.EventContent {
			mu.Lock()
			defer mu.Unlock()
			var out []*cmdschema.EventContent
			for _, c := range commands {
				out = append(out, &cmdschema.EventContent{Command: c})
			}
			return out
		},
		SendState: func(_ context.Context, _ id.UserID, _ id.RoomID, t event.Type, key string, content any) (id.EventID, error) {
			mu.Lock()
			defer mu.Unlock()
			if forbid {
				return "", mautrix.MForbidden
			}
			data, _ := json.Marshal(content)
			var c struct{ Command string }
			_ = json.Unmarshal(data, &c)
			if c.Command == "" {
				c.Command = "-"
			}
			sent = append(sent, c.Command)
			return "$s", nil
		},
		JoinedRooms: func(context.Context, id.UserID) ([]id.RoomID, error) { return []id.RoomID{"!a:x"}, nil },
		MayPublish: func(context.Context, id.RoomID, id.UserID) bool {
			mu.Lock()
			defer mu.Unlock()
			return may
		},
		Log: zerolog.Nop(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	snapshot := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), sent...)
	}
	// waitSent waits (at most 5 s) until n descriptions went out.
	waitSent := func(n int) []string {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); len(snapshot()) < n && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		return snapshot()
	}
	// quiet gives the publisher 300 ms to send something it should not.
	quiet := func() []string {
		time.Sleep(300 * time.Millisecond)
		return snapshot()
	}
	p.RequestAll([]id.UserID{bot})
	if got := waitSent(2); len(got) != 2 || len(quiet()) != 2 {
		t.Fatalf("first pass sent %v", got)
	}
	// Nothing changed: nothing sent.
	p.Request("!a:x", bot)
	if got := quiet(); len(got) != 2 {
		t.Fatalf("unchanged descriptions sent again: %v", got)
	}
	// A command is gone: its description is emptied, the other left alone.
	mu.Lock()
	commands = []string{"ping"}
	mu.Unlock()
	p.Request("!a:x", bot)
	if got := waitSent(3); len(got) != 3 || got[2] != "-" {
		t.Fatalf("after a command went: %v", got)
	}
	// The power levels say no: no request at all, counted once.
	mu.Lock()
	may, commands = false, []string{"ping", "new"}
	mu.Unlock()
	p.Request("!a:x", bot)
	p.Request("!b:x", bot)
	if got := quiet(); len(got) != 3 {
		t.Fatalf("sent without the power: %v", got)
	}
	if n := p.Forbidden(bot); n != 2 {
		t.Fatalf("forbidden in %d rooms, want 2", n)
	}
	// The homeserver refuses where the state store thought it could.
	mu.Lock()
	may, forbid = true, true
	mu.Unlock()
	p.Request("!a:x", bot)
	quiet()
	if n := p.Forbidden(bot); n != 2 {
		t.Fatalf("forbidden in %d rooms after a refusal, want 2", n)
	}
	// Allowed again: published, and no longer counted.
	mu.Lock()
	forbid = false
	mu.Unlock()
	p.Request("!a:x", bot)
	if got := waitSent(4); len(got) != 4 || got[3] != "new" {
		t.Fatalf("after the power came: %v", got)
	}
	if n := p.Forbidden(bot); n != 1 {
		t.Fatalf("forbidden in %d rooms, want 1 (!b:x)", n)
	}
}
