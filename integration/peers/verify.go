package peers

import (
	"encoding/json"
	"fmt"
	"time"
)

// Cross-signing and interactive (SAS) verification, for the js peer: the
// bootstrap_cross_signing, device_trust, user_trust and verify_* commands
// listed in peer.go. A peer runs one verification at a time: VerifyRequest*
// or VerifyAccept begins it, the other calls act on it.

// DeviceTrust is what device_trust returns: how the peer sees one device
// after querying its owner's keys afresh. Known is false if the peer knows
// no such device (then all else is false).
type DeviceTrust struct {
	Known                bool `json:"known"`
	SignedByOwner        bool `json:"signed_by_owner"`        // signed by its owner's self-signing key
	CrossSigningVerified bool `json:"cross_signing_verified"` // ... and that owner's identity is verified
	LocallyVerified      bool `json:"locally_verified"`       // marked verified on this device
	Verified             bool `json:"verified"`               // either of the two
}

// UserTrust is what user_trust returns: how the peer sees a user's
// cross-signing identity after querying the user's keys afresh.
type UserTrust struct {
	HasMasterKey         bool `json:"has_master_key"`
	CrossSigningVerified bool `json:"cross_signing_verified"`
	Verified             bool `json:"verified"`
}

// VerifyIncoming is what verify_accept returns: the request accepted.
// FromDevice is empty for an in-room request.
type VerifyIncoming struct {
	TransactionID string `json:"transaction_id"`
	From          string `json:"from"`
	FromDevice    string `json:"from_device"`
}

// SAS is the short authentication string as the peer shows it: seven
// [symbol, name] emoji pairs and three numbers.
type SAS struct {
	Emojis   [][2]string `json:"emojis"`
	Decimals []int       `json:"decimals"`
}

// VerifyOutcome is what verify_wait_done returns: Phase "done", or
// "cancelled" with the cancel code (e.g. m.mismatched_sas, m.user), reason
// and the user who cancelled.
type VerifyOutcome struct {
	Phase  string `json:"phase"`
	Code   string `json:"code"`
	Reason string `json:"reason"`
	By     string `json:"by"`
}

// BootstrapCrossSigning creates and uploads new cross-signing keys for the
// peer's user (password is the user's, for the upload's user-interactive
// auth) and signs the peer's device with them. It returns the master key
// once the server hands it out, and the device signed.
func (p *Peer) BootstrapCrossSigning(password string) string {
	p.t.Helper()
	var out struct {
		MasterKey string `json:"master_key"`
	}
	p.Do(map[string]any{"cmd": "bootstrap_cross_signing", "password": password}, &out)
	return out.MasterKey
}

// DeviceTrust reports how the peer sees user's device.
func (p *Peer) DeviceTrust(user, device string) DeviceTrust {
	p.t.Helper()
	var out DeviceTrust
	p.Do(map[string]any{"cmd": "device_trust", "user_id": user, "device_id": device}, &out)
	return out
}

// UserTrust reports how the peer sees user's cross-signing identity.
func (p *Peer) UserTrust(user string) UserTrust {
	p.t.Helper()
	var out UserTrust
	p.Do(map[string]any{"cmd": "user_trust", "user_id": user}, &out)
	return out
}

// VerifyRequestDevice asks user's device, by to-device messages, to verify;
// it returns the transaction ID.
func (p *Peer) VerifyRequestDevice(user, device string) string {
	p.t.Helper()
	var out struct {
		TransactionID string `json:"transaction_id"`
	}
	p.Do(map[string]any{"cmd": "verify_request", "user_id": user, "device_id": device}, &out)
	return out.TransactionID
}

// VerifyRequestDM asks user to verify in room (a DM both are in); it returns
// the transaction ID (the request event's ID).
func (p *Peer) VerifyRequestDM(user, room string) string {
	p.t.Helper()
	var out struct {
		TransactionID string `json:"transaction_id"`
	}
	p.Do(map[string]any{"cmd": "verify_request", "user_id": user, "room_id": room}, &out)
	return out.TransactionID
}

// VerifyAccept waits for an incoming verification request (one that came
// before the call counts) and accepts it.
func (p *Peer) VerifyAccept(timeout time.Duration) VerifyIncoming {
	p.t.Helper()
	var out VerifyIncoming
	p.Do(map[string]any{"cmd": "verify_accept", "timeout_ms": int(timeout.Milliseconds())}, &out)
	return out
}

// VerifySAS goes on to SAS: if start, it sends the m.key.verification.start
// once the request is ready, else it waits for the other side's. It returns
// the SAS as soon as it can be shown, failing the test if the verification
// is cancelled first.
func (p *Peer) VerifySAS(start bool, timeout time.Duration) SAS {
	p.t.Helper()
	sas, err := p.TryVerifySAS(start, timeout)
	if err != nil {
		p.t.Fatal(err)
	}
	return sas
}

// TryVerifySAS is VerifySAS returning the error (for a verification that is
// cancelled first, it names the cancel code and reason) instead of failing.
func (p *Peer) TryVerifySAS(start bool, timeout time.Duration) (SAS, error) {
	var sas SAS
	raw, err := p.call(map[string]any{"cmd": "verify_sas", "start": start, "timeout_ms": int(timeout.Milliseconds())}, timeout+30*time.Second)
	if err != nil {
		return sas, err
	}
	if err := json.Unmarshal(raw, &sas); err != nil {
		return sas, fmt.Errorf("%s peer: decoding answer to verify_sas: %w", p.Name, err)
	}
	return sas, nil
}

// VerifyConfirm says the SAS matches (the peer sends its MAC).
func (p *Peer) VerifyConfirm() {
	p.t.Helper()
	p.Do(map[string]any{"cmd": "verify_confirm"}, nil)
}

// VerifyMismatch says the SAS does not match (the peer cancels with
// m.mismatched_sas).
func (p *Peer) VerifyMismatch() {
	p.t.Helper()
	p.Do(map[string]any{"cmd": "verify_mismatch"}, nil)
}

// VerifyCancel cancels the verification (code m.user).
func (p *Peer) VerifyCancel() {
	p.t.Helper()
	p.Do(map[string]any{"cmd": "verify_cancel"}, nil)
}

// VerifyWaitDone waits for the verification to end, done or cancelled.
func (p *Peer) VerifyWaitDone(timeout time.Duration) VerifyOutcome {
	p.t.Helper()
	var out VerifyOutcome
	p.Do(map[string]any{"cmd": "verify_wait_done", "timeout_ms": int(timeout.Milliseconds())}, &out)
	return out
}
