// The peer of opsbot's pipeline benchmark (../peer_bench_test.go,
// docs/performance.md): a bot written the ordinary way with matrix-bot-sdk's
// Appservice class, answering the benchmark's load through its intent. It
// keeps nothing beyond the SDK's default memory storage and has no crypto:
// a transaction it has acknowledged is lost if it dies, which opsbot's
// durable inbox is there to prevent.
//
//   PEER_HS_TOKEN=... PEER_AS_TOKEN=... node bot.js \
//     --homeserver http://127.0.0.1:PORT --domain bench.example [--port 0] [--localpart opsbot]
//
// Tokens come from the environment (not the command line, where ps shows
// them). --port 0 takes a free port; the line "listening on 127.0.0.1:PORT"
// on stdout says which, once the bot is ready.
"use strict";

const path = require("node:path");
const Module = require("node:module");
const { parseArgs } = require("node:util");

// matrix-bot-sdk loads its native crypto module (@matrix-org/matrix-sdk-
// crypto-nodejs) as soon as it is required, even with crypto off, and that
// module throws when its binary is missing. The binary is fetched by an
// install script, which cannot run here (npm ci --ignore-scripts). This peer
// is plaintext and never calls into it, so an empty module stands in.
const sdkDir = path.dirname(require.resolve("matrix-bot-sdk"));
const cryptoPath = require.resolve("@matrix-org/matrix-sdk-crypto-nodejs", { paths: [sdkDir] });
const noCrypto = new Module(cryptoPath);
noCrypto.loaded = true;
require.cache[cryptoPath] = noCrypto;

const { Appservice, LogService, LogLevel } = require("matrix-bot-sdk");

const { values: args } = parseArgs({
  options: {
    homeserver: { type: "string" },
    domain: { type: "string" },
    port: { type: "string", default: "0" },
    localpart: { type: "string", default: "opsbot" },
  },
});
const hsToken = process.env.PEER_HS_TOKEN;
const asToken = process.env.PEER_AS_TOKEN;
if (!args.homeserver || !args.domain || !hsToken || !asToken) {
  console.error("usage: PEER_HS_TOKEN=... PEER_AS_TOKEN=... node bot.js --homeserver URL --domain NAME [--port N] [--localpart NAME]");
  process.exit(2);
}

// The SDK logs every request and every event at INFO, its default. opsbot
// runs at info too but logs nothing per event, so the peer logs warnings and
// errors only, as a bot under load would be configured.
LogService.setLevel(LogLevel.WARN);

const appservice = new Appservice({
  bindAddress: "127.0.0.1",
  port: Number(args.port),
  homeserverName: args.domain,
  homeserverUrl: args.homeserver,
  registration: {
    id: "bench-peer",
    as_token: asToken,
    hs_token: hsToken,
    sender_localpart: args.localpart,
    namespaces: {
      users: [{ exclusive: true, regex: `@${args.localpart}:${args.domain}` }],
      rooms: [],
      aliases: [],
    },
  },
});
const bot = appservice.botIntent;

// The same answers as opsbot's benchmark skills: one notice per command,
// replying to it (m.in_reply_to, which the stub homeserver counts). First
// match wins, so no message gets two answers.
const commands = [
  [/^!ping(\s|$)/, "pong"],
  [/\bdeploy\b/i, "ack"], // the "ack" skill of integration/bench/intake_bench_test.go
];

appservice.on("room.message", (roomId, event) => {
  const content = event.content || {};
  // Never answer itself or another bot (bots send notices).
  if (event.sender === bot.userId || content.msgtype === "m.notice" || typeof content.body !== "string") {
    return;
  }
  const command = commands.find(([pattern]) => pattern.test(content.body));
  if (!command) {
    return;
  }
  // Through the intent, as an SDK user writes it: it makes sure the bot is
  // registered and in the room (its joined rooms are cached after one
  // GET /joined_rooms) before sending.
  bot.sendEvent(roomId, {
    msgtype: "m.notice",
    body: command[1],
    "m.relates_to": { "m.in_reply_to": { event_id: event.event_id } },
  }).catch((err) => {
    // No retry here: the benchmark's homeserver does not fail, so a failed
    // send is a broken peer, and the benchmark must see it at once.
    console.error(`sending the answer to ${event.event_id} failed:`, err);
    process.exit(1);
  });
});

// Exit normally on SIGTERM (the benchmark's stop), so that what Node does at
// exit still happens, e.g. writing a profile asked for with NODE_OPTIONS=--cpu-prof.
process.on("SIGTERM", () => {
  appservice.stop();
  process.exit(0);
});

appservice.begin().then(() => {
  const { address, port } = appservice.appServer.address();
  console.log(`listening on ${address}:${port}`);
}, (err) => {
  console.error("starting the appservice failed:", err);
  process.exit(1);
});
