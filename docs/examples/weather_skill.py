#!/usr/bin/env python3
r"""An opsbot external skill in Python, standard library only.

    python3 weather_skill.py --port 8081 --secret 'a-long-random-secret'

(or put the secret in the environment as WEATHER_SKILL_SECRET, which keeps
it out of `ps`). Declare it in opsbot.yaml:

    external_skills:
      - name: weather-py
        url: http://127.0.0.1:8081/
        secret: a-long-random-secret          # or OPSBOT_SKILL_WEATHER_PY_SECRET
        commands:
          - pattern: "weather {city...?}"
            help: the weather for a city (the last one asked if none is given)
        regexes: ['(?i)\bthanks\b']

The protocol (version 1; docs/skills.md#external-skills has all of it):

- For each matched event opsbot POSTs a JSON request: version, skill, bot,
  room_id, timestamp, delivery_id, event (event_id, type, sender, body,
  content -- decrypted --, encrypted, relates_to), match (kind "command",
  "regex" or "event"; pattern, command, args, regex_groups) and memory (this
  skill's key/value memory in the room).
- Headers: X-Opsbot-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>,
  X-Opsbot-Timestamp, X-Opsbot-Skill, X-Opsbot-Delivery. Check the signature
  over the raw bytes, in constant time, before anything else; answer 401 if
  it is wrong. A request older than five minutes is refused too.
- Answer 200 with {"actions": [...]} (at most 20), or 204 for nothing to do.
  Actions: reply {text, html?}, respond {text}, react {key}, edit {event_id,
  text}, redact {event_id, reason?}, send_file {name, mimetype, data_base64},
  set_memory {key, value}, delete_memory {key}. Anything else is refused by
  opsbot as nonsense, and the person gets an apology.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_REQUEST = 2 << 20  # opsbot's requests are far smaller
MAX_AGE = 300  # seconds a request may be old (or early: clocks differ)


def weather(req):
    """The skill itself: takes a verified request, returns the actions."""
    match = req.get("match", {})
    if match.get("kind") == "command" and match.get("command") == "weather":
        city = match.get("args", {}).get("city", "").strip()
        if not city:
            city = req.get("memory", {}).get("last_city")
        if not city:
            return [{"type": "reply", "text": "Which city? For example: weather Berlin"}]
        return [
            {"type": "reply", "text": f"Weather for {city}: sunny"},
            {"type": "set_memory", "key": "last_city", "value": city},
        ]
    if match.get("kind") == "regex":  # our only regex: thanks
        return [{"type": "react", "key": "👍"}]
    return []


class Handler(BaseHTTPRequestHandler):
    secret = b""

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_REQUEST:
            return self.answer(413 if length > MAX_REQUEST else 400, {"error": "bad length"})
        body = self.rfile.read(length)
        # 1. The signature, over the raw bytes, compared in constant time.
        expected = b"sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest().encode()
        given = self.headers.get("X-Opsbot-Signature", "").encode("latin-1", "replace")
        if not hmac.compare_digest(expected, given):
            return self.answer(401, {"error": "bad signature"})
        # 2. Only then trust the body.
        try:
            req = json.loads(body)
        except ValueError:
            return self.answer(400, {"error": "not JSON"})
        if req.get("version") != 1:
            return self.answer(400, {"error": "unsupported protocol version"})
        if abs(time.time() - req.get("timestamp", 0)) > MAX_AGE:
            return self.answer(401, {"error": "stale request"})
        actions = weather(req)
        if not actions:
            return self.answer(204, None)
        self.answer(200, {"actions": actions})

    def do_GET(self):
        self.answer(405, {"error": "POST only"})

    def answer(self, status, payload):
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        # One short line per request; never the body (it holds people's messages).
        sys.stderr.write("weather_skill.py: %s\n" % (fmt % args))


def main():
    p = argparse.ArgumentParser(description="opsbot external skill example: weather")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--secret", default=os.environ.get("WEATHER_SKILL_SECRET", ""))
    args = p.parse_args()
    if len(args.secret) < 16:
        p.error("--secret (or WEATHER_SKILL_SECRET) must be at least 16 characters")
    Handler.secret = args.secret.encode()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"weather_skill.py: listening on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
