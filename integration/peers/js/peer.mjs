// peer.mjs: matrix-js-sdk (Rust crypto: vodozemac compiled to WASM) as a
// person's client in opsbot's integration tests. It is the other side of the
// line-based JSON protocol described in ../peer.go: one command per line on
// stdin, one JSON answer per line on stdout. Only protocol lines go to stdout;
// everything else (the SDK's logging included) goes to stderr.
//
// Set OPSBOT_PEER_DEBUG=1 for the SDK's debug logging (very verbose).
//
// Choices beyond peer.go, the same as the nio peer's (../nio_peer.py):
//   - Every message in joined rooms' timelines is buffered from login on;
//     history from before this device logged in (the first sync) or joined
//     the room is left out. wait_message returns the next m.room.message of
//     any msgtype from the sender (anyone if sender is empty) that no wait has
//     returned; wait_file the next file-like one (m.file, m.image, m.video,
//     m.audio), leaving other messages for wait_message.
//   - An event whose room key has not come yet holds back later messages of
//     its sender for up to LATE_KEY_GRACE_MS after it arrived; then waits pass
//     over it, and it is returned later if its key comes after all (the SDK
//     retries decryption when a key arrives; so does a waiting command).
//   - login answers once the first sync is done and the server hands out
//     this device's keys; create_room and join once the room has come down
//     /sync as joined (and, if encrypted, the crypto layer knows it is).
//   - Before each encrypted send the devices of all tracked users are queried
//     again, so a device that logged in a moment ago gets the room key even if
//     our /sync has not brought the device-list change yet. (Element relies on
//     /sync alone; this keeps tests free of that race.)
//   - wait_file's "encrypted" means the event and the file both were.
//   - Verification (the verify_* commands): one at a time per peer, its
//     request, verifier and outcome kept below. Incoming requests are
//     buffered from login on, so verify_accept finds one that came before it.
//     verifier.verify() (which resolves only when the whole verification is
//     done) runs in the background as soon as there is a verifier, so the
//     other side's m.key.verification.start is accepted at once, before any
//     verify_sas; verify_sas answers as soon as the SAS can be shown, and
//     verify_wait_done waits for the end.

import { Console } from "node:console";
import { createHash, randomBytes, webcrypto } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import readline from "node:readline";
import { formatWithOptions } from "node:util";

// Keep stdout for the protocol: whatever else writes to it (console.log,
// console.info, loglevel) goes to stderr instead.
const protocolWrite = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);
// Each log record becomes one stderr line with a time stamp (the Rust crypto
// logs span several lines, with source locations), so that the tail the Go
// side prints when a test fails holds as many records as it can.
const debug = !!process.env.OPSBOT_PEER_DEBUG;
const started = Date.now();
function logLine(level, args) {
    const text = formatWithOptions({ colors: false, breakLength: Infinity }, ...args)
        .replace(/\n\s*at \/home\/runner\/\.cargo\/\S*/g, "")
        .replace(/\s*\n\s*/g, " | ");
    process.stderr.write(`+${((Date.now() - started) / 1000).toFixed(3)}s ${level} ${text}\n`);
}
const log = (...args) => logLine("peer", args);
const errConsole = new Console({ stdout: process.stderr, stderr: process.stderr });
for (const level of ["log", "info", "warn", "error", "debug", "trace"]) {
    errConsole[level] = debug || (level !== "debug" && level !== "trace") ? (...args) => logLine(level, args) : () => {};
}
globalThis.console = errConsole;

// Load the SDK and compile the crypto WASM while the test is still busy
// elsewhere (starting the homeserver, registering users): it takes a second
// or two of CPU.
const sdkPromise = import("matrix-js-sdk");
const cryptoApiPromise = import("matrix-js-sdk/lib/crypto-api/index.js");
const wasmPromise = import("@matrix-org/matrix-sdk-crypto-wasm").then((m) => m.initAsync());
sdkPromise.catch(() => {});
cryptoApiPromise.catch(() => {});
wasmPromise.catch(() => {});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let sdk; // the matrix-js-sdk module, once loaded
let client = null; // the logged-in MatrixClient
let myUserID = ""; // its user ID (kept after logout, for late events)
let homeserver = ""; // base URL
const encryptedRooms = new Set(); // rooms the crypto layer knows to be encrypted (that never changes back)
let cryptoApi; // matrix-js-sdk/lib/crypto-api: VerificationPhase, VerifierEvent, CryptoEvent, ...

// ---- the timeline buffer ---------------------------------------------------

// An undecryptable event holds back later messages of its sender (it may be
// the one asked for) for at most this long after it arrived; after that a
// wait passes over it, and it is returned later if its key comes after all.
const LATE_KEY_GRACE_MS = 5000;

let live = false; // set after the first sync: its history is not buffered
const buffer = []; // {ev, arrived, done} in the order the events reached the timeline
const seenIDs = new Set();
let wakers = [];

function wake() {
    const ws = wakers;
    wakers = [];
    for (const w of ws) w();
}

// changed resolves on the next buffered event or decryption, or after ms.
function changed(ms) {
    return new Promise((resolve) => {
        const timer = setTimeout(resolve, ms);
        wakers.push(() => {
            clearTimeout(timer);
            resolve();
        });
    });
}

function onTimeline(ev, room, _toStartOfTimeline, removed) {
    if (removed) return;
    const id = ev.getId();
    if (!id || id.startsWith("~") || ev.status !== null) return; // our own local echo
    if (seenIDs.has(id)) return;
    seenIDs.add(id);
    if (!live) return; // history from before this device logged in
    if (ev.getType() === "m.room.member" && ev.getStateKey() === myUserID &&
        ev.getContent().membership === "join" && ev.getPrevContent()?.membership !== "join") {
        // We just joined: what came before is history from before this
        // device was in the room (its keys were never meant for us).
        let n = 0;
        for (const item of buffer) {
            if (!item.done && item.ev.getRoomId() === room.roomId) {
                item.done = true;
                n++;
            }
        }
        if (n) log(`${room.roomId}: ${n} events from before we joined, not buffered`);
        return;
    }
    if (ev.getType() !== "m.room.message" && !ev.isEncrypted()) return;
    buffer.push({ ev, arrived: Date.now(), done: false });
    wake();
}

const fileMsgtypes = new Set(["m.file", "m.image", "m.video", "m.audio"]);

// undecryptable reports whether ev is encrypted and not (yet) decrypted.
function undecryptable(ev) {
    return ev.isEncrypted() && (ev.isBeingDecrypted() || ev.shouldAttemptDecryption() || ev.isDecryptionFailure());
}

// nextMatch finds the first buffered, unreturned message from sender (anyone
// if empty) in roomID, file-like if fileOnly. It returns {item} for a
// deliverable one, {blocked: ev} while an undecryptable event within its
// grace period holds the line, or {} when there is nothing yet.
function nextMatch(roomID, sender, fileOnly) {
    const now = Date.now();
    for (const item of buffer) {
        if (item.done) continue;
        const ev = item.ev;
        if (ev.getRoomId() !== roomID || (sender && ev.getSender() !== sender)) continue;
        if (undecryptable(ev)) {
            if (now - item.arrived < LATE_KEY_GRACE_MS) return { blocked: ev };
            continue;
        }
        if (ev.getType() !== "m.room.message" || ev.isRedacted()) continue;
        if (fileOnly && !fileMsgtypes.has(ev.getContent().msgtype)) continue;
        return { item };
    }
    return {};
}

function stuckEvents(roomID, sender) {
    return buffer.filter((it) => !it.done && it.ev.getRoomId() === roomID && (!sender || it.ev.getSender() === sender) && undecryptable(it.ev)).map((it) => it.ev);
}

async function waitFor(roomID, sender, timeoutMs, fileOnly) {
    const deadline = Date.now() + timeoutMs;
    let lastRetry = Date.now();
    for (;;) {
        const m = nextMatch(roomID, sender, fileOnly);
        if (m.item) {
            m.item.done = true;
            return m.item.ev;
        }
        const left = deadline - Date.now();
        const stuck = stuckEvents(roomID, sender);
        if (left <= 0) {
            let why = "";
            if (stuck.length) {
                why = "; still undecryptable from that sender: " + stuck.slice(0, 5).map((ev) =>
                    `${ev.getId()} (${ev.isDecryptionFailure() ? ev.decryptionFailureReason : "decrypting"})`).join(", ");
            }
            throw new Error(`no ${fileOnly ? "file" : "message"} from ${sender || "anyone"} in ${roomID} within ${timeoutMs} ms${why}`);
        }
        // The SDK retries on its own when a room key arrives; try again now
        // and then as well, in case the key came by a path that did not retry.
        if (Date.now() - lastRetry > 2000) {
            lastRetry = Date.now();
            for (const ev of stuck) {
                if (ev.isDecryptionFailure()) ev.attemptDecryption(client.getCrypto(), { isRetry: true }).catch(() => {});
            }
        }
        await changed(Math.min(left, 500));
    }
}

// ---- rooms -----------------------------------------------------------------

// roomReady waits until roomID has come down /sync with us joined, and, if the
// room is encrypted, until the crypto layer knows it (it refuses to encrypt
// for a room it has not seen the m.room.encryption event of). It returns
// whether the room is encrypted.
async function roomReady(roomID, timeoutMs = 30000) {
    const deadline = Date.now() + timeoutMs;
    while (client.getRoom(roomID)?.getMyMembership() !== "join") {
        if (Date.now() > deadline) throw new Error(`room ${roomID} did not come down /sync as joined within ${timeoutMs} ms`);
        await sleep(50);
    }
    if (encryptedRooms.has(roomID)) return true;
    const crypto = client.getCrypto();
    if (await crypto.isEncryptionEnabledInRoom(roomID)) {
        encryptedRooms.add(roomID);
        return true;
    }
    // Not yet known locally: ask the server whether the room is encrypted.
    let encrypted = client.getRoom(roomID).hasEncryptionStateEvent();
    if (!encrypted) {
        try {
            await client.getStateEvent(roomID, "m.room.encryption", "");
            encrypted = true;
        } catch (e) {
            if (e.errcode !== "M_NOT_FOUND") throw e;
        }
    }
    if (!encrypted) return false;
    while (!(await crypto.isEncryptionEnabledInRoom(roomID))) {
        if (Date.now() > deadline) throw new Error(`room ${roomID} is encrypted, but the crypto layer did not learn it within ${timeoutMs} ms`);
        await sleep(50);
    }
    encryptedRooms.add(roomID);
    return true;
}

// ---- attachments (Matrix spec, "Sending encrypted attachments") -----------

const unpaddedB64 = (buf) => Buffer.from(buf).toString("base64").replace(/=+$/, "");

async function encryptAttachment(plain) {
    const keyBytes = randomBytes(32);
    const iv = Buffer.alloc(16);
    randomBytes(8).copy(iv, 0); // the low 8 bytes (the counter) stay zero
    const key = await webcrypto.subtle.importKey("raw", keyBytes, { name: "AES-CTR" }, true, ["encrypt", "decrypt"]);
    const cipher = Buffer.from(await webcrypto.subtle.encrypt({ name: "AES-CTR", counter: iv, length: 64 }, key, plain));
    const jwk = await webcrypto.subtle.exportKey("jwk", key);
    return {
        cipher,
        file: {
            v: "v2",
            key: { kty: "oct", key_ops: ["encrypt", "decrypt"], alg: "A256CTR", k: jwk.k, ext: true },
            iv: unpaddedB64(iv),
            hashes: { sha256: unpaddedB64(createHash("sha256").update(cipher).digest()) },
        },
    };
}

async function decryptAttachment(cipher, file) {
    if (file.v !== "v2") throw new Error(`unsupported encrypted attachment version ${JSON.stringify(file.v)}`);
    const want = file.hashes?.sha256;
    if (!want) throw new Error("encrypted attachment has no sha256 hash");
    const got = unpaddedB64(createHash("sha256").update(cipher).digest());
    if (got !== want.replace(/=+$/, "")) throw new Error(`encrypted attachment hash mismatch: got ${got}, want ${want}`);
    if (file.key?.alg !== "A256CTR" || file.key?.kty !== "oct") throw new Error(`unsupported attachment key ${JSON.stringify(file.key)}`);
    const key = await webcrypto.subtle.importKey("jwk", { kty: "oct", k: file.key.k, alg: "A256CTR", ext: true }, { name: "AES-CTR" }, false, ["decrypt"]);
    const iv = Buffer.from(file.iv, "base64");
    if (iv.length !== 16) throw new Error(`attachment IV is ${iv.length} bytes, want 16`);
    return Buffer.from(await webcrypto.subtle.decrypt({ name: "AES-CTR", counter: iv, length: 64 }, key, cipher));
}

// download fetches an mxc:// URI: the authenticated media endpoint first, the
// legacy one (all Dendrite v0.13.8 has) when the server does not know it.
async function download(mxc) {
    const m = /^mxc:\/\/([^/]+)\/([^/?#]+)$/.exec(mxc ?? "");
    if (!m) throw new Error(`not an mxc URI: ${JSON.stringify(mxc)}`);
    const tail = `${encodeURIComponent(m[1])}/${encodeURIComponent(m[2])}`;
    const headers = { Authorization: `Bearer ${client.getAccessToken()}` };
    let last = "";
    for (const prefix of ["/_matrix/client/v1/media/download/", "/_matrix/media/v3/download/"]) {
        const res = await fetch(homeserver + prefix + tail, { headers });
        if (res.ok) return Buffer.from(await res.arrayBuffer());
        last = `${prefix}: HTTP ${res.status} ${(await res.text()).slice(0, 200)}`;
        if (![400, 404, 405].includes(res.status)) break;
    }
    throw new Error(`downloading ${mxc}: ${last}`);
}

function msgtypeFor(mimetype) {
    if (mimetype.startsWith("image/")) return "m.image";
    if (mimetype.startsWith("video/")) return "m.video";
    if (mimetype.startsWith("audio/")) return "m.audio";
    return "m.file";
}

// keysPublished waits until the server hands out our device's identity keys,
// so that a sender who learns of the new device can encrypt for it as soon as
// login has answered.
async function keysPublished(userID, deviceID, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const res = await client.http.authedRequest("POST", "/keys/query", undefined, { device_keys: { [userID]: [deviceID] } });
        if (res.device_keys?.[userID]?.[deviceID]) return;
        if (Date.now() > deadline) throw new Error(`device ${deviceID} has not published its keys within ${timeoutMs} ms`);
        await sleep(50);
    }
}

// sendContent sends an m.room.message, encrypted when the room is.
async function sendContent(roomID, content) {
    if (await roomReady(roomID)) {
        // Query every tracked user's devices again, and wait for the answer,
        // before the room key is shared. (outgoingRequestsManager is private
        // in the SDK's types, not at run time; the SDK version is pinned.)
        const crypto = client.getCrypto();
        await crypto.markAllTrackedUsersAsDirty();
        await crypto.outgoingRequestsManager.doProcessOutgoingRequests();
    }
    const res = await client.sendMessage(roomID, content);
    return { event_id: res.event_id };
}

// ---- verification ------------------------------------------------------------

// One verification at a time: the request (made by verify_request or taken
// by verify_accept), its SAS verifier once there is one, the SAS callbacks
// once the SAS can be shown, and how verifier.verify() ended (null while it
// runs or before it is started).
let vreq = null;
let verifier = null;
let sasCallbacks = null;
let verifyOutcome = null; // {ok: true} | {error: Error}
const incomingRequests = []; // requests received and not yet taken by verify_accept

function onVerificationRequest(request) {
    log(`verification request ${request.transactionId} from ${request.otherUserId}/${request.otherDeviceId ?? "(in room " + request.roomId + ")"}`);
    incomingRequests.push(request);
}

function newVerification(request) {
    vreq = request;
    verifier = null;
    sasCallbacks = null;
    verifyOutcome = null;
    request.on(cryptoApi.VerificationRequestEvent.Change, () => adoptVerifier(request));
    adoptVerifier(request);
}

// adoptVerifier runs verifier.verify() in the background as soon as the
// current request has a verifier: ours after we sent the start (then verify()
// sends nothing), or the other side's when its start comes in (then verify()
// sends our m.key.verification.accept at once, as Element does). So the side
// that does not start needs no command to go on to the SAS, and the starter's
// verify_sas can wait for the SAS on its own.
function adoptVerifier(request) {
    if (vreq !== request || verifier) return;
    let v;
    try {
        v = request.verifier;
    } catch (e) {
        log(`verification ${request.transactionId}: no verifier yet: ${e?.message ?? e}`);
        return;
    }
    if (!v) return;
    verifier = v;
    const id = request.transactionId;
    log(`verification ${id}: ${request.initiatedByMe ? "we" : "they"} started ${request.chosenMethod}; running verify()`);
    v.on(cryptoApi.VerifierEvent.ShowSas, (cb) => {
        if (verifier === v) sasCallbacks = cb;
    });
    v.verify().then(
        () => {
            log(`verification ${id}: verify() resolved`);
            if (verifier === v) verifyOutcome = { ok: true };
        },
        (e) => {
            log(`verification ${id}: verify() rejected: ${e?.message ?? e}`);
            if (verifier === v) verifyOutcome = { error: e };
        },
    );
}

function needVerification() {
    needClient();
    if (!vreq) throw new Error("no verification in progress (verify_request or verify_accept first)");
}

// cancelInfo describes a cancelled request: the code, the reason (from the
// Rust request, which the SDK's interface leaves out; the SDK version is
// pinned) and who cancelled.
function cancelInfo(request) {
    let reason = "";
    try {
        reason = request.inner?.cancelInfo?.reason() ?? "";
    } catch {
        // the Rust object may be gone; the code is what matters
    }
    if (!reason && verifyOutcome?.error) {
        const m = /with code \S+: (.*)$/.exec(verifyOutcome.error.message ?? "");
        if (m) reason = m[1];
    }
    return { code: request.cancellationCode ?? "", reason, by: request.cancellingUserId ?? "" };
}

function cancelledError(request) {
    const c = cancelInfo(request);
    return new Error(`verification ${request.transactionId} cancelled by ${c.by || "?"}: code ${c.code || "?"}, reason ${JSON.stringify(c.reason)}`);
}

function isCancelled(request) {
    return request.phase === cryptoApi.VerificationPhase.Cancelled;
}

// until polls pred (which may throw to give up) every 50 ms until it returns
// something truthy, and returns that; after timeoutMs it throws, naming what
// (a string, or a function giving one).
async function until(pred, timeoutMs, what) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const v = await pred();
        if (v) return v;
        if (Date.now() > deadline) throw new Error(`${typeof what === "function" ? what() : what}: not within ${timeoutMs} ms`);
        await sleep(50);
    }
}

const phaseNames = { 1: "unsent", 2: "requested", 3: "ready", 4: "started", 5: "cancelled", 6: "done" };

// freshKeys queries userID's devices and cross-signing keys again and waits
// for the answer: the tracked users' (with sendContent's trick) and, if the
// user is not tracked, that user's.
async function freshKeys(userID) {
    const crypto = client.getCrypto();
    await crypto.markAllTrackedUsersAsDirty();
    await crypto.outgoingRequestsManager.doProcessOutgoingRequests();
    await crypto.getUserDeviceInfo([userID], true);
}

// serverKeys asks the server directly for userID's keys.
async function serverKeys(userID) {
    return await client.http.authedRequest("POST", "/keys/query", undefined, { device_keys: { [userID]: [] } });
}

// ---- commands --------------------------------------------------------------

function needClient() {
    if (!client) throw new Error("not logged in");
}

const commands = {
    async login(req) {
        if (client) throw new Error("already logged in");
        sdk = await sdkPromise;
        cryptoApi = await cryptoApiPromise;
        const { AllDevicesIsolationMode } = cryptoApi;
        homeserver = req.homeserver.replace(/\/+$/, "");
        const tmp = sdk.createClient({ baseUrl: homeserver });
        const login = await tmp.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: req.user_id },
            password: req.password,
            ...(req.device_id ? { device_id: req.device_id } : {}),
            initial_device_display_name: "opsbot test peer (matrix-js-sdk)",
        });
        log(`logged in as ${login.user_id} with device ${login.device_id}`);
        myUserID = login.user_id;
        client = sdk.createClient({
            baseUrl: homeserver,
            accessToken: login.access_token,
            userId: login.user_id,
            deviceId: login.device_id,
        });
        client.on(sdk.RoomEvent.Timeline, onTimeline);
        client.on(cryptoApi.CryptoEvent.VerificationRequestReceived, onVerificationRequest);
        client.on(sdk.MatrixEventEvent.Decrypted, (ev, err) => {
            if (err) log(`could not decrypt ${ev.getId()} in ${ev.getRoomId()}: ${ev.decryptionFailureReason ?? err}`);
            wake();
        });
        await wasmPromise;
        await client.initRustCrypto({ useIndexedDB: false });
        const crypto = client.getCrypto();
        // Share room keys with every device, verified or not, and accept keys
        // from unverified devices: nobody in a test room cross-signs. (These
        // are 37.x's defaults; set them anyway so that a default change shows.)
        crypto.globalBlacklistUnverifiedDevices = false;
        crypto.setDeviceIsolationMode(new AllDevicesIsolationMode(false));
        let syncError = "";
        const prepared = new Promise((resolve) => {
            const onSync = (state, _prev, data) => {
                if (state === "PREPARED" || state === "SYNCING") {
                    live = true;
                    client.off(sdk.ClientEvent.Sync, onSync);
                    resolve(true);
                } else if (state === "ERROR") {
                    syncError = String(data?.error?.message ?? data?.error);
                    log(`sync error: ${syncError}`);
                }
            };
            client.on(sdk.ClientEvent.Sync, onSync);
        });
        await client.startClient({ initialSyncLimit: 50 });
        if (!(await Promise.race([prepared, sleep(30000)]))) {
            throw new Error(`the first sync did not finish within 30000 ms${syncError ? ` (last error: ${syncError})` : ""}`);
        }
        log(`first sync done (${seenIDs.size} timeline events of history, not buffered)`);
        await keysPublished(login.user_id, login.device_id, 30000);
        return { user_id: login.user_id, device_id: login.device_id };
    },

    async create_room(req) {
        needClient();
        const opts = { preset: "private_chat", invite: req.invite ?? [] };
        if (req.name) opts.name = req.name;
        if (req.encrypted) {
            opts.initial_state = [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }];
        }
        const { room_id } = await client.createRoom(opts);
        const enc = await roomReady(room_id);
        if (enc !== !!req.encrypted) throw new Error(`room ${room_id} came out ${enc ? "encrypted" : "unencrypted"}`);
        return { room_id };
    },

    async join(req) {
        needClient();
        await client.joinRoom(req.room_id);
        await roomReady(req.room_id);
        return {};
    },

    async invite(req) {
        needClient();
        await client.invite(req.room_id, req.user_id);
        return {};
    },

    async leave(req) {
        needClient();
        await client.leave(req.room_id);
        encryptedRooms.delete(req.room_id);
        return {};
    },

    async send(req) {
        needClient();
        const content = { msgtype: "m.text", body: req.body };
        if (req.reply_to) content["m.relates_to"] = { "m.in_reply_to": { event_id: req.reply_to } };
        return await sendContent(req.room_id, content);
    },

    async wait_message(req) {
        needClient();
        const ev = await waitFor(req.room_id, req.sender, req.timeout_ms ?? 30000, false);
        const c = ev.getContent();
        return {
            event_id: ev.getId(), body: c.body ?? "", msgtype: c.msgtype ?? "", encrypted: ev.isEncrypted(), sender: ev.getSender(),
            formatted_body: c.formatted_body ?? "", mentions: c["m.mentions"] ?? null,
        };
    },

    async send_file(req) {
        needClient();
        const encrypted = await roomReady(req.room_id);
        const plain = await readFile(req.path);
        const name = path.basename(req.path);
        const mimetype = req.mimetype || "application/octet-stream";
        const content = { msgtype: msgtypeFor(mimetype), body: name, filename: name, info: { mimetype, size: plain.length } };
        if (encrypted) {
            const { cipher, file } = await encryptAttachment(plain);
            const up = await client.uploadContent(cipher, { type: "application/octet-stream", includeFilename: false });
            content.file = { url: up.content_uri, ...file };
        } else {
            const up = await client.uploadContent(plain, { type: mimetype, name, includeFilename: true });
            content.url = up.content_uri;
        }
        return await sendContent(req.room_id, content);
    },

    async wait_file(req) {
        needClient();
        const ev = await waitFor(req.room_id, req.sender, req.timeout_ms ?? 30000, true);
        const c = ev.getContent();
        let data;
        if (c.file) {
            data = await decryptAttachment(await download(c.file.url), c.file);
        } else {
            data = await download(c.url);
        }
        if (req.save_to) {
            await mkdir(path.dirname(req.save_to), { recursive: true });
            await writeFile(req.save_to, data);
        }
        return {
            event_id: ev.getId(),
            name: c.filename || c.body || "",
            sha256: createHash("sha256").update(data).digest("hex"),
            // Encrypted means the event came encrypted and so did the file.
            encrypted: ev.isEncrypted() && !!c.file,
        };
    },

    async is_encrypted(req) {
        needClient();
        // A room we are only invited to counts too (its invite state says
        // whether it is encrypted); wait for it to come down /sync either way.
        const deadline = Date.now() + 30000;
        for (;;) {
            const room = client.getRoom(req.room_id);
            const membership = room?.getMyMembership();
            if (membership === "invite") return { encrypted: room.hasEncryptionStateEvent() };
            if (membership === "join") return { encrypted: await roomReady(req.room_id) };
            if (Date.now() > deadline) throw new Error(`room ${req.room_id} did not come down /sync (joined or invited) within 30000 ms`);
            await sleep(50);
        }
    },

    async bootstrap_cross_signing(req) {
        needClient();
        const crypto = client.getCrypto();
        await crypto.bootstrapCrossSigning({
            setupNewCrossSigning: true,
            // User-interactive auth for /keys/device_signing/upload: the
            // password stage straight away (Dendrite takes it without a
            // session), or again with the session the server handed out.
            authUploadDeviceSigningKeys: async (makeRequest) => {
                const auth = { type: "m.login.password", identifier: { type: "m.id.user", user: myUserID }, password: req.password };
                try {
                    await makeRequest(auth);
                } catch (e) {
                    const session = e?.data?.session;
                    if (e?.httpStatus !== 401 || !session) throw e;
                    await makeRequest({ ...auth, session });
                }
            },
        });
        // Answer once the server hands out the master key and this device's
        // keys signed by the self-signing key.
        const deviceID = client.getDeviceId();
        return await until(async () => {
            const res = await serverKeys(myUserID);
            const master = res.master_keys?.[myUserID];
            const ssk = res.self_signing_keys?.[myUserID];
            const dev = res.device_keys?.[myUserID]?.[deviceID];
            if (!master || !ssk || !dev) return null;
            const sskID = Object.keys(ssk.keys ?? {})[0];
            if (!sskID || !dev.signatures?.[myUserID]?.[sskID]) return null;
            return { master_key: Object.values(master.keys ?? {})[0] ?? "" };
        }, 30000, "cross-signing keys (and this device signed) on the server");
    },

    async device_trust(req) {
        needClient();
        await freshKeys(req.user_id);
        const st = await client.getCrypto().getDeviceVerificationStatus(req.user_id, req.device_id);
        if (!st) return { known: false, signed_by_owner: false, cross_signing_verified: false, locally_verified: false, verified: false };
        return {
            known: true,
            signed_by_owner: st.signedByOwner,
            cross_signing_verified: st.crossSigningVerified,
            locally_verified: st.localVerified,
            verified: st.isVerified(),
        };
    },

    async user_trust(req) {
        needClient();
        const crypto = client.getCrypto();
        await freshKeys(req.user_id);
        const has = await crypto.userHasCrossSigningKeys(req.user_id, true);
        const st = await crypto.getUserVerificationStatus(req.user_id);
        return { has_master_key: has, cross_signing_verified: st.isCrossSigningVerified(), verified: st.isVerified() };
    },

    async verify_request(req) {
        needClient();
        const crypto = client.getCrypto();
        await freshKeys(req.user_id);
        let request;
        if (req.room_id) {
            await roomReady(req.room_id);
            request = await crypto.requestVerificationDM(req.user_id, req.room_id);
        } else if (req.device_id) {
            request = await crypto.requestDeviceVerification(req.user_id, req.device_id);
        } else {
            throw new Error("verify_request needs device_id (to-device) or room_id (in-room)");
        }
        newVerification(request);
        log(`verification ${request.transactionId} requested with ${req.user_id}/${req.device_id ?? "(in room " + req.room_id + ")"}`);
        return { transaction_id: request.transactionId ?? "" };
    },

    async verify_accept(req) {
        needClient();
        const request = await until(() => {
            while (incomingRequests.length) {
                const r = incomingRequests.shift();
                if (cryptoApi.canAcceptVerificationRequest(r)) return r;
                log(`passing over verification request ${r.transactionId}: phase ${phaseNames[r.phase] ?? r.phase}`);
            }
            return null;
        }, req.timeout_ms ?? 30000, "an incoming verification request");
        // Know the other side's devices and identity before its start or MAC
        // comes: the SAS is between two devices whose keys both must know.
        await freshKeys(request.otherUserId);
        await request.accept();
        newVerification(request);
        return { transaction_id: request.transactionId ?? "", from: request.otherUserId, from_device: request.otherDeviceId ?? "" };
    },

    async verify_sas(req) {
        needVerification();
        const { VerificationPhase } = cryptoApi;
        const request = vreq;
        const id = request.transactionId;
        const deadline = Date.now() + (req.timeout_ms ?? 30000);
        const left = () => Math.max(0, deadline - Date.now());
        const notCancelled = () => {
            if (isCancelled(request)) throw cancelledError(request);
        };
        if (req.start && !verifier) {
            await until(() => (notCancelled(), request.phase >= VerificationPhase.Ready), left(), `verification ${id} ready`);
            adoptVerifier(request);
            if (verifier) {
                log(`verification ${id}: the other side started first`);
            } else if (request.phase === VerificationPhase.Ready) {
                await request.startVerification("m.sas.v1");
                adoptVerifier(request);
            } else {
                throw new Error(`verification ${id} is ${phaseNames[request.phase] ?? request.phase}, cannot start SAS`);
            }
        }
        // Without start: wait for the other side's start (adoptVerifier
        // answers it); either way, then wait for the SAS.
        const cb = await until(() => {
            adoptVerifier(request);
            const c = sasCallbacks ?? verifier?.getShowSasCallbacks();
            if (c) return c;
            notCancelled();
            if (verifyOutcome?.error) throw verifyOutcome.error;
            return null;
        }, left(), () => `verification ${id}: ${verifier ? "the SAS" : "the other side's m.key.verification.start"}`);
        sasCallbacks = cb;
        return { emojis: cb.sas.emoji ?? [], decimals: cb.sas.decimal ?? [] };
    },

    async verify_confirm() {
        needVerification();
        if (!sasCallbacks) throw new Error("no SAS to confirm (verify_sas first)");
        const id = vreq.transactionId;
        // Resolves once our MAC is sent; the end comes with the other's MAC
        // and done (verify_wait_done).
        sasCallbacks.confirm().then(
            () => log(`verification ${id}: our MAC is sent`),
            (e) => {
                log(`verification ${id}: confirm failed: ${e?.stack ?? e}`);
                if (vreq?.transactionId === id && !verifyOutcome) verifyOutcome = { error: e };
            },
        );
        return {};
    },

    async verify_mismatch() {
        needVerification();
        if (!sasCallbacks) throw new Error("no SAS to reject (verify_sas first)");
        sasCallbacks.mismatch();
        return {};
    },

    async verify_cancel() {
        needVerification();
        await vreq.cancel();
        return {};
    },

    async verify_wait_done(req) {
        needVerification();
        const { VerificationPhase } = cryptoApi;
        const request = vreq;
        return await until(() => {
            const phase = request.phase;
            if (phase === VerificationPhase.Done) return { phase: "done" };
            if (phase === VerificationPhase.Cancelled) return { phase: "cancelled", ...cancelInfo(request) };
            return null;
        }, req.timeout_ms ?? 30000, () => `verification ${request.transactionId} done or cancelled (now ${phaseNames[request.phase] ?? request.phase}, verify() ${verifyOutcome ? (verifyOutcome.ok ? "resolved" : "rejected") : "pending"})`);
    },

    async logout() {
        if (!client) return {};
        const c = client;
        client = null;
        await c.logout(true);
        log("logged out");
        return {};
    },
};

// ---- the loop --------------------------------------------------------------

function answer(obj) {
    protocolWrite(JSON.stringify(obj) + "\n");
}

async function handle(line) {
    let req;
    try {
        req = JSON.parse(line);
    } catch (e) {
        return answer({ error: `bad command line: ${e.message}` });
    }
    const fn = Object.hasOwn(commands, req?.cmd) ? commands[req.cmd] : null;
    if (!fn) return answer({ error: `unknown command ${JSON.stringify(req.cmd)}` });
    const t0 = Date.now();
    try {
        const res = await fn(req);
        log(`${req.cmd} ok in ${Date.now() - t0} ms`);
        answer(res);
    } catch (e) {
        const msg = e?.errcode ? `${e.errcode}: ${e.message}` : String(e?.message ?? e);
        log(`${req.cmd} failed in ${Date.now() - t0} ms: ${e?.stack ?? msg}`);
        answer({ error: msg });
    }
}

process.on("unhandledRejection", (e) => log(`unhandled rejection: ${e?.stack ?? e}`));

// Commands run one at a time, in order; at the end of stdin, stop and exit.
let queue = Promise.resolve();
const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on("line", (line) => {
    if (line.trim() === "") return;
    queue = queue.then(() => handle(line));
});
rl.on("close", () => {
    queue.then(() => {
        if (client) client.stopClient();
        log("stdin closed, exiting");
        process.exit(0);
    });
});
