// Command opsbot-appservice runs opsbot, a Matrix application service that
// hosts chat-bot skills, with the skills that ship with it.
//
//	opsbot-appservice [-c opsbot.yaml]                       run
//	opsbot-appservice generate-config                        print an example config
//	opsbot-appservice [-c opsbot.yaml] generate-registration print the homeserver registration
//	opsbot-appservice [-c opsbot.yaml] check                 check config, database, homeserver
//	opsbot-appservice [-c opsbot.yaml] recovery-key ...      show, restore or reset bots' recovery keys
//	opsbot-appservice [-c opsbot.yaml] verification ...      list, confirm or cancel pending verifications
//	opsbot-appservice version                                print the version
package main

import (
	"github.com/opsbot/opsbot/appservice/cli"
	"github.com/opsbot/opsbot/skills/builtin"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "dev"

func main() {
	cli.Main(cli.Options{Version: Version, Skills: builtin.Skills})
}
