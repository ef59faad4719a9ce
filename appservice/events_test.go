package appservice

import (
	"testing"

	"opsbot/skills"
)

// Every event type opsbot acts on itself is described in docs/events.md.
func TestHandledEventTypesAreDocumented(t *testing.T) {
	for typ := range opsbotHandles {
		info, ok := skills.Catalog(typ.Type)
		if !ok {
			t.Errorf("opsbot handles %s, but docs/events.md (skills.Events) does not describe it", typ.Type)
			continue
		}
		if info.Opsbot == "none" {
			t.Errorf("%s: the catalog says opsbot does nothing with it, but the service handles it", typ.Type)
		}
	}
}
