// Package config loads, validates and generates opsbot.yaml, and derives the
// homeserver registration from it.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/opsbot/opsbot/skills"
	"github.com/opsbot/opsbot/skills/external"
)

// Config is the whole of opsbot.yaml.
type Config struct {
	Homeserver Homeserver           `yaml:"homeserver"`
	AppService AppService           `yaml:"appservice"`
	Database   Database             `yaml:"database"`
	Encryption Encryption           `yaml:"encryption"`
	Bots       []Bot                `yaml:"bots"`
	Skills     map[string]yaml.Node `yaml:"skills"`
	// ExternalSkills are skills in any language, reached over HTTP.
	ExternalSkills []external.Config `yaml:"external_skills"`
	Permissions    Permissions       `yaml:"permissions"`
	Memory         Memory            `yaml:"memory"`
	Rooms          Rooms             `yaml:"rooms"`
	Metrics        Metrics           `yaml:"metrics"`
	Leader         Leader            `yaml:"leader"`
	Logging        Logging           `yaml:"logging"`
}

// Leader configures leadership among replicas (Postgres).
type Leader struct {
	// Lease is how long a leader that stops renewing (paused, stuck, cut
	// off from the database) keeps leadership before a standby takes over.
	Lease Duration `yaml:"lease"`
}

// Memory says where skills keep their memory.
type Memory struct {
	// InRoomState lists skills whose memory lives in room state events
	// (travels with the room, survives losing the database, but is not
	// end-to-end encrypted). Others keep it in the database.
	InRoomState []string `yaml:"in_room_state"`
}

// Rooms configures how bots treat rooms.
type Rooms struct {
	// LeaveUpgraded makes bots leave a room once they have followed its
	// upgrade (m.room.tombstone) into the replacement room.
	LeaveUpgraded *bool `yaml:"leave_upgraded"`
}

// Metrics configures the Prometheus listener.
type Metrics struct {
	// Listen is the host:port serving /metrics; empty turns it off.
	Listen string `yaml:"listen"`
}

// Homeserver says which Matrix server opsbot belongs to.
type Homeserver struct {
	// Domain is the server name, the part after ':' in user IDs.
	Domain string `yaml:"domain"`
	// Address is the client-server API base URL opsbot talks to. If empty,
	// it is discovered from Domain's /.well-known/matrix/client.
	Address string `yaml:"address"`
}

// AppService holds the appservice identity, listener and tokens.
type AppService struct {
	ID string `yaml:"id"`
	// Listen is the host:port of the HTTP listener for transactions, health
	// and skill webhooks.
	Listen string `yaml:"listen"`
	// PublicURL is how the homeserver reaches Listen; it goes into the
	// registration's url.
	PublicURL string `yaml:"public_url"`
	// SenderLocalpart is the appservice's own user; defaults to the first bot.
	SenderLocalpart string `yaml:"sender_localpart"`
	ASToken         string `yaml:"as_token"`
	HSToken         string `yaml:"hs_token"`
	// MaxBodyBytes caps the size of a pushed transaction.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// Workers is how many events are handled at once (each room's events
	// one after another).
	Workers int `yaml:"workers"`
}

// Database selects where opsbot keeps its state.
type Database struct {
	Type         string `yaml:"type"` // sqlite or postgres
	URI          string `yaml:"uri"`
	MaxOpenConns int    `yaml:"max_open_conns"`
}

// Encryption configures end-to-end encryption for the bots.
type Encryption struct {
	// Enabled gives every bot an E2EE device so it can talk in encrypted rooms.
	Enabled bool `yaml:"enabled"`
	// Mode says how the bots' devices get their to-device messages, device
	// list changes and one-time-key counts: sync (a /sync loop per device),
	// appservice (MSC2409/MSC3202 transaction fields) or auto.
	Mode string `yaml:"mode"`
	// PickleKey encrypts the bots' private keys in the database.
	PickleKey string `yaml:"pickle_key"`
	// Trust is the key sharing policy: which devices get the bots' room keys
	// (all, cross-signed or verified).
	Trust string `yaml:"trust"`
	// ReplyOnFailure makes a bot answer a message it could not decrypt.
	ReplyOnFailure *bool `yaml:"reply_on_failure"`
	// DecryptWait bounds how long an event waits for a late room key.
	DecryptWait Duration `yaml:"decrypt_wait"`
	// CrossSigning gives every bot cross-signing keys and signs its device,
	// so clients show the device as verified by its owner.
	CrossSigning *bool `yaml:"cross_signing"`
	// KeyBackup keeps the bots' room keys in a server-side backup, so a bot
	// restored from its recovery key can read earlier messages.
	KeyBackup *bool `yaml:"key_backup"`
	// DendriteAdminToken is a Dendrite admin's access token, used only to
	// pass Dendrite's password check when a bot uploads cross-signing keys.
	DendriteAdminToken string `yaml:"dendrite_admin_token"`
	// MSC4190 creates the bots' devices through the appservice API
	// (PUT /devices as the appservice) instead of appservice login; with it
	// Synapse lets the bots upload cross-signing keys without a password.
	MSC4190 bool `yaml:"msc4190"`
	// Verification configures interactive (SAS) verification of the bots.
	Verification Verification `yaml:"verification"`
}

// Verification configures who may verify the bots with SAS, and how long
// opsbot waits for the operator to compare the short authentication string.
type Verification struct {
	// AllowedUsers may verify the bots: user IDs or patterns with *.
	AllowedUsers []string `yaml:"allowed_users"`
	// Timeout bounds the wait for the operator's confirmation.
	Timeout Duration `yaml:"timeout"`
}

// Bot is one virtual user run by opsbot.
type Bot struct {
	Localpart     string   `yaml:"localpart"`
	Displayname   string   `yaml:"displayname"`
	Avatar        string   `yaml:"avatar"`
	CommandPrefix string   `yaml:"command_prefix"`
	Skills        []string `yaml:"skills"`
}

// Permissions says who may do what with the bots.
type Permissions struct {
	// Invite lists who may invite a bot into a room. Empty lists mean
	// "users of our own homeserver".
	Invite InvitePolicy `yaml:"invite"`
	// Admins may use admin-only commands (!status).
	Admins []string `yaml:"admins"`
	// Skills restricts who may use each skill, by skill name.
	Skills map[string]SkillPolicy `yaml:"skills"`
	// RateLimit slows down people and rooms that send too many commands.
	RateLimit RateLimit `yaml:"rate_limit"`
}

// SkillPolicy allows and denies a skill by user, server, room and power
// level. Deny wins; empty allow lists allow everyone.
type SkillPolicy struct {
	AllowUsers    []string `yaml:"allow_users"`
	DenyUsers     []string `yaml:"deny_users"`
	AllowServers  []string `yaml:"allow_servers"`
	DenyServers   []string `yaml:"deny_servers"`
	AllowRooms    []string `yaml:"allow_rooms"`
	DenyRooms     []string `yaml:"deny_rooms"`
	MinPowerLevel int      `yaml:"min_power_level"`
}

// RateLimit caps how many commands (and regex/parse matches) per minute a
// person, and a room, get answered. 0 turns a limit off.
type RateLimit struct {
	UserPerMinute *int `yaml:"user_per_minute"`
	RoomPerMinute *int `yaml:"room_per_minute"`
}

// InvitePolicy allows inviters by exact user ID or by server name.
type InvitePolicy struct {
	Users   []string `yaml:"users"`
	Servers []string `yaml:"servers"`
}

// Logging configures zerolog.
type Logging struct {
	Level  string `yaml:"level"`  // trace, debug, info, warn, error
	Format string `yaml:"format"` // json or pretty
}

// Duration is a duration written as Go writes them (30s, 5m); the skills
// runtime defines it, so skills' own sections read durations the same way.
type Duration = skills.Duration

// Defaults used when a key is left out.
const (
	DefaultListen        = "127.0.0.1:29333"
	DefaultMaxBodyBytes  = 16 << 20
	DefaultCommandPrefix = "!"
	DefaultSQLiteURI     = "opsbot.db"
)

// Environment variables that override secrets and connection strings, so
// Kubernetes Secrets never have to be written into the ConfigMap.
var envOverrides = []struct {
	name string
	set  func(*Config, string)
}{
	{"OPSBOT_AS_TOKEN", func(c *Config, v string) { c.AppService.ASToken = v }},
	{"OPSBOT_HS_TOKEN", func(c *Config, v string) { c.AppService.HSToken = v }},
	{"OPSBOT_DATABASE_URI", func(c *Config, v string) { c.Database.URI = v }},
	{"OPSBOT_PICKLE_KEY", func(c *Config, v string) { c.Encryption.PickleKey = v }},
	{"OPSBOT_HOMESERVER_ADDRESS", func(c *Config, v string) { c.Homeserver.Address = v }},
	{"OPSBOT_DENDRITE_ADMIN_TOKEN", func(c *Config, v string) { c.Encryption.DendriteAdminToken = v }},
}

// EnvNames lists the environment variables Load reads, for docs and --help.
func EnvNames() []string {
	names := make([]string, len(envOverrides))
	for i, o := range envOverrides {
		names[i] = o.name
	}
	return names
}

// Load reads, decodes and validates a config file. Environment overrides are
// applied before validation.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes and validates config text; see Load.
func Parse(data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	cfg := &Config{}
	if err := skills.DecodeStrict(&root, cfg, ""); err != nil {
		return nil, err
	}
	for _, o := range envOverrides {
		if v, ok := os.LookupEnv(o.name); ok && v != "" {
			o.set(cfg, v)
		}
	}
	for i := range cfg.ExternalSkills {
		cfg.ExternalSkills[i].ApplyEnv()
	}
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (c *Config) applyDefaults() {
	if c.AppService.ID == "" {
		c.AppService.ID = "opsbot"
	}
	if c.AppService.Listen == "" {
		c.AppService.Listen = DefaultListen
	}
	if c.AppService.PublicURL == "" {
		c.AppService.PublicURL = "http://" + c.AppService.Listen
	}
	if c.AppService.Workers == 0 {
		c.AppService.Workers = 8
	}
	if c.AppService.MaxBodyBytes == 0 {
		c.AppService.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.Database.Type == "" {
		c.Database.Type = "sqlite"
	}
	if c.Database.URI == "" && c.Database.Type == "sqlite" {
		c.Database.URI = DefaultSQLiteURI
	}
	for i := range c.Bots {
		if c.Bots[i].CommandPrefix == "" {
			c.Bots[i].CommandPrefix = DefaultCommandPrefix
		}
	}
	if c.AppService.SenderLocalpart == "" && len(c.Bots) > 0 {
		c.AppService.SenderLocalpart = c.Bots[0].Localpart
	}
	if c.Rooms.LeaveUpgraded == nil {
		yes := true
		c.Rooms.LeaveUpgraded = &yes
	}
	for i := range c.ExternalSkills {
		c.ExternalSkills[i].ApplyDefaults()
	}
	if c.Permissions.RateLimit.UserPerMinute == nil {
		n := 20
		c.Permissions.RateLimit.UserPerMinute = &n
	}
	if c.Permissions.RateLimit.RoomPerMinute == nil {
		n := 60
		c.Permissions.RateLimit.RoomPerMinute = &n
	}
	if c.Encryption.Mode == "" {
		c.Encryption.Mode = "auto"
	}
	if c.Encryption.Trust == "" {
		c.Encryption.Trust = "all"
	}
	if c.Encryption.ReplyOnFailure == nil {
		yes := true
		c.Encryption.ReplyOnFailure = &yes
	}
	if c.Encryption.DecryptWait == 0 {
		c.Encryption.DecryptWait = Duration(30 * time.Second)
	}
	if c.Encryption.CrossSigning == nil {
		yes := true
		c.Encryption.CrossSigning = &yes
	}
	if c.Encryption.KeyBackup == nil {
		backup := *c.Encryption.CrossSigning
		c.Encryption.KeyBackup = &backup
	}
	if c.Leader.Lease == 0 {
		c.Leader.Lease = Duration(10 * time.Second)
	}
	if c.Encryption.Verification.Timeout == 0 {
		c.Encryption.Verification.Timeout = Duration(5 * time.Minute)
	}
	if c.Logging.Level == "" {
		c.Logging.Level = "info"
	}
	if c.Logging.Format == "" {
		c.Logging.Format = "pretty"
	}
}

// localpartRe is the spec's grammar for user ID localparts (historical
// characters excluded: new users must use these).
var localpartRe = regexp.MustCompile(`^[a-z0-9._=/+-]+$`)

// Validate checks every value and names the key of the first bad one.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Homeserver.Domain == "" {
		bad("homeserver.domain", "required: the server name in your users' IDs, e.g. example.org")
	} else if strings.ContainsAny(c.Homeserver.Domain, "/@ ") {
		bad("homeserver.domain", "%q is not a server name (no scheme, no path)", c.Homeserver.Domain)
	}
	// An empty address is found at start-up from the domain's
	// /.well-known/matrix/client (see appservice/discovery).
	if c.Homeserver.Address != "" {
		if err := checkHTTPURL(c.Homeserver.Address); err != nil {
			bad("homeserver.address", "%v", err)
		}
	}
	if c.AppService.ID == "" || strings.ContainsAny(c.AppService.ID, " /") {
		bad("appservice.id", "%q must be a non-empty word", c.AppService.ID)
	}
	if _, _, err := net.SplitHostPort(c.AppService.Listen); err != nil {
		bad("appservice.listen", "%q is not host:port", c.AppService.Listen)
	}
	if err := checkHTTPURL(c.AppService.PublicURL); err != nil {
		bad("appservice.public_url", "%v", err)
	}
	if len(c.AppService.ASToken) < 16 {
		bad("appservice.as_token", "missing or shorter than 16 characters (set it in the file or in OPSBOT_AS_TOKEN)")
	}
	if len(c.AppService.HSToken) < 16 {
		bad("appservice.hs_token", "missing or shorter than 16 characters (set it in the file or in OPSBOT_HS_TOKEN)")
	}
	if c.AppService.ASToken != "" && c.AppService.ASToken == c.AppService.HSToken {
		bad("appservice.hs_token", "must differ from as_token")
	}
	if c.AppService.Workers < 1 || c.AppService.Workers > 256 {
		bad("appservice.workers", "%d is not between 1 and 256", c.AppService.Workers)
	}
	if c.AppService.MaxBodyBytes < 64<<10 {
		bad("appservice.max_body_bytes", "%d is too small (at least 65536)", c.AppService.MaxBodyBytes)
	}
	switch c.Database.Type {
	case "sqlite":
	case "postgres":
		if c.Database.URI == "" {
			bad("database.uri", "required for postgres (e.g. postgres://opsbot@localhost/opsbot, or OPSBOT_DATABASE_URI)")
		}
	default:
		bad("database.type", "%q is not one of sqlite, postgres", c.Database.Type)
	}
	if c.Database.MaxOpenConns < 0 {
		bad("database.max_open_conns", "must not be negative")
	}
	if c.Encryption.Enabled {
		switch c.Encryption.Mode {
		case "auto", "sync", "appservice":
		default:
			bad("encryption.mode", "%q is not one of auto, sync, appservice", c.Encryption.Mode)
		}
		if len(c.Encryption.PickleKey) < 16 {
			bad("encryption.pickle_key", "missing or shorter than 16 characters (set it in the file or in OPSBOT_PICKLE_KEY); it encrypts the bots' keys, so keep it with your backups")
		}
	}
	switch c.Encryption.Trust {
	case "all", "cross-signed", "verified":
	default:
		bad("encryption.trust", "%q is not one of all, cross-signed, verified", c.Encryption.Trust)
	}
	if c.Encryption.DecryptWait < 0 || time.Duration(c.Encryption.DecryptWait) > 10*time.Minute {
		bad("encryption.decrypt_wait", "must be between 0s and 10m")
	}
	if c.Encryption.MSC4190 && c.Encryption.Mode == "sync" {
		bad("encryption.msc4190", "needs encryption.mode appservice (or auto): a device made through MSC4190 gets its keys in transactions, not through /sync")
	}
	if *c.Encryption.KeyBackup && !*c.Encryption.CrossSigning {
		bad("encryption.key_backup", "needs encryption.cross_signing: the backup key is kept in secret storage under the bots' recovery keys")
	}
	for i, u := range c.Encryption.Verification.AllowedUsers {
		if !isUserID(u) {
			bad(fmt.Sprintf("encryption.verification.allowed_users[%d]", i), "%q is not a user ID or pattern like @alice:example.org or @*:example.org", u)
		} else if _, err := path.Match(u, "@x:y"); err != nil {
			bad(fmt.Sprintf("encryption.verification.allowed_users[%d]", i), "%q is not a valid pattern: %v", u, err)
		}
	}
	if t := time.Duration(c.Encryption.Verification.Timeout); t < 10*time.Second || t > 9*time.Minute {
		bad("encryption.verification.timeout", "must be between 10s and 9m (a verification request expires after 10 minutes)")
	}
	if len(c.Bots) == 0 {
		bad("bots", "at least one bot is required")
	}
	seen := map[string]bool{}
	for i, b := range c.Bots {
		key := fmt.Sprintf("bots[%d]", i)
		if !localpartRe.MatchString(b.Localpart) {
			bad(key+".localpart", "%q is not a valid localpart (lowercase letters, digits and ._=/+-)", b.Localpart)
		}
		if seen[b.Localpart] {
			bad(key+".localpart", "%q is used by two bots", b.Localpart)
		}
		seen[b.Localpart] = true
		if b.Avatar != "" && !strings.HasPrefix(b.Avatar, "mxc://") {
			bad(key+".avatar", "%q must be an mxc:// URI", b.Avatar)
		}
		if strings.ContainsAny(b.CommandPrefix, " \t\n") {
			bad(key+".command_prefix", "%q must not contain spaces", b.CommandPrefix)
		}
		dup := map[string]bool{}
		for j, s := range b.Skills {
			if dup[s] {
				bad(fmt.Sprintf("%s.skills[%d]", key, j), "skill %q listed twice", s)
			}
			dup[s] = true
		}
	}
	if c.AppService.SenderLocalpart != "" && !localpartRe.MatchString(c.AppService.SenderLocalpart) {
		bad("appservice.sender_localpart", "%q is not a valid localpart", c.AppService.SenderLocalpart)
	}
	for i, u := range c.Permissions.Admins {
		if !isUserID(u) {
			bad(fmt.Sprintf("permissions.admins[%d]", i), "%q is not a user ID like @alice:example.org", u)
		}
	}
	for name, p := range c.Permissions.Skills {
		if !c.botRuns(name) {
			bad("permissions.skills."+name, "no bot runs a skill named %q", name)
		}
		if p.MinPowerLevel < 0 || p.MinPowerLevel > 100 {
			bad("permissions.skills."+name+".min_power_level", "must be between 0 and 100")
		}
	}
	if *c.Permissions.RateLimit.UserPerMinute < 0 || *c.Permissions.RateLimit.RoomPerMinute < 0 {
		bad("permissions.rate_limit", "limits must not be negative")
	}
	for i, u := range c.Permissions.Invite.Users {
		if !isUserID(u) {
			bad(fmt.Sprintf("permissions.invite.users[%d]", i), "%q is not a user ID like @alice:example.org", u)
		}
	}
	for i, x := range c.ExternalSkills {
		errs = append(errs, x.Check(fmt.Sprintf("external_skills[%d]", i))...)
	}
	for i, skill := range c.Memory.InRoomState {
		if !c.botRuns(skill) {
			bad(fmt.Sprintf("memory.in_room_state[%d]", i), "no bot runs a skill named %q", skill)
		}
	}
	if l := time.Duration(c.Leader.Lease); l < 3*time.Second || l > 5*time.Minute {
		bad("leader.lease", "must be between 3s and 5m")
	}
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			bad("metrics.listen", "%q is not host:port", c.Metrics.Listen)
		} else if c.Metrics.Listen == c.AppService.Listen {
			bad("metrics.listen", "must differ from appservice.listen")
		}
	}
	switch c.Logging.Level {
	case "trace", "debug", "info", "warn", "error":
	default:
		bad("logging.level", "%q is not one of trace, debug, info, warn, error", c.Logging.Level)
	}
	switch c.Logging.Format {
	case "json", "pretty":
	default:
		bad("logging.format", "%q is not one of json, pretty", c.Logging.Format)
	}
	return errors.Join(errs...)
}

// isUserID is a light check for "@local:server", enough to catch a missing
// "@" or server in config lists.
func isUserID(u string) bool { return strings.HasPrefix(u, "@") && strings.Contains(u, ":") }

// botRuns reports whether any bot lists the skill.
func (c *Config) botRuns(skill string) bool {
	for _, b := range c.Bots {
		if slices.Contains(b.Skills, skill) {
			return true
		}
	}
	return false
}

func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %v", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q must start with http:// or https://", s)
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	return nil
}

// BotIDs returns the full Matrix IDs of the configured bots, in config order.
func (c *Config) BotIDs() []string {
	ids := make([]string, len(c.Bots))
	for i, b := range c.Bots {
		ids[i] = "@" + b.Localpart + ":" + c.Homeserver.Domain
	}
	return ids
}
