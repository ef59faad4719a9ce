package harness

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// synapse runs Synapse from a Debian sid root with chroot. A homeserver's
// config and data live in the root, under srv/, where the chrooted process
// sees them as /srv/...: hs.Dir is the path outside, chrootPath the one
// inside.
type synapse struct {
	root string
	// cfg is written again on each start, with the port of that start.
	cfg map[string]any
}

var synapseCache struct {
	mu   sync.Mutex
	root string
	err  error
}

// FindSynapse returns the root directory holding the Synapse the harness
// runs: $SYNAPSE_ROOT, else <repo>/.build/synapse-root, built first with
// integration/tools/synapse-root.sh if it is not there (a minute or two, as
// root, from the Debian mirror apt uses). logf, which may be nil, is told
// when it builds. The outcome is remembered for the life of the process.
func FindSynapse(logf func(format string, args ...any)) (string, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	synapseCache.mu.Lock()
	defer synapseCache.mu.Unlock()
	if synapseCache.root == "" && synapseCache.err == nil {
		synapseCache.root, synapseCache.err = findOrBuildSynapse(logf)
	}
	return synapseCache.root, synapseCache.err
}

func findOrBuildSynapse(logf func(format string, args ...any)) (string, error) {
	if r := os.Getenv("SYNAPSE_ROOT"); r != "" {
		if _, err := os.Stat(filepath.Join(r, ".opsbot-synapse")); err != nil {
			return "", fmt.Errorf("SYNAPSE_ROOT=%s is not a Synapse root built by integration/tools/synapse-root.sh: %w", r, err)
		}
		return r, nil
	}
	repo, err := RepoRoot()
	if err != nil {
		return "", err
	}
	root := filepath.Join(repo, ".build", "synapse-root")
	if _, err := os.Stat(filepath.Join(root, ".opsbot-synapse")); err == nil {
		return root, nil
	}
	logf("harness: no Synapse in %s yet; building it with integration/tools/synapse-root.sh (a minute or two)", root)
	start := time.Now()
	out, err := exec.Command(filepath.Join(repo, "integration", "tools", "synapse-root.sh"), root).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("integration/tools/synapse-root.sh %s: %v\n%s", root, err, out)
	}
	logf("harness: built the Synapse root in %s", time.Since(start).Round(time.Second))
	return root, nil
}

// SynapseVersion returns the Debian version of the Synapse in root.
func SynapseVersion(root string) string {
	data, _ := os.ReadFile(filepath.Join(root, ".opsbot-synapse"))
	return strings.TrimSpace(string(data))
}

func (s *synapse) name() string { return "Synapse" }

// chrootPath is where the chrooted Synapse sees a path under the root.
func (s *synapse) chrootPath(p string) string {
	rel, err := filepath.Rel(s.root, p)
	if err != nil || strings.HasPrefix(rel, "..") {
		panic(fmt.Sprintf("harness: %s is not inside the Synapse root %s", p, s.root))
	}
	return "/" + rel
}

func (s *synapse) command(hs *Homeserver) []string {
	_, port, _ := strings.Cut(hs.addr, ":")
	n, _ := strconv.Atoi(port)
	s.cfg["listeners"].([]any)[0].(map[string]any)["port"] = n
	if err := writeJSONConfig(hs.ConfigPath, s.cfg, nil); err != nil {
		panic(fmt.Sprintf("harness: writing %s: %v", hs.ConfigPath, err))
	}
	return []string{"chroot", s.root, "python3", "-m", "synapse.app.homeserver", "-c", s.chrootPath(hs.ConfigPath)}
}

// skipLogLine leaves the harness's own start-up polls out of LogTail.
// afterKill does nothing: Synapse recovers from a kill by itself (its state
// is in its database).
func (s *synapse) afterKill(*Homeserver) error { return nil }

func (s *synapse) skipLogLine(l string) bool {
	return strings.Contains(l, `"GET /_matrix/client/versions`)
}

// writeConfig moves hs.Dir into the root (a directory named after the
// given Dir, which gets a symlink "synapse" to it), copies the appservice
// registrations there and writes the signing key and homeserver.yaml.
func (s *synapse) writeConfig(hs *Homeserver, opts Options, dbURL string) error {
	sum := sha256.Sum256([]byte(hs.Dir))
	data := filepath.Join(s.root, "srv", "h-"+hex.EncodeToString(sum[:8]))
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	link := filepath.Join(hs.Dir, "synapse")
	if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
		if err := os.Symlink(data, link); err != nil {
			return err
		}
	}
	hs.Dir = data
	hs.ConfigPath = filepath.Join(data, "homeserver.yaml")
	hs.LogPath = filepath.Join(data, "homeserver.log")
	hs.SharedSecret = sharedSecretIn(hs.ConfigPath)

	keyPath := filepath.Join(data, "signing.key")
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if err := writeSynapseKey(keyPath); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	regs, err := absPaths(opts.AppServiceRegistrations)
	if err != nil {
		return err
	}
	inRoot := []string{}
	for i, r := range regs {
		body, err := os.ReadFile(r)
		if err != nil {
			return err
		}
		dst := filepath.Join(data, fmt.Sprintf("appservice-%d.yaml", i))
		if err := os.WriteFile(dst, body, 0o600); err != nil {
			return err
		}
		inRoot = append(inRoot, s.chrootPath(dst))
	}
	logConfig := filepath.Join(data, "log.yaml")
	if err := os.WriteFile(logConfig, []byte(synapseLogConfig), 0o600); err != nil {
		return err
	}
	database := map[string]any{"name": "sqlite3", "args": map[string]any{"database": s.chrootPath(filepath.Join(data, "homeserver.db"))}}
	if dbURL != "" {
		u, err := url.Parse(dbURL)
		if err != nil {
			return err
		}
		args := map[string]any{"database": strings.TrimPrefix(u.Path, "/"), "host": u.Hostname(), "port": u.Port(), "cp_min": 1, "cp_max": 5}
		if u.User != nil {
			args["user"] = u.User.Username()
			if pw, ok := u.User.Password(); ok {
				args["password"] = pw
			}
		}
		database = map[string]any{"name": "psycopg2", "args": args}
	}
	// Synapse's rate limits are on by default; tests send in bursts.
	unlimited := map[string]any{"per_second": 100000, "burst_count": 100000}
	cfg := map[string]any{
		"server_name": opts.ServerName,
		"pid_file":    s.chrootPath(filepath.Join(data, "homeserver.pid")),
		"listeners": []any{map[string]any{
			"port": 0, "bind_addresses": []string{"127.0.0.1"}, "type": "http", "tls": false, "x_forwarded": false,
			"resources": []any{map[string]any{"names": []string{"client"}, "compress": false}},
		}},
		"database":                    database,
		"log_config":                  s.chrootPath(logConfig),
		"media_store_path":            s.chrootPath(filepath.Join(data, "media")),
		"signing_key_path":            s.chrootPath(keyPath),
		"registration_shared_secret":  hs.SharedSecret,
		"report_stats":                false,
		"enable_registration":         false,
		"enable_metrics":              false,
		"presence":                    map[string]any{"enabled": false},
		"trusted_key_servers":         []any{},
		"suppress_key_server_warning": true,
		"federation_domain_whitelist": []any{},
		"app_service_config_files":    inRoot,
		"rc_message":                  unlimited,
		"rc_registration":             unlimited,
		"rc_login":                    map[string]any{"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
		"rc_joins":                    map[string]any{"local": unlimited, "remote": unlimited},
		"rc_invites":                  map[string]any{"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
		"rc_key_requests":             unlimited,
		"rc_admin_redaction":          unlimited,
		"rc_3pid_validation":          unlimited,
		"rc_media_create":             unlimited,
		"rc_delayed_event_mgmt":       unlimited,
		"rc_reports":                  unlimited,
	}
	if opts.KeysInTransactions {
		// Exactly what docs/homeservers.md tells admins to set. (Acting
		// for a device with ?device_id=, which MSC4190 devices need, is no
		// longer behind msc3202_device_masquerading in Synapse 1.160.)
		cfg["experimental_features"] = map[string]any{
			"msc2409_to_device_messages_enabled": true, // to-device events in transactions
			"msc3202_transaction_extensions":     true, // device lists and one-time-key counts in transactions
		}
	}
	if opts.Config != nil {
		opts.Config(cfg)
	}
	s.cfg = cfg
	return nil
}

// removeData removes a homeserver's data from the root (for a test's
// temporary Dir, whose symlink to it goes with the test).
func (s *synapse) removeData(hs *Homeserver) { _ = os.RemoveAll(hs.Dir) }

// writeSynapseKey writes a new ed25519 signing key in Synapse's format:
// "ed25519 <key id> <unpadded base64 seed>".
func writeSynapseKey(path string) error {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	line := fmt.Sprintf("ed25519 a_%s %s\n", randomHex(2), base64.RawStdEncoding.EncodeToString(seed))
	return os.WriteFile(path, []byte(line), 0o600)
}

const synapseLogConfig = `version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  console:
    class: logging.StreamHandler
    formatter: precise
root:
  level: INFO
  handlers: [console]
disable_existing_loggers: false
`
