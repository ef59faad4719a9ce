package harness

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
)

// dendrite runs the Dendrite binary (see the package documentation).
type dendrite struct{ bin string }

func (d dendrite) name() string { return "Dendrite" }

func (d dendrite) command(hs *Homeserver) []string {
	return []string{d.bin, "-config", hs.ConfigPath, "-http-bind-address", hs.addr}
}

// writeConfig writes the signing key (unless Dir has one) and the Dendrite
// v0.13 configuration (see dendrite-sample.yaml in the Dendrite module for
// the schema).
func (d dendrite) writeConfig(hs *Homeserver, opts Options, dbURL string) error {
	if opts.KeysInTransactions {
		return errors.New("Options.KeysInTransactions: Dendrite pushes no to-device events, device lists or one-time-key counts to appservices")
	}
	hs.ConfigPath = filepath.Join(hs.Dir, "dendrite.yaml")
	hs.LogPath = filepath.Join(hs.Dir, "dendrite.log")
	hs.SharedSecret = sharedSecretIn(hs.ConfigPath)
	keyPath := filepath.Join(hs.Dir, "matrix_key.pem")
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if err := writeDendriteKey(keyPath); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	regs, err := absPaths(opts.AppServiceRegistrations)
	if err != nil {
		return err
	}
	db := func(name string) map[string]any {
		if dbURL != "" {
			return map[string]any{} // global.database is used
		}
		return map[string]any{"connection_string": "file:" + filepath.Join(hs.Dir, "dendrite_"+name+".db")}
	}
	global := map[string]any{
		"server_name":                    opts.ServerName,
		"private_key":                    keyPath,
		"disable_federation":             true,
		"trusted_third_party_id_servers": []string{},
		"well_known_client_name":         "",
		"presence":                       map[string]any{"enable_inbound": false, "enable_outbound": false},
		"report_stats":                   map[string]any{"enabled": false},
		"metrics":                        map[string]any{"enabled": false},
		"dns_cache":                      map[string]any{"enabled": false},
		"cache":                          map[string]any{"max_size_estimated": "64mb", "max_age": "1h"},
		// On disk, not in_memory: Restart must not lose queued events.
		"jetstream": map[string]any{
			"storage_path": filepath.Join(hs.Dir, "jetstream"),
			"topic_prefix": "Dendrite",
		},
	}
	if dbURL != "" {
		global["database"] = map[string]any{
			"connection_string": dbURL,
			"max_open_conns":    10,
			"max_idle_conns":    2,
			"conn_max_lifetime": -1,
		}
	}
	cfg := map[string]any{
		"version": 2,
		"global":  global,
		"app_service_api": map[string]any{
			"config_files":           regs,
			"disable_tls_validation": true,
		},
		"client_api": map[string]any{
			"registration_disabled":      true,
			"guests_disabled":            true,
			"registration_shared_secret": hs.SharedSecret,
			"rate_limiting":              map[string]any{"enabled": false, "threshold": 20, "cooloff_ms": 500},
		},
		"federation_api": map[string]any{
			"database":         db("federationapi"),
			"key_perspectives": []any{},
		},
		"key_server": map[string]any{"database": db("keyserver")},
		"media_api": map[string]any{
			"database":  db("mediaapi"),
			"base_path": filepath.Join(hs.Dir, "media"),
		},
		"mscs":        map[string]any{"database": db("mscs"), "mscs": []string{}},
		"relay_api":   map[string]any{"database": db("relayapi")},
		"room_server": map[string]any{"database": db("roomserver")},
		"sync_api": map[string]any{
			"database": db("syncapi"),
			"search":   map[string]any{"enabled": false},
		},
		"user_api": map[string]any{
			"account_database": db("userapi"),
			"bcrypt_cost":      4, // the minimum: logins are on every test's path
		},
		"tracing": map[string]any{"enabled": false},
		"logging": []any{map[string]any{"type": "std", "level": "info"}},
	}
	return writeJSONConfig(hs.ConfigPath, cfg, opts.Config)
}

// writeDendriteKey writes a new ed25519 server signing key in the PEM form
// Dendrite reads: a "MATRIX PRIVATE KEY" block holding the 32-byte seed, with
// a Key-ID header.
func writeDendriteKey(path string) error {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	data := pem.EncodeToMemory(&pem.Block{
		Type:    "MATRIX PRIVATE KEY",
		Headers: map[string]string{"Key-ID": "ed25519:" + randomHex(3)},
		Bytes:   seed,
	})
	return os.WriteFile(path, data, 0o600)
}

// skipLogLine leaves the info-level chatter of Dendrite's embedded NATS
// server out of LogTail.
// afterKill empties Dendrite's embedded NATS JetStream: a kill can lose
// the newest stream state while the consumers' positions survive, and
// Dendrite then comes back with consumers ahead of their streams
// ("ack floor 7 is ahead of stream's last sequence 0") and silently drops
// new events, even ones sent after the restart (seen in make test). The
// streams are only Dendrite's internal bus: its databases keep what it
// stored, and it makes the streams anew at start.
func (d dendrite) afterKill(hs *Homeserver) error {
	return os.RemoveAll(filepath.Join(hs.Dir, "jetstream"))
}

func (d dendrite) skipLogLine(l string) bool {
	return strings.Contains(l, "level=info") && strings.Contains(l, "component=jetstream")
}
