package appservice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/opsbot/opsbot/appservice/accounts"
	"github.com/opsbot/opsbot/appservice/config"
	"github.com/opsbot/opsbot/appservice/discovery"
	"github.com/opsbot/opsbot/appservice/e2ee"
	"github.com/opsbot/opsbot/appservice/intake"
	"github.com/opsbot/opsbot/appservice/store"
)

// CheckResult is one line of `opsbot-appservice check`.
type CheckResult struct {
	Name   string
	Status string // ok, FAIL, skip
	Detail string
}

// Check verifies, line by line, that the config is valid, the database is
// reachable and migrated, the homeserver is reachable and knows our
// as_token, and that the homeserver can reach the appservice (ping, where
// the homeserver supports it). It writes each line as soon as it is known
// and returns an error if any check failed.
func Check(ctx context.Context, cfg *config.Config, path string, out io.Writer) error {
	failed := false
	report := func(r CheckResult) {
		if r.Status == "FAIL" {
			failed = true
		}
		fmt.Fprintf(out, "%-11s %-4s %s\n", r.Name, r.Status, r.Detail)
	}
	report(CheckResult{"config", "ok", fmt.Sprintf("%s: %d bot(s), database %s", path, len(cfg.Bots), cfg.Database.Type)})
	report(checkDatabase(ctx, cfg))
	client, hsResult := checkHomeserver(ctx, cfg)
	report(hsResult)
	for _, b := range cfg.Bots {
		report(checkBot(ctx, client, cfg, b))
	}
	if !cfg.HasAppServiceBots() {
		const why = "no appservice bots (client mode only)"
		report(CheckResult{"as_token", "skip", why})
		report(CheckResult{"appservice", "skip", why})
		report(CheckResult{"encryption", "skip", why + ": each bot receives its keys in its own /sync"})
	} else if client == nil {
		report(CheckResult{"as_token", "skip", "homeserver not reachable"})
		report(CheckResult{"appservice", "skip", "homeserver not reachable"})
	} else {
		seen := listenWhileChecking(cfg)
		defer seen.close()
		report(checkASToken(ctx, client, cfg))
		report(checkPing(ctx, client, cfg))
		report(checkKeyDelivery(ctx, client, cfg, seen))
	}
	if failed {
		return errors.New("some checks failed")
	}
	return nil
}

func checkDatabase(ctx context.Context, cfg *config.Config) CheckResult {
	st, err := store.Open(cfg.Database, zerolog.Nop())
	if err != nil {
		return CheckResult{"database", "FAIL", err.Error()}
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := st.Ping(ctx); err != nil {
		return CheckResult{"database", "FAIL", fmt.Sprintf("%s: %v", cfg.Database.Type, err)}
	}
	current, latest, err := st.Version(ctx)
	if err != nil {
		return CheckResult{"database", "FAIL", fmt.Sprintf("reading schema version: %v", err)}
	}
	switch {
	case current == latest:
		return CheckResult{"database", "ok", fmt.Sprintf("%s reachable, schema v%d (current)", cfg.Database.Type, current)}
	case current < latest:
		return CheckResult{"database", "ok", fmt.Sprintf("%s reachable, schema v%d; opsbot migrates it to v%d on start", cfg.Database.Type, current, latest)}
	default:
		return CheckResult{"database", "FAIL", fmt.Sprintf("schema v%d is newer than this opsbot (v%d): upgrade opsbot", current, latest)}
	}
}

func checkHomeserver(ctx context.Context, cfg *config.Config) (*mautrix.Client, CheckResult) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	address, shown := cfg.Homeserver.Address, cfg.Homeserver.Address
	if address == "" {
		res, err := discovery.Resolve(ctx, &http.Client{}, cfg.Homeserver.Domain)
		if err != nil {
			return nil, CheckResult{"homeserver", "FAIL", discoveryError(cfg.Homeserver.Domain, err).Error()}
		}
		address, shown = res.BaseURL, fmt.Sprintf("%s (from %s)", res.BaseURL, res.WellKnownURL)
	}
	client, err := mautrix.NewClient(address, "", cfg.AppService.ASToken)
	if err != nil {
		return nil, CheckResult{"homeserver", "FAIL", err.Error()}
	}
	client.DefaultHTTPRetries = 0
	versions, err := client.Versions(ctx)
	if err != nil {
		return nil, CheckResult{"homeserver", "FAIL", fmt.Sprintf("%s: %v (is homeserver.address right, and the homeserver running?)", shown, err)}
	}
	return client, CheckResult{"homeserver", "ok", fmt.Sprintf("%s answers, spec versions %s", shown, strings.Join(versionStrings(versions), " "))}
}

// checkBot says how a bot runs: an appservice bot (the as_token line
// checks its registration), or a client-mode bot, whose login is checked
// without logging in.
func checkBot(ctx context.Context, hs *mautrix.Client, cfg *config.Config, b config.Bot) CheckResult {
	bot := id.NewUserID(b.Localpart, cfg.Homeserver.Domain)
	if !b.IsClient() {
		return CheckResult{"bot", "ok", fmt.Sprintf("%s: appservice bot, skills %s", bot, strings.Join(b.Skills, ", "))}
	}
	if hs == nil {
		return CheckResult{"bot", "skip", fmt.Sprintf("%s: client mode; homeserver not reachable", bot)}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var stored *store.ClientSession
	if st, err := store.Open(cfg.Database, zerolog.Nop()); err == nil {
		stored, _ = st.ClientSession(ctx, bot) // none yet, or an older schema: no stored login
		st.Close()
	}
	detail, err := accounts.Check(ctx, hs.HomeserverURL.String(), bot, b, stored, []byte(cfg.Encryption.PickleKey))
	if err != nil {
		return CheckResult{"bot", "FAIL", fmt.Sprintf("%s: client mode: %v", bot, err)}
	}
	return CheckResult{"bot", "ok", fmt.Sprintf("%s: client mode, %s; skills %s", bot, detail, strings.Join(b.Skills, ", "))}
}

func checkASToken(ctx context.Context, client *mautrix.Client, cfg *config.Config) CheckResult {
	sender := "@" + cfg.AppService.SenderLocalpart + ":" + cfg.Homeserver.Domain
	client.SetAppServiceUserID = true
	client.UserID = id.UserID(sender)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := client.Whoami(ctx)
	if err != nil {
		if errors.Is(err, mautrix.MUnknownToken) {
			return CheckResult{"as_token", "FAIL", "the homeserver does not know this as_token: install the registration (generate-registration) and restart the homeserver"}
		}
		return CheckResult{"as_token", "FAIL", fmt.Sprintf("whoami as %s: %v", sender, err)}
	}
	return CheckResult{"as_token", "ok", fmt.Sprintf("the homeserver accepts the registration; acting as %s", resp.UserID)}
}

// checkPing asks the homeserver to ping the appservice (MSC2659): opsbot,
// or the listener of listenWhileChecking, answers it.
func checkPing(ctx context.Context, client *mautrix.Client, cfg *config.Config) CheckResult {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	client.SetAppServiceUserID = false
	resp, err := client.AppservicePing(ctx, cfg.AppService.ID, "opsbot-check-"+config.RandomToken()[:8])
	if err != nil {
		var httpErr mautrix.HTTPError
		if errors.Is(err, mautrix.MUnrecognized) || (errors.As(err, &httpErr) && httpErr.IsStatus(http.StatusNotFound)) {
			return CheckResult{"appservice", "skip", fmt.Sprintf("this homeserver has no appservice ping; make sure it can reach %s", cfg.AppService.PublicURL)}
		}
		return CheckResult{"appservice", "FAIL", fmt.Sprintf("the homeserver could not reach %s: %v", cfg.AppService.PublicURL, err)}
	}
	return CheckResult{"appservice", "ok", fmt.Sprintf("the homeserver reached %s in %d ms", cfg.AppService.PublicURL, resp.DurationMS)}
}

// checkListener stands in for opsbot on appservice.listen while check runs
// and opsbot does not: it answers the ping, and reads transactions only to
// see whether they carry keys, refusing them so that the homeserver keeps
// them for opsbot.
type checkListener struct {
	srv      *http.Server
	mu       sync.Mutex
	toDevice bool
	devInfo  bool
}

func listenWhileChecking(cfg *config.Config) *checkListener {
	c := &checkListener{}
	l, err := net.Listen("tcp", cfg.AppService.Listen)
	if err != nil {
		return c // opsbot runs there: it records what transactions carry
	}
	mux := http.NewServeMux()
	intake.New(intake.Options{HSToken: cfg.AppService.HSToken, MaxBodyBytes: cfg.AppService.MaxBodyBytes, Log: zerolog.Nop(),
		IsOurUser: func(id.UserID) bool { return false },
		Refuse:    "opsbot is not running (its check command is listening); retry later",
		KeysSeen: func(toDevice, deviceInfo bool) {
			c.mu.Lock()
			c.toDevice, c.devInfo = c.toDevice || toDevice, c.devInfo || deviceInfo
			c.mu.Unlock()
		}}).Register(mux)
	c.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go c.srv.Serve(l)
	return c
}

func (c *checkListener) sawKeys() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.toDevice && c.devInfo
}

func (c *checkListener) close() {
	if c.srv != nil {
		c.srv.Close()
	}
}

// checkKeyDelivery says how the bots' devices will get their encryption
// keys, and what is wrong when one of them cannot get any: the appservice's
// sender user is a bot, the homeserver refuses it /sync (Synapse does), and
// it has never been seen pushing keys in transactions.
func checkKeyDelivery(ctx context.Context, client *mautrix.Client, cfg *config.Config, seen *checkListener) CheckResult {
	const name = "encryption"
	if !cfg.Encryption.Enabled {
		return CheckResult{name, "skip", "encryption.enabled is false"}
	}
	if cfg.Encryption.Mode != "auto" {
		return CheckResult{name, "ok", fmt.Sprintf("key delivery %s (set in encryption.mode)", cfg.Encryption.Mode)}
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	versions, err := client.Versions(ctx)
	if err != nil {
		return CheckResult{name, "FAIL", fmt.Sprintf("reading the homeserver's features: %v", err)}
	}
	if e2ee.Advertises(versions) {
		return CheckResult{name, "ok", "key delivery appservice: " + e2ee.AdvertisedWhy}
	}
	seenBefore := func() time.Time {
		st, err := store.Open(cfg.Database, zerolog.Nop())
		if err != nil {
			return time.Time{}
		}
		defer st.Close()
		since, _ := e2ee.SeenBefore(ctx, st)
		return since
	}
	if since := seenBefore(); !since.IsZero() {
		return CheckResult{name, "ok", "key delivery appservice: " + e2ee.SeenBeforeWhy(since)}
	}
	sender := id.NewUserID(cfg.AppService.SenderLocalpart, cfg.Homeserver.Domain)
	// Ask the homeserver the way opsbot does at start: a to-device event
	// to a device of the sender, which comes back in a transaction if it
	// pushes keys (seen by opsbot if it runs, else by our listener).
	probeErr := probeKeyDelivery(ctx, client, cfg, sender)
	deadline := time.Now().Add(2 * e2ee.ProbeTimeout)
	for probeErr == nil && time.Now().Before(deadline) {
		if seen.sawKeys() || !seenBefore().IsZero() {
			return CheckResult{name, "ok", "key delivery appservice: the homeserver pushes to-device events, device lists and one-time-key counts in transactions (MSC2409, MSC3202), though it does not advertise them"}
		}
		time.Sleep(100 * time.Millisecond)
	}
	client.SetAppServiceUserID = true
	client.UserID = sender
	_, err = client.FullSyncRequest(ctx, mautrix.ReqSync{FilterID: `{"room":{"rooms":[]},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}`})
	var httpErr mautrix.HTTPError
	if errors.As(err, &httpErr) && httpErr.IsStatus(http.StatusInternalServerError) && slices.Contains(cfg.BotIDs(), sender.String()) {
		return CheckResult{name, "FAIL", e2ee.SenderSyncRefused(sender)}
	}
	why := "the homeserver does not push keys in transactions, so each bot device runs its own /sync"
	if probeErr != nil {
		why = fmt.Sprintf("could not ask the homeserver whether it pushes keys in transactions (%v); opsbot asks again at start, else each bot device runs its own /sync", probeErr)
	}
	return CheckResult{name, "ok", "key delivery sync: " + why}
}

// probeKeyDelivery sends a to-device event to a throwaway device of the
// sender, then removes the device: appservice login, or with
// encryption.msc4190 the appservice device API.
func probeKeyDelivery(ctx context.Context, client *mautrix.Client, cfg *config.Config, sender id.UserID) error {
	dev := id.DeviceID("OPSBOTCHECK" + strings.ToUpper(config.RandomToken()[:6]))
	probe, err := mautrix.NewClient(client.HomeserverURL.String(), sender, cfg.AppService.ASToken)
	if err != nil {
		return err
	}
	probe.DefaultHTTPRetries = 0
	if cfg.Encryption.MSC4190 {
		probe.SetAppServiceUserID = true
		if err := probe.CreateDeviceMSC4190(ctx, dev, "opsbot check"); err != nil {
			return fmt.Errorf("creating a device for the probe: %w", err)
		}
		defer probe.DeleteDevice(context.WithoutCancel(ctx), dev, nil)
	} else {
		_, err := probe.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypeAppservice, DeviceID: dev, StoreCredentials: true,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: cfg.AppService.SenderLocalpart}})
		if err != nil {
			return fmt.Errorf("logging in a device for the probe: %w", err)
		}
		defer probe.Logout(context.WithoutCancel(ctx))
	}
	_, err = probe.SendToDevice(ctx, event.Type{Type: e2ee.ProbeType, Class: event.ToDeviceEventType}, &mautrix.ReqSendToDevice{
		Messages: map[id.UserID]map[id.DeviceID]*event.Content{sender: {dev: {Raw: map[string]any{"org.opsbot.key_delivery_probe": "check"}}}},
	})
	return err
}
