// Package notes is a room's notebook: "!note add <text>" keeps a line,
// "!note list" shows them, "!note forget <n>" and "!note clear" remove
// them. The notes live in the skill's memory for the room, so they follow
// the room through upgrades, and, with the memory kept in room state
// (memory.in_room_state), survive losing opsbot's database.
package notes

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/opsbot/opsbot/skills"
)

// Settings is the skills.notes config section.
type Settings struct {
	// MaxNotes caps the notes kept per room.
	MaxNotes int `yaml:"max_notes"`
	// MaxLength caps one note, in characters.
	MaxLength int `yaml:"max_length"`
}

// Skill keeps notes per room.
type Skill struct{ settings Settings }

const memoryKey = "notes"

// New returns the notes skill.
func New() skills.Skill { return &Skill{} }

// Name is the skill's config name.
func (*Skill) Name() string { return "notes" }

// Setup reads skills.notes and registers the commands.
func (s *Skill) Setup(r *skills.Router, cfg skills.Config) error {
	s.settings = Settings{MaxNotes: 50, MaxLength: 500}
	if err := cfg.Decode(&s.settings); err != nil {
		return err
	}
	if s.settings.MaxNotes < 1 {
		return cfg.Errorf("max_notes", "must be at least 1")
	}
	if s.settings.MaxLength < 1 {
		return cfg.Errorf("max_length", "must be at least 1")
	}
	r.Command("note add {text...}", s.add, skills.Help("keep a note for this room"), skills.ArgHelp("text", "what to note"))
	r.Command("note list", s.list, skills.Help("show this room's notes"))
	r.Command("note forget {n:integer}", s.forget, skills.Help("remove note number n"), skills.ArgHelp("n", "the note's number in !note list"))
	r.Command("note clear", s.clear, skills.Help("remove all of this room's notes"))
	return nil
}

func (s *Skill) load(ctx context.Context, ev *skills.Event) ([]string, error) {
	var notes []string
	_, err := ev.Memory.Get(ctx, memoryKey, &notes)
	return notes, err
}

func (s *Skill) add(ctx context.Context, ev *skills.Event) error {
	text := ev.Arg("text")
	if utf8.RuneCountInString(text) > s.settings.MaxLength {
		_, err := ev.Reply(ctx, fmt.Sprintf("A note can be at most %d characters.", s.settings.MaxLength))
		return err
	}
	notes, err := s.load(ctx, ev)
	if err != nil {
		return err
	}
	if len(notes) >= s.settings.MaxNotes {
		_, err := ev.Reply(ctx, fmt.Sprintf("This room already has %d notes; forget some first.", len(notes)))
		return err
	}
	notes = append(notes, text)
	if err := ev.Memory.Put(ctx, memoryKey, notes); err != nil {
		return err
	}
	_, err = ev.Reply(ctx, fmt.Sprintf("Noted (%d).", len(notes)))
	return err
}

func (s *Skill) list(ctx context.Context, ev *skills.Event) error {
	notes, err := s.load(ctx, ev)
	if err != nil {
		return err
	}
	if len(notes) == 0 {
		_, err := ev.Reply(ctx, "No notes in this room.")
		return err
	}
	var b strings.Builder
	for i, n := range notes {
		fmt.Fprintf(&b, "%d. %s\n", i+1, n)
	}
	_, err = ev.Reply(ctx, strings.TrimRight(b.String(), "\n"))
	return err
}

func (s *Skill) forget(ctx context.Context, ev *skills.Event) error {
	notes, err := s.load(ctx, ev)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(ev.Arg("n"))
	if err != nil || n < 1 || n > len(notes) {
		_, err := ev.Reply(ctx, fmt.Sprintf("There is no note %q; !note list shows their numbers.", ev.Arg("n")))
		return err
	}
	notes = append(notes[:n-1], notes[n:]...)
	if err := ev.Memory.Put(ctx, memoryKey, notes); err != nil {
		return err
	}
	_, err = ev.Reply(ctx, fmt.Sprintf("Forgot note %d.", n))
	return err
}

func (s *Skill) clear(ctx context.Context, ev *skills.Event) error {
	if err := ev.Memory.Delete(ctx, memoryKey); err != nil {
		return err
	}
	_, err := ev.Reply(ctx, "Cleared this room's notes.")
	return err
}
