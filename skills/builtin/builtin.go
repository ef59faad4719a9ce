// Package builtin lists the skills that ship with opsbot, one package each
// under this folder.
package builtin

import (
	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin/admin"
	"github.com/opsbot/opsbot/skills/builtin/alertmanager"
	"github.com/opsbot/opsbot/skills/builtin/echo"
	"github.com/opsbot/opsbot/skills/builtin/files"
	"github.com/opsbot/opsbot/skills/builtin/help"
	"github.com/opsbot/opsbot/skills/builtin/notes"
	"github.com/opsbot/opsbot/skills/builtin/ping"
	"github.com/opsbot/opsbot/skills/builtin/remind"
	"github.com/opsbot/opsbot/skills/builtin/tour"
	"github.com/opsbot/opsbot/skills/builtin/webhook"
)

// Skills returns new instances of the built-in skills.
func Skills() []skills.Skill {
	return []skills.Skill{ping.New(), help.New(), echo.New(), files.New(), notes.New(), tour.New(),
		remind.New(), alertmanager.New(), webhook.New(), admin.New()}
}
