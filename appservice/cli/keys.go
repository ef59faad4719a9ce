package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice"
	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/identity"
	"github.com/opsbot/opsbot/appservice/store"
	"github.com/opsbot/opsbot/appservice/verification"
)

// The operator's commands for the bots' trust: recovery keys, pending
// verifications and new devices. They work on the database directly, so
// they run on the opsbot host (or in its pod) whether opsbot runs or not;
// the running opsbot picks the changes up (a restored or reset key and a
// new device at its next start, a verification decision within a second).

const recoveryKeyUsage = `Usage:
  opsbot-appservice [-c opsbot.yaml] recovery-key show [@bot:server ...]
  opsbot-appservice [-c opsbot.yaml] recovery-key restore @bot:server   (reads the key on stdin)
  opsbot-appservice [-c opsbot.yaml] recovery-key reset @bot:server
`

const verificationUsage = `Usage:
  opsbot-appservice [-c opsbot.yaml] verification list
  opsbot-appservice [-c opsbot.yaml] verification confirm TRANSACTION_ID
  opsbot-appservice [-c opsbot.yaml] verification cancel TRANSACTION_ID
`

const deviceUsage = `Usage:
  opsbot-appservice [-c opsbot.yaml] device new @bot:server [@bot:server ...]
`

// deviceCommand runs `device`.
func deviceCommand(ctx context.Context, cfg *config.Config, args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 || args[0] != "new" {
		fmt.Fprint(stderr, deviceUsage)
		return 2
	}
	var bots []id.UserID
	for _, b := range args[1:] {
		if !slices.Contains(cfg.BotIDs(), b) {
			fmt.Fprintf(stderr, "opsbot: %s is not a configured bot (configured: %s)\n", b, strings.Join(cfg.BotIDs(), ", "))
			return 2
		}
		bots = append(bots, id.UserID(b))
	}
	if err := appservice.RequestNewDevices(ctx, cfg, bots, stdout); err != nil {
		fmt.Fprintf(stderr, "opsbot: %v\n", err)
		return 1
	}
	return 0
}

// recoveryKeyCommand runs `recovery-key`.
func recoveryKeyCommand(ctx context.Context, cfg *config.Config, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, recoveryKeyUsage)
		return 2
	}
	if !cfg.Encryption.Enabled || !*cfg.Encryption.CrossSigning {
		fmt.Fprintln(stderr, "opsbot: recovery keys need encryption.enabled and encryption.cross_signing")
		return 1
	}
	sub, bots := args[0], args[1:]
	for _, b := range bots {
		if !slices.Contains(cfg.BotIDs(), b) {
			fmt.Fprintf(stderr, "opsbot: %s is not a configured bot (configured: %s)\n", b, strings.Join(cfg.BotIDs(), ", "))
			return 2
		}
	}
	switch sub {
	case "show":
		if len(bots) == 0 {
			bots = cfg.BotIDs()
		}
	case "restore", "reset":
		if len(bots) != 1 {
			fmt.Fprintf(stderr, "opsbot: recovery-key %s takes exactly one bot\n%s", sub, recoveryKeyUsage)
			return 2
		}
	default:
		fmt.Fprintf(stderr, "opsbot: unknown recovery-key command %q\n%s", sub, recoveryKeyUsage)
		return 2
	}
	st := openStore(cfg, stderr)
	if st == nil {
		return 1
	}
	defer st.Close()
	for _, b := range bots {
		secrets, err := identity.Secrets(ctx, st.DB, []byte(cfg.Encryption.PickleKey), id.UserID(b))
		if err != nil {
			fmt.Fprintf(stderr, "opsbot: %v\n", err)
			return 1
		}
		switch sub {
		case "show":
			key, err := secrets.GetSecret(ctx, identity.SecretRecoveryKey)
			if err != nil {
				fmt.Fprintf(stderr, "opsbot: reading the recovery key of %s (is the pickle key right?): %v\n", b, err)
				return 1
			}
			if key == "" {
				key = "(none yet: opsbot creates it at the bot's first start with cross-signing on)"
			}
			fmt.Fprintf(stdout, "%s\t%s\n", b, key)
		case "restore":
			line, err := bufio.NewReader(stdin).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				fmt.Fprintf(stderr, "opsbot: reading the recovery key from stdin: %v\n", err)
				return 1
			}
			if err := identity.RestoreRecoveryKey(ctx, secrets, line); err != nil {
				fmt.Fprintf(stderr, "opsbot: %s: %v\n", b, err)
				return 1
			}
			fmt.Fprintf(stdout, "Stored the recovery key of %s. At its next start opsbot signs the bot's device with the restored keys and restores its room keys from the backup.\n", b)
		case "reset":
			if err := identity.RequestReset(ctx, secrets); err != nil {
				fmt.Fprintf(stderr, "opsbot: %s: %v\n", b, err)
				return 1
			}
			fmt.Fprintf(stdout, "At its next start opsbot gives %s new cross-signing keys and a new recovery key (recovery-key show). Everyone who verified the bot must verify it again.\n", b)
		}
	}
	return 0
}

// verificationCommand runs `verification`.
func verificationCommand(ctx context.Context, cfg *config.Config, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] == "list") != (len(args) == 1) || len(args) > 2 {
		fmt.Fprint(stderr, verificationUsage)
		return 2
	}
	st := openStore(cfg, stderr)
	if st == nil {
		return 1
	}
	defer st.Close()
	pending := verification.NewStore(st.DB)
	if err := pending.Init(ctx); err != nil {
		fmt.Fprintf(stderr, "opsbot: %v\n", err)
		return 1
	}
	switch args[0] {
	case "list":
		list, err := pending.List(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "opsbot: %v\n", err)
			return 1
		}
		if len(list) == 0 {
			fmt.Fprintln(stdout, "No verification waits for a decision.")
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TRANSACTION\tBOT\tUSER\tDEVICE\tEXPIRES IN\tSTATE\tSHORT AUTHENTICATION STRING")
		for _, p := range list {
			state := "waits for you"
			if p.Decision != verification.DecisionNone {
				state = p.Decision
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.TransactionID, p.Bot, p.User, p.Device,
				time.Until(p.Expires).Round(time.Second), state, p.SAS())
		}
		_ = tw.Flush()
		fmt.Fprintln(stdout, "\nCompare with the emoji or numbers on the person's screen (ask them over a channel you trust), then confirm or cancel.")
	case "confirm", "cancel":
		decision := verification.DecisionConfirm
		if args[0] == "cancel" {
			decision = verification.DecisionCancel
		}
		if err := pending.Decide(ctx, id.VerificationTransactionID(args[1]), decision); err != nil {
			fmt.Fprintf(stderr, "opsbot: %v (see `verification list`)\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "Recorded: %s %s. opsbot acts on it within a second.\n", args[0], args[1])
	default:
		fmt.Fprint(stderr, verificationUsage)
		return 2
	}
	return 0
}

// openStore opens opsbot's database for a command, or says why not.
func openStore(cfg *config.Config, stderr io.Writer) *store.Store {
	st, err := store.Open(cfg.Database, zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "opsbot: %v\n", err)
		return nil
	}
	return st
}
