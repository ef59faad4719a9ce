// Command opsbot-hello is opsbot with one skill of its own: everything
// opsbot-appservice does (the same commands, flags and config), plus
// !hello. docs/skills.md, "Your own skills, your own binary", walks through
// it.
package main

import (
	"example.com/opsbot-hello/hello"

	"github.com/opsbot/opsbot/appservice/cli"
	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/builtin"
)

func main() {
	cli.Main(cli.Options{Version: "hello-1.0", Skills: func() []skills.Skill {
		return append(builtin.Skills(), hello.New())
	}})
}
