package stages

import (
	"testing"

	"opsbot/skills"
)

// allStages is one of each stage, as appservice.Service lines them up.
var allStages = []Stage{&State{}, &Membership{}, &Crypto{}, &Verification{}, &Skills{}}

// Every event type a stage acts on itself is described in docs/events.md
// (generated from skills.Events) as something opsbot handles.
func TestHandledEventTypesAreDocumented(t *testing.T) {
	for _, s := range allStages {
		for _, typ := range s.Handles() {
			info, ok := skills.Catalog(typ.Type)
			if !ok {
				t.Errorf("stage %s handles %s, but docs/events.md (skills.Events) does not describe it", s.Name(), typ.Type)
				continue
			}
			if info.Opsbot == "none" {
				t.Errorf("%s: the catalog says opsbot does nothing with it, but stage %s handles it", typ.Type, s.Name())
			}
		}
	}
}
