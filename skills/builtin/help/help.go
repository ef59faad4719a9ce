// Package help lists the commands a bot answers, generated from the skills'
// own registrations, so the list can never drift from the code.
package help

import (
	"context"
	"fmt"
	"html"
	"strings"

	"github.com/opsbot/opsbot/skills"
)

// Skill answers !help.
type Skill struct{}

// New returns the help skill.
func New() skills.Skill { return Skill{} }

// Name is the skill's config name.
func (Skill) Name() string { return "help" }

// Setup registers !help.
func (Skill) Setup(r *skills.Router, cfg skills.Config) error {
	var settings struct{}
	if err := cfg.Decode(&settings); err != nil {
		return err
	}
	r.Command("help {command?}", list, skills.Help("list the commands, or explain one"), skills.ArgHelp("command", "a command to explain, such as remind"))
	return nil
}

func list(ctx context.Context, ev *skills.Event) error {
	cmds := ev.Commands()
	if want := strings.TrimLeft(strings.ToLower(ev.Arg("command")), "!/."); want != "" {
		var found []string
		for _, c := range cmds {
			if c.Name == want {
				found = append(found, detail(c))
			}
		}
		if len(found) > 0 {
			_, err := ev.Reply(ctx, strings.Join(found, "\n"))
			return err
		}
		_, err := ev.Reply(ctx, fmt.Sprintf("There is no command %q here.", want))
		return err
	}
	var plain, rich strings.Builder
	plain.WriteString("Commands:\n")
	rich.WriteString("<p>Commands:</p><ul>")
	for _, c := range cmds {
		plain.WriteString(line(c) + "\n")
		fmt.Fprintf(&rich, "<li><code>%s</code>", html.EscapeString(c.Usage))
		if c.Help != "" {
			fmt.Fprintf(&rich, " — %s", html.EscapeString(c.Help))
		}
		rich.WriteString("</li>")
	}
	rich.WriteString("</ul>")
	_, err := ev.ReplyHTML(ctx, strings.TrimRight(plain.String(), "\n"), rich.String())
	return err
}

func line(c skills.CommandHelp) string {
	if c.Help == "" {
		return c.Usage
	}
	return c.Usage + " — " + c.Help
}

// detail is a command's line and what each described argument means.
func detail(c skills.CommandHelp) string {
	out := line(c)
	for _, a := range c.Args {
		opt := ""
		if a.Optional {
			opt = ", optional"
		}
		out += fmt.Sprintf("\n  %s (%s%s): %s", a.Name, a.Type, opt, a.Help)
	}
	return out
}
