// Package admin has the commands for opsbot's admins (permissions.admins):
// "!status" reports the version, uptime, leadership, inbox backlog,
// encryption and each bot's rooms; "!reload" re-reads the config file's
// skill settings (as SIGHUP does). Everyone else gets a polite refusal.
package admin

import (
	"context"
	"errors"

	"github.com/opsbot/opsbot/skills"
)

// Skill is the admin skill. It acts on the opsbot that runs it through
// skills.Host (Router.Host): the admins, the status report, the reload.
type Skill struct {
	host skills.Host
}

// New returns the admin skill.
func New() *Skill { return &Skill{} }

// Name is the skill's config name.
func (*Skill) Name() string { return "admin" }

// Setup registers !status for the admins only.
func (s *Skill) Setup(r *skills.Router, cfg skills.Config) error {
	var settings struct{}
	if err := cfg.Decode(&settings); err != nil {
		return err
	}
	s.host = r.Host()
	if s.host == nil {
		return errors.New("the admin skill needs the opsbot it runs in (skills.Options.Host)")
	}
	admins := s.host.Admins()
	if len(admins) == 0 {
		return errors.New("permissions.admins: empty, but the admin skill runs (nobody could use it)")
	}
	r.Command("status", s.report, skills.Help("how opsbot is doing (admins only)"), skills.FromUsers(admins...))
	r.Command("reload", s.doReload, skills.Help("reload the skill configuration from the config file (admins only)"), skills.FromUsers(admins...))
	return nil
}

func (s *Skill) doReload(ctx context.Context, ev *skills.Event) error {
	summary, err := s.host.Reload(ctx)
	if err != nil {
		_, sendErr := ev.Reply(ctx, "Reload failed: "+err.Error())
		return sendErr
	}
	_, err = ev.Reply(ctx, summary)
	return err
}

func (s *Skill) report(ctx context.Context, ev *skills.Event) error {
	_, err := ev.Reply(ctx, s.host.Status(ctx))
	return err
}
