// Package cli is opsbot's command line: run, generate-config,
// generate-registration, check, recovery-key, verification, device and
// version.
// cmd/opsbot-appservice is this package with opsbot's own skills; a binary
// with skills of its own is the same few lines (docs/skills.md, "Your own
// skills, your own binary"):
//
//	func main() {
//		cli.Main(cli.Options{Version: "1.0", Skills: func() []skills.Skill {
//			return append(builtin.Skills(), hello.New())
//		}})
//	}
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/opsbot/opsbot/appservice"
	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/skills"
)

// Options is what makes an opsbot binary: its version and its Go skills.
type Options struct {
	// Version is printed by "version" and in the log (the build's VCS
	// revision and Go version are added).
	Version string
	// Skills returns the Go skills compiled in, new instances on every call:
	// opsbot sets them up at start and again at every reload. External
	// skills (external_skills in the config) are added to them.
	Skills func() []skills.Skill
}

// Main runs the command line with os.Args and exits with its code.
func Main(opts Options) {
	os.Exit(Run(opts, os.Args[1:], os.Stdout, os.Stderr))
}

// Run runs the command line with args and returns the exit code.
func Run(opts Options, args []string, stdout, stderr io.Writer) int {
	version := versionString(opts.Version)

	fs := flag.NewFlagSet("opsbot-appservice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("c", "opsbot.yaml", "path to the config file")
	drain := fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long to let events in progress finish")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: opsbot-appservice [-c opsbot.yaml] [command]

Commands:
  (none)                 run opsbot
  generate-config [client]
                         print an example config with fresh tokens; "client"
                         for bots that are ordinary accounts (no registration)
  generate-registration  print the homeserver registration for the config
  check                  check config, database, homeserver and appservice reachability
  recovery-key show|restore|reset [@bot:server]
                         the bots' cross-signing recovery keys (docs/verification.md)
  verification list|confirm|cancel [TRANSACTION_ID]
                         emoji verifications waiting for the operator
  device new @bot:server ...
                         give the bots new devices at opsbot's next start
                         (the old ones are signed out)
  version                print the version

Secrets may come from the environment: %s

Flags:
`, strings.Join(config.EnvNames(), ", "))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cmd := fs.Arg(0)
	takesArgs := cmd == "recovery-key" || cmd == "verification" || cmd == "generate-config" || cmd == "device"
	if fs.NArg() > 1 && !takesArgs {
		fmt.Fprintf(stderr, "unexpected arguments after %q: %s (flags go before the command)\n", cmd, strings.Join(fs.Args()[1:], " "))
		return 2
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, version)
		return 0
	case "generate-config":
		switch mode := fs.Arg(1); {
		case fs.NArg() > 2:
			fmt.Fprintf(stderr, "generate-config takes one argument, appservice or client\n")
			return 2
		case mode == "" || mode == "appservice":
			fmt.Fprint(stdout, config.Example())
		case mode == "client":
			fmt.Fprint(stdout, config.ExampleClient())
		default:
			fmt.Fprintf(stderr, "generate-config %q: say appservice (the default) or client\n", mode)
			return 2
		}
		return 0
	case "", "generate-registration", "check", "recovery-key", "verification", "device":
	default:
		fmt.Fprintf(stderr, "unknown command %q\n", cmd)
		fs.Usage()
		return 2
	}

	cfg, err := config.Load(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "opsbot: invalid config:\n%v\n", err)
		if os.IsNotExist(err) || strings.Contains(err.Error(), "no such file") {
			fmt.Fprintf(stderr, "Create one with: opsbot-appservice generate-config > %s\n", *configPath)
		}
		return 1
	}
	switch cmd {
	case "generate-registration":
		if !cfg.HasAppServiceBots() {
			fmt.Fprintln(stderr, "opsbot: every bot in the config is an ordinary account (client mode): there is no registration to install")
			return 1
		}
		text, err := cfg.RegistrationYAML()
		if err != nil {
			fmt.Fprintf(stderr, "opsbot: %v\n", err)
			return 1
		}
		fmt.Fprint(stdout, text)
		return 0
	case "check":
		ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer cancel()
		if err := appservice.Check(ctx, cfg, *configPath, stdout); err != nil {
			return 1
		}
		return 0
	case "recovery-key":
		return recoveryKeyCommand(context.Background(), cfg, fs.Args()[1:], os.Stdin, stdout, stderr)
	case "verification":
		return verificationCommand(context.Background(), cfg, fs.Args()[1:], stdout, stderr)
	case "device":
		return deviceCommand(context.Background(), cfg, fs.Args()[1:], stdout, stderr)
	}

	log := newLogger(cfg.Logging, stderr)
	log.Info().Str("version", version).Str("config", *configPath).Msg("Starting opsbot")
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	// Without homeserver.address, find it through .well-known first: New
	// builds every client with it.
	if err := appservice.DiscoverHomeserver(ctx, cfg, log); err != nil {
		log.Info().Err(err).Msg("Stopped before the homeserver was found")
		return 0
	}
	svc, err := appservice.New(cfg, log, opts.Skills, version)
	if err != nil {
		fmt.Fprintf(stderr, "opsbot: cannot start:\n%v\n", err)
		return 1
	}
	svc.ConfigPath = *configPath
	// SIGHUP reloads the skill configuration without dropping transactions.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			if summary, err := svc.Reload(ctx); err != nil {
				log.Error().Err(err).Msg("Reload on SIGHUP failed")
			} else {
				log.Info().Str("result", summary).Msg("Reloaded on SIGHUP")
			}
		}
	}()
	if err := svc.Run(ctx, *drain); err != nil {
		log.Error().Err(err).Msg("opsbot stopped with an error")
		return 1
	}
	return 0
}

// logTimeFormat is RFC 3339 in UTC with milliseconds: a second is too
// coarse to follow one event from intake to its reply.
const logTimeFormat = "2006-01-02T15:04:05.000Z07:00"

func newLogger(cfg config.Logging, w io.Writer) zerolog.Logger {
	zerolog.TimeFieldFormat = logTimeFormat
	zerolog.TimestampFunc = func() time.Time { return time.Now().UTC() }
	level, err := zerolog.ParseLevel(cfg.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	if cfg.Format == "pretty" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: logTimeFormat}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
}

func versionString(version string) string {
	v := version
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
		v += " " + info.GoVersion
	}
	return "opsbot-appservice " + v
}
