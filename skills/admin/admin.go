// Package admin has the commands for opsbot's admins (permissions.admins):
// "!status" reports the version, uptime, leadership, inbox backlog,
// encryption and each bot's rooms; "!reload" re-reads the config file's
// skill settings (as SIGHUP does). Everyone else gets a polite refusal.
package admin

import (
	"context"

	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/skills"
)

// StatusFunc produces the status report.
type StatusFunc func(ctx context.Context) string

// ReloadFunc reloads the skill configuration and says what happened.
type ReloadFunc func(ctx context.Context) (string, error)

// Skill is the admin skill.
type Skill struct {
	admins []id.UserID
	status StatusFunc
	reload ReloadFunc
}

// SetReload sets what !reload does.
func (s *Skill) SetReload(f ReloadFunc) { s.reload = f }

// New returns the admin skill for the given admins; status is called for
// each !status (it may be set later with SetStatus).
func New(admins []string, status StatusFunc) *Skill {
	s := &Skill{status: status}
	for _, a := range admins {
		s.admins = append(s.admins, id.UserID(a))
	}
	return s
}

// SetStatus sets the status report, for when it is built after the skill.
func (s *Skill) SetStatus(f StatusFunc) { s.status = f }

// Name is the skill's config name.
func (*Skill) Name() string { return "admin" }

// Setup registers !status for the admins only.
func (s *Skill) Setup(r *skills.Router, cfg skills.Config) error {
	var settings struct{}
	if err := cfg.Decode(&settings); err != nil {
		return err
	}
	if len(s.admins) == 0 {
		return cfg.Errorf("admins", "the admin skill needs permissions.admins (nobody could use it)")
	}
	r.Command("status", s.report, skills.Help("how opsbot is doing (admins only)"), skills.FromUsers(s.admins...))
	r.Command("reload", s.doReload, skills.Help("reload the skill configuration from the config file (admins only)"), skills.FromUsers(s.admins...))
	return nil
}

func (s *Skill) doReload(ctx context.Context, ev *skills.Event) error {
	if s.reload == nil {
		_, err := ev.Reply(ctx, "Reloading is not available in this process.")
		return err
	}
	summary, err := s.reload(ctx)
	if err != nil {
		_, sendErr := ev.Reply(ctx, "Reload failed: "+err.Error())
		return sendErr
	}
	_, err = ev.Reply(ctx, summary)
	return err
}

func (s *Skill) report(ctx context.Context, ev *skills.Event) error {
	text := "no status available"
	if s.status != nil {
		text = s.status(ctx)
	}
	_, err := ev.Reply(ctx, text)
	return err
}
