package skills_test

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"maunium.net/go/mautrix/event"

	"github.com/opsbot/opsbot/skills"
)

// docs/events.md is generated from the catalog: they must not differ.
func TestEventsDocIsGenerated(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "docs", "events.md")
	want := skills.EventsMarkdown()
	if os.Getenv("OPSBOT_UPDATE_DOCS") == "1" {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatal("docs/events.md differs from the catalog in skills/catalog.go; run OPSBOT_UPDATE_DOCS=1 go test ./skills -run EventsDoc")
	}
}

// Every catalog entry is complete and names content types mautrix parses.
func TestCatalogEntriesAreComplete(t *testing.T) {
	seen := map[string]bool{}
	for _, e := range skills.Events {
		if seen[e.Type.Type] {
			t.Errorf("%s listed twice", e.Type.Type)
		}
		seen[e.Type.Type] = true
		if e.Arrives == "" || e.Match == "" || e.Encrypted == "" || e.Opsbot == "" {
			t.Errorf("%s: incomplete entry", e.Type.Type)
		}
		if e.GoType() == "" && !e.Raw {
			t.Errorf("%s: mautrix has no content type for it", e.Type.Type)
		}
	}
	for _, must := range []event.Type{event.EventMessage, event.EventEncrypted, event.StateMember, event.StateTombstone, event.EphemeralEventTyping} {
		if _, ok := skills.Catalog(must.Type); !ok {
			t.Errorf("%s missing", must.Type)
		}
	}
}
