package appservice

import (
	"context"
	"slices"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/statememory"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/skills"
)

// memoryRouter hands each skill the memory backend the config chose for it:
// the database, or room state (memory.in_room_state).
type memoryRouter struct {
	db      *store.Store
	state   *statememory.Store
	inState []string
}

func (r *memoryRouter) Memory(skill string, room id.RoomID) skills.Memory {
	if slices.Contains(r.inState, skill) {
		return r.state.Memory(skill, room)
	}
	return r.db.Memory(skill, room)
}

// move carries every skill's memory from a room to its replacement.
func (r *memoryRouter) move(ctx context.Context, oldRoom, newRoom id.RoomID) error {
	if _, err := r.db.MoveMemory(ctx, oldRoom, newRoom); err != nil {
		return err
	}
	if len(r.inState) > 0 {
		if _, err := r.state.Move(ctx, oldRoom, newRoom); err != nil {
			return err
		}
	}
	return nil
}

// firstBotIn is a bot joined to room that can act on its state, for the
// room-state memory. It reads s.Bots, which New sets before anything runs
// (memory and bots need each other, so one side is reached through s).
func (s *Service) firstBotIn(ctx context.Context, room id.RoomID) (id.UserID, bool) {
	bots := s.Bots.RoomBots(ctx, room)
	if len(bots) == 0 {
		return "", false
	}
	return bots[0], true
}
