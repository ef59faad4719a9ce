#!/usr/bin/env node
// An opsbot external skill in JavaScript, Node 20 standard library only.
//
//     node weather_skill.mjs --port 8082 --secret 'a-long-random-secret'
//
// (or put the secret in the environment as WEATHER_SKILL_SECRET, which keeps
// it out of `ps`). Declare it in opsbot.yaml:
//
//     external_skills:
//       - name: weather-js
//         url: http://127.0.0.1:8082/
//         secret: a-long-random-secret          # or OPSBOT_SKILL_WEATHER_JS_SECRET
//         commands:
//           - pattern: "weather {city...?}"
//             help: the weather for a city (the last one asked if none is given)
//         regexes: ['(?i)\bthanks\b']
//
// The protocol (version 1; docs/skills.md#external-skills has all of it):
//
// - For each matched event opsbot POSTs a JSON request: version, skill, bot,
//   room_id, timestamp, delivery_id, event (event_id, type, sender, body,
//   content -- decrypted --, encrypted, relates_to), match (kind "command",
//   "regex" or "event"; pattern, command, args, regex_groups) and memory (this
//   skill's key/value memory in the room).
// - Headers: X-Opsbot-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>,
//   X-Opsbot-Timestamp, X-Opsbot-Skill, X-Opsbot-Delivery. Check the signature
//   over the raw bytes, in constant time, before anything else; answer 401 if
//   it is wrong. A request older than five minutes is refused too.
// - Answer 200 with {"actions": [...]} (at most 20), or 204 for nothing to do.
//   Actions: reply {text, html?}, respond {text}, react {key}, edit {event_id,
//   text}, redact {event_id, reason?}, send_file {name, mimetype, data_base64},
//   set_memory {key, value}, delete_memory {key}. Anything else is refused by
//   opsbot as nonsense, and the person gets an apology.

import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { parseArgs } from "node:util";

const MAX_REQUEST = 2 << 20; // opsbot's requests are far smaller
const MAX_AGE = 300; // seconds a request may be old (or early: clocks differ)

// The skill itself: takes a verified request, returns the actions.
function weather(req) {
  const match = req.match ?? {};
  if (match.kind === "command" && match.command === "weather") {
    let city = (match.args?.city ?? "").trim();
    if (!city) city = req.memory?.last_city ?? "";
    if (!city) return [{ type: "reply", text: "Which city? For example: weather Berlin" }];
    return [
      { type: "reply", text: `Weather for ${city}: sunny` },
      { type: "set_memory", key: "last_city", value: city },
    ];
  }
  if (match.kind === "regex") return [{ type: "react", key: "👍" }]; // our only regex: thanks
  return [];
}

function signatureOK(secret, body, header) {
  const expected = Buffer.from("sha256=" + createHmac("sha256", secret).update(body).digest("hex"));
  const given = Buffer.from(header ?? "");
  // timingSafeEqual needs equal lengths; the length of a valid signature is no secret.
  return given.length === expected.length && timingSafeEqual(given, expected);
}

function answer(res, status, payload) {
  const data = payload === undefined ? "" : JSON.stringify(payload);
  const headers = { "Content-Length": Buffer.byteLength(data) };
  if (data) headers["Content-Type"] = "application/json";
  res.writeHead(status, headers);
  res.end(data);
}

function handle(secret, req, res, body) {
  // 1. The signature, over the raw bytes, compared in constant time.
  if (!signatureOK(secret, body, req.headers["x-opsbot-signature"])) {
    return answer(res, 401, { error: "bad signature" });
  }
  // 2. Only then trust the body.
  let request;
  try {
    request = JSON.parse(body.toString("utf8"));
  } catch {
    return answer(res, 400, { error: "not JSON" });
  }
  if (request.version !== 1) return answer(res, 400, { error: "unsupported protocol version" });
  if (Math.abs(Date.now() / 1000 - (request.timestamp ?? 0)) > MAX_AGE) {
    return answer(res, 401, { error: "stale request" });
  }
  const actions = weather(request);
  if (actions.length === 0) return answer(res, 204);
  answer(res, 200, { actions });
}

function main() {
  const { values } = parseArgs({
    options: {
      port: { type: "string" },
      host: { type: "string", default: "127.0.0.1" },
      secret: { type: "string", default: process.env.WEATHER_SKILL_SECRET ?? "" },
    },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port <= 0) {
    console.error("usage: node weather_skill.mjs --port N --secret S");
    process.exit(2);
  }
  if (values.secret.length < 16) {
    console.error("weather_skill.mjs: --secret (or WEATHER_SKILL_SECRET) must be at least 16 characters");
    process.exit(2);
  }
  const server = createServer((req, res) => {
    if (req.method !== "POST") return answer(res, 405, { error: "POST only" });
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_REQUEST) {
        answer(res, 413, { error: "too large" });
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => {
      if (size > MAX_REQUEST) return;
      handle(values.secret, req, res, Buffer.concat(chunks));
      // One short line per request; never the body (it holds people's messages).
      console.error(`weather_skill.mjs: ${req.method} ${req.url} ${res.statusCode}`);
    });
  });
  server.listen(port, values.host, () => {
    console.error(`weather_skill.mjs: listening on http://${values.host}:${port}/`);
  });
  for (const sig of ["SIGINT", "SIGTERM"]) {
    process.on(sig, () => {
      server.close(() => process.exit(0));
      server.closeIdleConnections();
      setTimeout(() => process.exit(0), 2000).unref();
    });
  }
}

main();
