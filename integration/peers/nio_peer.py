#!/usr/bin/python3
"""A person's Matrix client with real end-to-end encryption, for opsbot's
integration tests: matrix-nio with libolm, as Debian ships them
(python3-matrix-nio, python3-olm). Run it with the system /usr/bin/python3.

It speaks the line protocol described in integration/peers/peer.go: one JSON
command per line on stdin, one JSON answer per line on stdout. Only protocol
lines go to stdout; everything else (nio's own logging included) goes to
stderr.

Every message the background /sync loop sees in joined rooms' timelines is
kept in a per-room buffer, so messages that arrived before a wait_message was
asked for still count; history from before this device logged in or joined
the room is left out. Encrypted events whose room key has not arrived yet
stay in the buffer undecrypted and are retried after every sync (and while a
wait is running); a key request goes out once for each such event that is
still undecryptable after KEY_REQUEST_AFTER seconds.
"""

import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback

# Keep the protocol channel to ourselves: anything else that writes to
# stdout (a stray print, a library) lands on stderr instead.
_PROTO = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr

import logbook  # noqa: E402  (nio logs through logbook)

from nio import (  # noqa: E402
    AsyncClient,
    AsyncClientConfig,
    DownloadError,
    JoinError,
    JoinedMembersError,
    KeysQueryError,
    KeysUploadError,
    LoginError,
    LogoutError,
    MegolmEvent,
    RoomCreateError,
    RoomInviteError,
    RoomLeaveError,
    RoomMemberEvent,
    RoomPreset,
    RoomSendError,
    SyncError,
    UploadError,
)
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment  # noqa: E402
from nio.exceptions import EncryptionError, LocalProtocolError  # noqa: E402

log = logging.getLogger("nio_peer")

SYNC_TIMEOUT_MS = 5000
# The timeline limit of each /sync, large enough that a busy test room does
# not get a "limited" timeline between two syncs.
SYNC_FILTER = {"room": {"timeline": {"limit": 200}}}
# How long a room we created or joined may take to show up in /sync.
ROOM_WAIT_S = 30.0
# An event still undecryptable after this long gets one m.room_key_request.
KEY_REQUEST_AFTER = 2.0
# An undecryptable event blocks later messages of the same sender (timeline
# order) for at most this long after it arrived; after that a wait may skip
# it (it stays in the buffer and is returned later if its key comes).
LATE_KEY_GRACE = 5.0
FILE_MSGTYPES = ("m.file", "m.image", "m.audio", "m.video")


class Failure(Exception):
    """A command failed; its text goes back as {"error": ...}."""


class Record:
    """One timeline event of a joined room, as this device sees it."""

    __slots__ = (
        "event_id", "sender", "event", "encrypted", "arrived", "returned",
        "key_requested", "last_error",
    )

    def __init__(self, event, encrypted):
        self.event_id = event.event_id
        self.sender = event.sender
        self.event = event  # MegolmEvent while undecrypted
        self.encrypted = encrypted
        self.arrived = time.monotonic()
        self.returned = False
        self.key_requested = False
        self.last_error = ""

    @property
    def pending(self):
        return isinstance(self.event, MegolmEvent)

    @property
    def type(self):
        return self.event.source.get("type", "")

    @property
    def content(self):
        c = self.event.source.get("content")
        return c if isinstance(c, dict) else {}

    def is_message(self):
        return not self.pending and self.type == "m.room.message"


class Peer:
    def __init__(self):
        self.client = None
        self.store_dir = tempfile.mkdtemp(prefix="nio-peer-")
        self.sync_task = None
        self.timelines = {}  # room_id -> [Record] in timeline order
        self.seen = set()  # event IDs already buffered
        self.tick = asyncio.Event()
        # Serialises nio's key bookkeeping (upload, query, claim, sharing):
        # the sync loop and the commands must not run them at the same time.
        self.crypto_lock = asyncio.Lock()
        self.sync_error = ""

    # ---- plumbing -------------------------------------------------------

    def notify(self):
        self.tick.set()
        self.tick = asyncio.Event()

    async def until(self, deadline, what):
        """Sleep until the next sync result or a short poll interval."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"timed out waiting for {what}" + (f" (last sync error: {self.sync_error})" if self.sync_error else ""))
        try:
            await asyncio.wait_for(self.tick.wait(), min(left, 0.5))
        except asyncio.TimeoutError:
            pass

    def need_client(self):
        if self.client is None or not self.client.logged_in:
            raise Failure("not logged in")
        return self.client

    async def wait_room(self, room_id, encrypted=None, timeout=ROOM_WAIT_S):
        """Wait until /sync has shown the joined room (and, if asked, its
        encryption state)."""
        client = self.need_client()
        deadline = time.monotonic() + timeout
        while True:
            room = client.rooms.get(room_id)
            if room is not None and (encrypted is None or room.encrypted == encrypted):
                return room
            await self.until(deadline, f"room {room_id} to appear in /sync")

    # ---- the sync loop --------------------------------------------------

    async def sync_once(self, timeout_ms, first=False):
        """One /sync; buffers the messages it brings. Everything in the
        first sync after login, and whatever precedes our own join in a
        room's timeline, happened before this device was in the room: that
        history is not buffered (no wait returns it, and its keys, which
        this device was never meant to get, cannot hold up later messages)."""
        client = self.client
        resp = await client.sync(timeout=timeout_ms, sync_filter=SYNC_FILTER, full_state=first or None)
        if isinstance(resp, SyncError):
            raise Failure(f"sync: {resp.message}")
        async with self.crypto_lock:
            await self.key_maintenance()
        for room_id, info in resp.rooms.join.items():
            line = self.timelines.setdefault(room_id, [])
            events = info.timeline.events
            start = len(events) if first else 0
            for i, ev in enumerate(events):
                if (isinstance(ev, RoomMemberEvent) and ev.state_key == client.user_id
                        and ev.membership == "join" and ev.prev_membership != "join"):
                    start = max(start, i + 1)
            for ev in events[:start]:
                eid = getattr(ev, "event_id", None)
                if eid:
                    self.seen.add(eid)
            if start:
                log.info("%s: %d timeline events from before this device was in the room, not buffered", room_id, start)
            for ev in events[start:]:
                eid = getattr(ev, "event_id", None)
                if not eid or eid in self.seen:
                    continue
                self.seen.add(eid)
                if isinstance(ev, MegolmEvent):
                    ev.room_id = room_id
                    rec = Record(ev, True)
                else:
                    src = ev.source if isinstance(getattr(ev, "source", None), dict) else {}
                    if src.get("type") != "m.room.message" and not getattr(ev, "decrypted", False):
                        continue
                    rec = Record(ev, bool(getattr(ev, "decrypted", False)))
                    if rec.type != "m.room.message":
                        continue  # a decrypted non-message (reaction, ...)
                line.append(rec)
        await self.retry_decryption()
        self.notify()

    async def key_maintenance(self):
        client = self.client
        try:
            await client.send_to_device_messages()
            if client.should_upload_keys:
                await client.keys_upload()
            if client.should_query_keys:
                await client.keys_query()
            if client.should_claim_keys:
                await client.keys_claim(client.get_users_for_key_claiming())
        except LocalProtocolError as e:
            log.info("key maintenance: %s", e)

    async def retry_decryption(self):
        """Try again to decrypt every buffered event whose key was missing;
        request each missing key once."""
        client = self.client
        now = time.monotonic()
        # Snapshots: the sync loop may add rooms and events while this
        # coroutine waits on a key request.
        for room_id, line in list(self.timelines.items()):
            for rec in list(line):
                if not rec.pending:
                    continue
                try:
                    ev = client.decrypt_event(rec.event)
                except EncryptionError as e:
                    rec.last_error = str(e)
                    if not rec.key_requested and now - rec.arrived >= KEY_REQUEST_AFTER:
                        rec.key_requested = True
                        try:
                            await client.request_room_key(rec.event)
                            log.info("requested the room key for %s (session %s)", rec.event_id, rec.event.session_id)
                        except LocalProtocolError as e2:
                            log.info("room key request for %s: %s", rec.event_id, e2)
                        except Exception as e2:  # noqa: BLE001
                            log.warning("room key request for %s failed: %s", rec.event_id, e2)
                    continue
                log.info("decrypted %s late (%.1fs after it arrived)", rec.event_id, now - rec.arrived)
                rec.event = ev
                rec.last_error = ""

    async def sync_loop(self):
        while True:
            try:
                await self.sync_once(SYNC_TIMEOUT_MS)
                self.sync_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self.sync_error = str(e) or type(e).__name__
                log.warning("sync failed: %s", self.sync_error)
                await asyncio.sleep(1)

    # ---- commands -------------------------------------------------------

    async def cmd_login(self, req):
        if self.client is not None:
            raise Failure("already logged in")
        homeserver, user_id = req["homeserver"], req["user_id"]
        config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        client = AsyncClient(
            homeserver, user_id, device_id=req.get("device_id") or None,
            store_path=self.store_dir, config=config,
        )
        resp = await client.login(req["password"], device_name="nio peer")
        if isinstance(resp, LoginError):
            await client.close()
            raise Failure(f"login: {resp.message}")
        self.client = client
        if not client.olm:
            raise Failure("login: nio has no Olm machine (is python3-olm installed?)")
        async with self.crypto_lock:
            if client.should_upload_keys:
                r = await client.keys_upload()
                if isinstance(r, KeysUploadError):
                    raise Failure(f"keys upload: {r.message}")
        # The first sync (full state) before answering, so the rooms the
        # user is already in are known; then keep syncing in the background.
        await self.sync_once(0, first=True)
        self.sync_task = asyncio.ensure_future(self.sync_loop())
        log.info("logged in as %s device %s", client.user_id, client.device_id)
        return {"user_id": client.user_id, "device_id": client.device_id}

    async def cmd_create_room(self, req):
        client = self.need_client()
        encrypted = bool(req.get("encrypted"))
        initial_state = []
        if encrypted:
            initial_state.append({
                "type": "m.room.encryption", "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            })
        resp = await client.room_create(
            name=req.get("name") or None,
            preset=RoomPreset.private_chat,
            invite=list(req.get("invite") or []),
            initial_state=initial_state,
        )
        if isinstance(resp, RoomCreateError):
            raise Failure(f"create_room: {resp.message}")
        await self.wait_room(resp.room_id, encrypted=True if encrypted else None)
        return {"room_id": resp.room_id}

    async def cmd_join(self, req):
        client = self.need_client()
        resp = await client.join(req["room_id"])
        if isinstance(resp, JoinError):
            raise Failure(f"join: {resp.message}")
        await self.wait_room(resp.room_id)
        return {}

    async def cmd_invite(self, req):
        resp = await self.need_client().room_invite(req["room_id"], req["user_id"])
        if isinstance(resp, RoomInviteError):
            raise Failure(f"invite: {resp.message}")
        return {}

    async def cmd_leave(self, req):
        resp = await self.need_client().room_leave(req["room_id"])
        if isinstance(resp, RoomLeaveError):
            raise Failure(f"leave: {resp.message}")
        return {}

    async def prepare_encrypted_send(self, room_id):
        """Make sure the current Megolm session reaches every device of
        every member, as the server sees the room now (our /sync may lag
        behind a join that just happened). Call with crypto_lock held."""
        client = self.client
        resp = await client.joined_members(room_id)
        if isinstance(resp, JoinedMembersError):
            raise Failure(f"joined_members: {resp.message}")
        room = client.rooms[room_id]
        # Query every member's devices again: a device added since our last
        # sync must get the room key too.
        client.olm.users_for_key_query.update(room.users.keys())
        resp = await client.keys_query()
        if isinstance(resp, KeysQueryError):
            raise Failure(f"keys_query: {resp.message}")
        session = client.olm.outbound_group_sessions.get(room_id)
        if session is None or not session.shared:
            return
        for user_id in room.users:
            for device in client.device_store.active_user_devices(user_id):
                key = (user_id, device.id)
                if key not in session.users_shared_with and key not in session.users_ignored:
                    log.info("device %s of %s lacks the room key of %s: starting a new session", device.id, user_id, room_id)
                    client.invalidate_outbound_session(room_id)
                    return

    async def send_content(self, room_id, content):
        client = self.need_client()
        room = await self.wait_room(room_id)
        async with self.crypto_lock:
            if room.encrypted:
                await self.prepare_encrypted_send(room_id)
            resp = await client.room_send(room_id, "m.room.message", content, ignore_unverified_devices=True)
        if isinstance(resp, RoomSendError):
            raise Failure(f"send: {resp.message}")
        return {"event_id": resp.event_id}

    async def cmd_send(self, req):
        return await self.send_content(req["room_id"], {"msgtype": "m.text", "body": req["body"]})

    async def cmd_send_file(self, req):
        client = self.need_client()
        room_id, path = req["room_id"], req["path"]
        mimetype = req.get("mimetype") or "application/octet-stream"
        room = await self.wait_room(room_id)
        with open(path, "rb") as f:
            data = f.read()
        name = os.path.basename(path)
        major = mimetype.split("/", 1)[0]
        msgtype = {"image": "m.image", "video": "m.video", "audio": "m.audio"}.get(major, "m.file")
        content = {
            "msgtype": msgtype, "body": name, "filename": name,
            "info": {"mimetype": mimetype, "size": len(data)},
        }
        if room.encrypted:
            ciphertext, keys = encrypt_attachment(data)
            resp, _ = await client.upload(io.BytesIO(ciphertext), content_type="application/octet-stream",
                                          filename=name, filesize=len(ciphertext))
            if isinstance(resp, UploadError):
                raise Failure(f"upload: {resp.message}")
            content["file"] = dict(keys, url=resp.content_uri, mimetype=mimetype)
        else:
            resp, _ = await client.upload(io.BytesIO(data), content_type=mimetype, filename=name, filesize=len(data))
            if isinstance(resp, UploadError):
                raise Failure(f"upload: {resp.message}")
            content["url"] = resp.content_uri
        return await self.send_content(room_id, content)

    def next_record(self, room_id, sender, want):
        """The first message from sender in the room that was not returned
        before and satisfies want, in timeline order; None if there is none
        yet. An earlier event of the sender that is still undecryptable holds
        it back (it may turn out to be the message asked for) until
        LATE_KEY_GRACE after its arrival."""
        now = time.monotonic()
        for rec in self.timelines.get(room_id, []):
            if rec.returned or (sender and rec.sender != sender):
                continue
            if rec.pending:
                if now - rec.arrived < LATE_KEY_GRACE:
                    return None
                continue
            if rec.is_message() and want(rec):
                return rec
        return None

    def undecryptable(self, room_id, sender):
        return [r for r in self.timelines.get(room_id, [])
                if r.pending and not r.returned and (not sender or r.sender == sender)]

    async def wait_for(self, req, want, what):
        self.need_client()
        room_id, sender = req["room_id"], req.get("sender") or ""
        deadline = time.monotonic() + int(req.get("timeout_ms") or 30000) / 1000.0
        while True:
            await self.retry_decryption()
            rec = self.next_record(room_id, sender, want)
            if rec is not None:
                rec.returned = True
                return rec
            if time.monotonic() >= deadline:
                stuck = self.undecryptable(room_id, sender)
                extra = ""
                if stuck:
                    extra = "; still undecryptable from that sender: " + ", ".join(
                        f"{r.event_id} ({r.last_error or 'no key'})" for r in stuck[:5])
                if self.sync_error:
                    extra += f"; last sync error: {self.sync_error}"
                raise Failure(f"no {what} from {sender or 'anyone'} in {room_id} within {req.get('timeout_ms')} ms{extra}")
            await self.until(deadline + 1, what)

    async def cmd_wait_message(self, req):
        rec = await self.wait_for(req, lambda r: True, "message")
        c = rec.content
        return {
            "event_id": rec.event_id, "body": c.get("body", ""), "msgtype": c.get("msgtype", ""),
            "encrypted": rec.encrypted, "sender": rec.sender,
            "formatted_body": c.get("formatted_body", ""), "mentions": c.get("m.mentions"),
        }

    async def cmd_wait_file(self, req):
        client = self.need_client()
        rec = await self.wait_for(req, lambda r: r.content.get("msgtype") in FILE_MSGTYPES, "file")
        c = rec.content
        enc = c.get("file") if isinstance(c.get("file"), dict) else None
        url = enc["url"] if enc else c.get("url")
        if not url:
            raise Failure(f"file event {rec.event_id} has neither file nor url")
        resp = await client.download(url)
        if isinstance(resp, DownloadError):
            # nio 0.20 predates authenticated media (MSC3916), which Synapse
            # serves by default: fetch it from the client API as clients
            # of today do.
            data = await self.download_authenticated(client, url)
        else:
            data = resp.body
        if enc:
            try:
                data = decrypt_attachment(data, enc["key"]["k"], enc["hashes"]["sha256"], enc["iv"])
            except (EncryptionError, KeyError) as e:
                raise Failure(f"decrypting attachment of {rec.event_id}: {e}")
        save_to = req.get("save_to")
        if save_to:
            os.makedirs(os.path.dirname(os.path.abspath(save_to)), exist_ok=True)
            with open(save_to, "wb") as f:
                f.write(data)
        return {
            "event_id": rec.event_id, "name": c.get("filename") or c.get("body", ""),
            "sha256": hashlib.sha256(data).hexdigest(),
            # Encrypted means the event came encrypted and so did the file.
            "encrypted": bool(rec.encrypted and enc),
        }

    async def download_authenticated(self, client, url):
        server, media_id = url.removeprefix("mxc://").split("/", 1)
        endpoint = f"{client.homeserver}/_matrix/client/v1/media/download/{server}/{media_id}"
        async with client.client_session.get(endpoint, headers={"Authorization": f"Bearer {client.access_token}"}) as r:
            if r.status != 200:
                raise Failure(f"download {url}: HTTP {r.status} from {endpoint}: {(await r.text())[:200]}")
            return await r.read()

    async def cmd_is_encrypted(self, req):
        client = self.need_client()
        room_id = req["room_id"]
        room = client.rooms.get(room_id) or client.invited_rooms.get(room_id)
        if room is None:
            room = await self.wait_room(room_id, timeout=10)
        return {"encrypted": bool(room.encrypted)}

    async def cmd_logout(self, req):
        await self.stop_sync()
        client, self.client = self.client, None
        if client is not None:
            try:
                if client.logged_in:
                    resp = await client.logout()
                    if isinstance(resp, LogoutError):
                        raise Failure(f"logout: {resp.message}")
            finally:
                await client.close()
        return {}

    async def stop_sync(self):
        if self.sync_task is not None:
            self.sync_task.cancel()
            try:
                await self.sync_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self.sync_task = None

    async def shutdown(self):
        await self.stop_sync()
        if self.client is not None:
            await self.client.close()
        shutil.rmtree(self.store_dir, ignore_errors=True)


def answer(obj):
    _PROTO.write(json.dumps(obj) + "\n")
    _PROTO.flush()


async def main():
    peer = Peer()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
                cmd = req.get("cmd", "")
                handler = getattr(peer, "cmd_" + cmd, None) if cmd else None
                if handler is None:
                    raise Failure(f"unknown command {cmd!r}")
                started = time.monotonic()
                out = await handler(req)
                log.info("%s done in %.0f ms", cmd, (time.monotonic() - started) * 1000)
                answer(out)
            except Failure as e:
                log.info("command failed: %s", e)
                answer({"error": str(e)})
            except KeyError as e:
                answer({"error": f"missing field {e}"})
            except Exception as e:  # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                answer({"error": f"{type(e).__name__}: {e}"})
    finally:
        await peer.shutdown()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s nio-peer %(levelname)s %(message)s")
    logbook.StderrHandler(level="WARNING").push_application()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
