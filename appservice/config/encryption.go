package config

import (
	"fmt"
	"path"
	"time"
)

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
	// CommandTrust says from which devices a command in an encrypted room
	// is acted on: all, cross-signed (signed by their owner's cross-signing
	// identity) or verified (the bot verified that identity).
	CommandTrust string `yaml:"command_trust"`
	// CommandTrustPlainRooms says whether commands in unencrypted rooms,
	// where there is no device to check, are obeyed (obey) or refused
	// (refuse) by skills whose command_trust is not all.
	CommandTrustPlainRooms string `yaml:"command_trust_plain_rooms"`
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

func (e *Encryption) applyDefaults() {
	if e.Mode == "" {
		e.Mode = "auto"
	}
	if e.Trust == "" {
		e.Trust = "all"
	}
	if e.CommandTrust == "" {
		e.CommandTrust = "all"
	}
	if e.CommandTrustPlainRooms == "" {
		e.CommandTrustPlainRooms = "refuse"
	}
	if e.ReplyOnFailure == nil {
		yes := true
		e.ReplyOnFailure = &yes
	}
	if e.DecryptWait == 0 {
		e.DecryptWait = Duration(30 * time.Second)
	}
	if e.CrossSigning == nil {
		yes := true
		e.CrossSigning = &yes
	}
	// Without cross-signing there is no secret storage to keep the backup
	// key in, so the backup follows cross-signing unless set.
	if e.KeyBackup == nil {
		backup := *e.CrossSigning
		e.KeyBackup = &backup
	}
	e.Verification.applyDefaults()
}

// validate expects applyDefaults to have run (it reads the pointers).
func (e Encryption) validate() error {
	var p problems
	if e.Enabled {
		switch e.Mode {
		case "auto", "sync", "appservice":
		default:
			p.add("encryption.mode", "%q is not one of auto, sync, appservice", e.Mode)
		}
		if len(e.PickleKey) < 16 {
			p.add("encryption.pickle_key", "missing or shorter than 16 characters (set it in the file or in OPSBOT_PICKLE_KEY); it encrypts the bots' keys, so keep it with your backups")
		}
	}
	switch e.Trust {
	case "all", "cross-signed", "verified":
	default:
		p.add("encryption.trust", "%q is not one of all, cross-signed, verified", e.Trust)
	}
	if !ValidCommandTrust(e.CommandTrust) {
		p.add("encryption.command_trust", "%q must be all, cross-signed or verified", e.CommandTrust)
	} else if e.CommandTrust != "all" && !e.Enabled {
		p.add("encryption.command_trust", "%q needs encryption.enabled: without encryption no device can be checked", e.CommandTrust)
	}
	switch e.CommandTrustPlainRooms {
	case "obey", "refuse":
	default:
		p.add("encryption.command_trust_plain_rooms", "%q must be obey or refuse", e.CommandTrustPlainRooms)
	}
	if e.DecryptWait < 0 || time.Duration(e.DecryptWait) > 10*time.Minute {
		p.add("encryption.decrypt_wait", "must be between 0s and 10m")
	}
	if e.MSC4190 && e.Mode == "sync" {
		p.add("encryption.msc4190", "needs encryption.mode appservice (or auto): a device made through MSC4190 gets its keys in transactions, not through /sync")
	}
	if *e.KeyBackup && !*e.CrossSigning {
		p.add("encryption.key_backup", "needs encryption.cross_signing: the backup key is kept in secret storage under the bots' recovery keys")
	}
	p = append(p, e.Verification.validate())
	return p.err()
}

func (v *Verification) applyDefaults() {
	if v.Timeout == 0 {
		v.Timeout = Duration(5 * time.Minute)
	}
}

func (v Verification) validate() error {
	var p problems
	for i, u := range v.AllowedUsers {
		key := fmt.Sprintf("encryption.verification.allowed_users[%d]", i)
		if !isUserID(u) {
			p.add(key, "%q is not a user ID or pattern like @alice:example.org or @*:example.org", u)
		} else if _, err := path.Match(u, "@x:y"); err != nil {
			p.add(key, "%q is not a valid pattern: %v", u, err)
		}
	}
	if t := time.Duration(v.Timeout); t < 10*time.Second || t > 9*time.Minute {
		p.add("encryption.verification.timeout", "must be between 10s and 9m (a verification request expires after 10 minutes)")
	}
	return p.err()
}

// ValidCommandTrust reports whether s is a command_trust level.
func ValidCommandTrust(s string) bool {
	switch s {
	case "all", "cross-signed", "verified":
		return true
	}
	return false
}
