package external

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Version is the protocol version opsbot speaks; it is sent in every request.
const Version = 1

// Limits of the protocol.
const (
	// MaxActions is the most actions one answer may ask for.
	MaxActions = 20
	// MaxAnswerBytes is the largest answer body opsbot reads.
	MaxAnswerBytes = 1 << 20
	// MaxMemoryBytes caps the memory sent with a request (keys and values
	// together); a larger memory is left out and memory_truncated is set.
	MaxMemoryBytes = 64 << 10
	// MaxMemoryValueBytes is the largest value a set_memory action may store.
	MaxMemoryValueBytes = 64 << 10
	// MaxMemoryKeyBytes is the longest memory key.
	MaxMemoryKeyBytes = 255
)

// Headers of a request.
const (
	HeaderSignature = "X-Opsbot-Signature" // "sha256=" + hex HMAC-SHA256(secret, body)
	HeaderTimestamp = "X-Opsbot-Timestamp" // unix seconds, equal to the body's "timestamp"
	HeaderSkill     = "X-Opsbot-Skill"     // the skill's name
	HeaderDelivery  = "X-Opsbot-Delivery"  // equal to the body's "delivery_id"
)

// Request is the JSON body opsbot POSTs to an external skill.
type Request struct {
	Version int    `json:"version"`
	Skill   string `json:"skill"`
	// Bot is the bot user handling the event; RoomID the room it is in.
	Bot    string `json:"bot"`
	RoomID string `json:"room_id"`
	// Timestamp is when the request was made (unix seconds); the signature
	// covers it, so a skill can refuse old requests replayed by someone else.
	Timestamp int64 `json:"timestamp"`
	// DeliveryID is the same for every attempt of one delivery, and for a
	// delivery repeated after opsbot restarts: skills may de-duplicate on it.
	DeliveryID string       `json:"delivery_id"`
	Event      RequestEvent `json:"event"`
	Match      Match        `json:"match"`
	// Memory is the skill's whole memory in this room, key to JSON value;
	// {} when empty. It is left out, and MemoryTruncated set, when it is
	// larger than MaxMemoryBytes.
	Memory          json.RawMessage `json:"memory,omitempty"`
	MemoryTruncated bool            `json:"memory_truncated,omitempty"`
}

// RequestEvent describes the Matrix event that matched.
type RequestEvent struct {
	EventID        string  `json:"event_id"`
	Type           string  `json:"type"`
	StateKey       *string `json:"state_key,omitempty"`
	Sender         string  `json:"sender"`
	OriginServerTS int64   `json:"origin_server_ts"`
	// Body is the plain text of a text message (for an edit, the new text),
	// with the reply fallback removed: what commands and regexes matched.
	Body string `json:"body,omitempty"`
	// Content is the event's content, decrypted if it was encrypted.
	Content json.RawMessage `json:"content"`
	// Encrypted says the event reached the room encrypted.
	Encrypted bool `json:"encrypted"`
	// RelatesTo is content["m.relates_to"] (reply, thread, edit, reaction), if any.
	RelatesTo json.RawMessage `json:"relates_to,omitempty"`
}

// Match says which of the skill's matchers fired and what it found.
type Match struct {
	// Kind is "command", "regex" or "event".
	Kind string `json:"kind"`
	// Pattern is the command pattern, the regex or the event type that matched.
	Pattern string `json:"pattern"`
	// Command is the command word (commands only).
	Command string `json:"command,omitempty"`
	// Args holds the command's placeholders or the regex's named groups.
	Args map[string]string `json:"args"`
	// RegexGroups are the regex's submatches; [0] is the whole match.
	RegexGroups []string `json:"regex_groups,omitempty"`
}

// Action is one thing an answer asks opsbot to do, after validation.
type Action struct {
	Type     string
	Text     string
	HTML     string
	Key      string
	EventID  string
	Reason   string
	Name     string
	Mimetype string
	Data     []byte
	Value    json.RawMessage
	// SaveIDAs, if set, stores the ID of the event the action sent in the
	// skill's memory under this key (so a later answer can edit or redact it).
	SaveIDAs string
}

// fieldKind is what a field of an action must hold.
type fieldKind int

const (
	textField    fieldKind = iota // a non-empty string
	optionalText                  // a string, may be empty
	eventIDField                  // a string starting with '$'
	memoryKey                     // a string of 1 to MaxMemoryKeyBytes bytes
	mimeField                     // "type/subtype"
	base64Field                   // standard base64
	anyJSON                       // any JSON value, null included
)

type fieldSpec struct {
	name     string
	kind     fieldKind
	required bool
}

// actionSpecs lists the fields each action type takes.
var actionSpecs = map[string][]fieldSpec{
	"reply":         {{"text", textField, true}, {"html", optionalText, false}, {"save_id_as", memoryKey, false}},
	"respond":       {{"text", textField, true}, {"save_id_as", memoryKey, false}},
	"react":         {{"key", textField, true}, {"save_id_as", memoryKey, false}},
	"edit":          {{"event_id", eventIDField, true}, {"text", textField, true}, {"save_id_as", memoryKey, false}},
	"redact":        {{"event_id", eventIDField, true}, {"reason", optionalText, false}},
	"send_file":     {{"name", textField, true}, {"mimetype", mimeField, true}, {"data_base64", base64Field, true}, {"save_id_as", memoryKey, false}},
	"set_memory":    {{"key", memoryKey, true}, {"value", anyJSON, true}},
	"delete_memory": {{"key", memoryKey, true}},
}

// actionTypes is the sorted list of action types, for error messages.
var actionTypes = func() []string {
	var out []string
	for t := range actionSpecs {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}()

// nonsense is a problem with an answer; the skill's error names it.
type nonsense struct{ problem string }

func (n *nonsense) Error() string { return n.problem }

func problemf(format string, args ...any) error {
	return &nonsense{fmt.Sprintf(format, args...)}
}

// jsonKind names the kind of a JSON value, for error messages.
func jsonKind(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

// ParseAnswer validates the body of a 200 answer and returns its actions.
// Every problem is an error saying exactly what is wrong ("actions[2]:
// unknown type \"replay\""); nothing is performed unless all is well.
func ParseAnswer(body []byte) ([]Action, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, problemf(`the body is empty (answer {"actions":[]} or status 204 when there is nothing to do)`)
	}
	if len(body) > MaxAnswerBytes {
		return nil, problemf("the body is larger than %d bytes", MaxAnswerBytes)
	}
	if !json.Valid(body) {
		var v any
		err := json.Unmarshal(body, &v)
		return nil, problemf("the body is not JSON: %v", err)
	}
	if kind := jsonKind(body); kind != "an object" {
		return nil, problemf(`the body is %s, not an object like {"actions":[...]}`, kind)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, problemf("the body is not a JSON object: %v", err)
	}
	for k := range top {
		if k != "actions" && k != "version" {
			return nil, problemf("unknown field %q (an answer has \"actions\" and optionally \"version\")", k)
		}
	}
	if v, ok := top["version"]; ok && string(bytes.TrimSpace(v)) != "1" {
		return nil, problemf("\"version\" is %s; this opsbot speaks version %d", bytes.TrimSpace(v), Version)
	}
	rawActions, ok := top["actions"]
	if !ok {
		return nil, problemf(`missing "actions" (answer {"actions":[]} or status 204 when there is nothing to do)`)
	}
	if kind := jsonKind(rawActions); kind != "an array" {
		return nil, problemf(`"actions" must be an array, got %s`, kind)
	}
	var list []json.RawMessage
	if err := json.Unmarshal(rawActions, &list); err != nil {
		return nil, problemf(`"actions": %v`, err)
	}
	if len(list) > MaxActions {
		return nil, problemf("%d actions, more than the %d allowed", len(list), MaxActions)
	}
	actions := make([]Action, 0, len(list))
	for i, raw := range list {
		a, err := parseAction(raw)
		if err != nil {
			return nil, problemf("actions[%d]%s", i, err.Error())
		}
		actions = append(actions, a)
	}
	return actions, nil
}

// parseAction validates one action. Its errors start with ": " or " (type): "
// so that the caller can prefix the index.
func parseAction(raw json.RawMessage) (Action, error) {
	if kind := jsonKind(raw); kind != "an object" {
		return Action{}, fmt.Errorf(": must be an object, got %s", kind)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return Action{}, fmt.Errorf(": %v", err)
	}
	rawType, ok := fields["type"]
	if !ok {
		return Action{}, fmt.Errorf(`: missing "type" (one of %s)`, strings.Join(actionTypes, ", "))
	}
	var typ string
	if err := json.Unmarshal(rawType, &typ); err != nil {
		return Action{}, fmt.Errorf(`: "type" must be a string, got %s`, jsonKind(rawType))
	}
	spec, ok := actionSpecs[typ]
	if !ok {
		return Action{}, fmt.Errorf(": unknown type %q (one of %s)", typ, strings.Join(actionTypes, ", "))
	}
	fail := func(format string, args ...any) (Action, error) {
		return Action{}, fmt.Errorf(" (%s): %s", typ, fmt.Sprintf(format, args...))
	}
	for name := range fields {
		if name == "type" {
			continue
		}
		if !slices.ContainsFunc(spec, func(f fieldSpec) bool { return f.name == name }) {
			var names []string
			for _, f := range spec {
				names = append(names, f.name)
			}
			return fail("unknown field %q (%s takes %s)", name, typ, strings.Join(names, ", "))
		}
	}
	a := Action{Type: typ}
	for _, f := range spec {
		v, present := fields[f.name]
		if !present {
			if f.required {
				return fail("missing %q", f.name)
			}
			continue
		}
		if f.kind == anyJSON {
			if len(v) > MaxMemoryValueBytes {
				return fail("%q is %d bytes, more than the %d a memory value may hold", f.name, len(v), MaxMemoryValueBytes)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, v); err != nil {
				return fail("%q: %v", f.name, err)
			}
			a.Value = compact.Bytes()
			continue
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return fail("%q must be a string, got %s", f.name, jsonKind(v))
		}
		switch f.kind {
		case textField:
			if strings.TrimSpace(s) == "" {
				return fail("%q must not be empty", f.name)
			}
		case eventIDField:
			if !strings.HasPrefix(s, "$") || len(s) < 2 || strings.ContainsAny(s, " \t\n") {
				return fail("%q must be an event ID like \"$abc...\", got %q", f.name, s)
			}
		case memoryKey:
			if s == "" || len(s) > MaxMemoryKeyBytes {
				return fail("%q must be 1 to %d bytes, got %d", f.name, MaxMemoryKeyBytes, len(s))
			}
		case mimeField:
			if typ, sub, ok := strings.Cut(s, "/"); !ok || typ == "" || sub == "" || strings.ContainsAny(s, " \t\n") {
				return fail("%q must be a MIME type like \"text/plain\", got %q", f.name, s)
			}
		case base64Field:
			data, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return fail("%q is not standard base64: %v", f.name, err)
			}
			a.Data = data
		}
		switch f.name {
		case "text":
			a.Text = s
		case "html":
			a.HTML = s
		case "key":
			a.Key = s
		case "event_id":
			a.EventID = s
		case "reason":
			a.Reason = s
		case "name":
			a.Name = s
		case "mimetype":
			a.Mimetype = s
		case "save_id_as":
			a.SaveIDAs = s
		}
	}
	return a, nil
}
