package config

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
)

// exampleTemplate is what generate-config writes. It must stay valid: a test
// parses it and checks it against the registration example at the repo root.
const exampleTemplate = `# opsbot configuration. Every key is documented in docs/configuration.md.
# Secrets can also come from the environment: OPSBOT_AS_TOKEN, OPSBOT_HS_TOKEN,
# OPSBOT_PICKLE_KEY, OPSBOT_DATABASE_URI (and OPSBOT_HOMESERVER_ADDRESS).

homeserver:
  # The server name: the part after ':' in your users' IDs.
  domain: example.org
  # The client-server API URL opsbot talks to.
  address: http://127.0.0.1:8008

appservice:
  id: opsbot
  # Where opsbot listens for the homeserver's transactions (and /healthz, /readyz).
  listen: 127.0.0.1:29333
  # How the homeserver reaches that listener.
  public_url: http://127.0.0.1:29333
  # Shared secrets with the homeserver; they end up in the registration file.
  as_token: @AS_TOKEN@
  hs_token: @HS_TOKEN@
  # Largest transaction body accepted, in bytes.
  max_body_bytes: 16777216

database:
  # sqlite (one machine, the default) or postgres (production, several replicas).
  type: sqlite
  # sqlite: a file path. postgres: postgres://user:password@host/dbname?sslmode=disable
  uri: opsbot.db

encryption:
  # Give every bot its own end-to-end-encryption device, so it can talk in
  # encrypted rooms. See docs/getting-started.md for what that means.
  enabled: true
  # How the bots' devices receive keys: auto, sync (a /sync loop per bot
  # device: Dendrite, Conduit) or appservice (MSC2409/MSC3202: Synapse with
  # the experimental flags). auto picks by what the homeserver supports.
  mode: auto
  # Encrypts the bots' private keys in the database. Back it up with the
  # database: without it the bots cannot read their keys.
  pickle_key: @PICKLE_KEY@
  # Which devices get the bots' room keys: all, cross-signed or verified.
  trust: all
  # From which devices commands are obeyed: all, cross-signed (signed by
  # their owner, as Element's "exclude insecure devices") or verified (by
  # SAS with the bot). all keeps clients without cross-signing working.
  # Per skill: permissions.skills.<skill>.command_trust.
  command_trust: all
  # With command_trust above all: obey or refuse commands in unencrypted
  # rooms, where there is no device to check.
  command_trust_plain_rooms: refuse
  # Answer "I could not decrypt your message" when a room key never arrives.
  reply_on_failure: true
  # How long a message waits for its room key before that answer.
  decrypt_wait: 30s
  # Give every bot cross-signing keys and sign its device, so clients show
  # it as verified by its owner. The recovery key stays in the database:
  # opsbot-appservice recovery-key show. See docs/verification.md.
  cross_signing: true
  # Keep the bots' room keys in a server-side backup (needs cross_signing).
  key_backup: true
  # Dendrite asks for a password before it accepts cross-signing keys; an
  # admin's access token lets opsbot set one for each bot. Better in
  # OPSBOT_DENDRITE_ADMIN_TOKEN. Not needed on Synapse with MSC4190.
  dendrite_admin_token: ""
  # Create the bots' devices with MSC4190 (Synapse; the registration opts
  # in); then no password is ever needed. See docs/homeservers.md.
  msc4190: false
  verification:
    # Who may verify the bots with emoji (SAS); others are refused.
    # Patterns with * work: "@*:example.org".
    allowed_users: []
    # How long opsbot waits for the operator to compare the emoji
    # (opsbot-appservice verification list / confirm).
    timeout: 5m

bots:
  - localpart: opsbot
    displayname: Ops Bot
    # avatar: mxc://example.org/abcdef
    command_prefix: "!"
    skills: [ping, help, echo]
  # A bot can also be an ordinary account that opsbot logs in as (client
  # mode, no registration needed for it): create the account, then give its
  # password here or in OPSBOT_BOT_<LOCALPART>_PASSWORD. See
  # docs/getting-started.md, "No admin rights?".
  # - localpart: helper
  #   skills: [ping, echo]
  #   account:
  #     password: ""

# Per-skill settings, keyed by skill name. See each skill's README.
skills: {}

permissions:
  invite:
    # Who may invite a bot into a room. With both lists empty, any user of
    # homeserver.domain may; others are rejected and logged.
    users: []
    servers: []
  # Who may use admin-only commands (!status).
  admins: []
  # Per-skill allow/deny lists (users, servers, rooms) and a minimum power
  # level, e.g.  skills: {echo: {deny_servers: [evil.example], min_power_level: 50}}
  skills: {}
  # Commands answered per person and per room each minute (0 = no limit);
  # beyond that the bot asks politely to slow down.
  rate_limit:
    user_per_minute: 20
    room_per_minute: 60

memory:
  # Skills whose memory for a room lives in the room's state (it travels
  # with the room and survives losing the database). Room state is NOT
  # end-to-end encrypted: never list a skill that remembers secrets.
  in_room_state: []

rooms:
  # When a room is upgraded, the bots follow it to the new room (taking
  # skill memory along); then leave the old one?
  leave_upgraded: true

metrics:
  # host:port serving Prometheus metrics at /metrics (all named opsbot_*).
  # Empty turns it off; keep it off the public internet.
  listen: ""

logging:
  # trace, debug, info, warn or error. Message bodies appear only at debug and below.
  level: info
  # pretty (for a terminal) or json (for log collectors).
  format: pretty
`

// clientTemplate is what generate-config client writes: client-mode bots
// only, so no appservice section, tokens or registration.
const clientTemplate = `# opsbot configuration for bots that are ordinary Matrix accounts (client
# mode): no homeserver admin, no registration. Every key is documented in
# docs/configuration.md; generate-config without "client" shows them all.

homeserver:
  # The server name: the part after ':' in the bot's user ID.
  domain: example.org
  # The client-server API URL; leave it out to find it through
  # https://example.org/.well-known/matrix/client.
  address: https://matrix.example.org

database:
  # sqlite (one machine) or postgres (several replicas).
  type: sqlite
  uri: opsbot.db

encryption:
  # The bot gets its own encryption device (its login's), so it can talk in
  # encrypted rooms. See docs/getting-started.md.
  enabled: true
  # Encrypts the bot's private keys in the database: back it up with it.
  pickle_key: @PICKLE_KEY@
  # Cross-sign the bot's device with its own password, so clients show it
  # as verified by its owner.
  cross_signing: true
  key_backup: true

bots:
  # The account @opsbot:example.org, created beforehand like anyone's.
  - localpart: opsbot
    skills: [ping, help, echo]
    account:
      # Better in the environment: OPSBOT_BOT_OPSBOT_PASSWORD. Or give an
      # access_token (OPSBOT_BOT_OPSBOT_ACCESS_TOKEN) made for a device.
      password: ""

permissions:
  invite:
    # Who may invite the bot. With both lists empty, any user of
    # homeserver.domain may.
    users: []
    servers: []
  # Who may use admin-only commands (!status).
  admins: []

logging:
  level: info
  format: pretty
`

// ExampleClient returns the example config for client-mode bots only, with
// a fresh pickle key.
func ExampleClient() string {
	return strings.ReplaceAll(clientTemplate, "@PICKLE_KEY@", RandomToken())
}

// Example returns the example config with freshly generated tokens.
func Example() string {
	return ExampleWithTokens(RandomToken(), RandomToken())
}

// ExampleWithTokens returns the example config with the given tokens.
func ExampleWithTokens(asToken, hsToken string) string {
	return ExampleWithSecrets(asToken, hsToken, RandomToken())
}

// ExampleWithSecrets returns the example config with the given tokens and pickle key.
func ExampleWithSecrets(asToken, hsToken, pickleKey string) string {
	return strings.NewReplacer("@AS_TOKEN@", asToken, "@HS_TOKEN@", hsToken, "@PICKLE_KEY@", pickleKey).Replace(exampleTemplate)
}

// RandomToken returns 256 bits of randomness, URL-safe.
func RandomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
