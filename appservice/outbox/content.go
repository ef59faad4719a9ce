package outbox

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/opsbot/opsbot/appservice/sanitize"
)

// safeMessage is what goes on the wire for an m.room.message, whoever wrote
// it (a built-in skill, an external one, a webhook template): its HTML
// (formatted_body, and an edit's m.new_content) cut to what the spec
// allows, and m.mentions made explicit — empty unless the skill set it —
// so that "@room" or a user ID in the text pings nobody (clients apply the
// old body-matching mention rules only to messages without m.mentions).
func safeMessage(content any) (map[string]any, error) {
	data, err := json.Marshal(content)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // numbers pass through as written
	var msg map[string]any
	if err := dec.Decode(&msg); err != nil || msg == nil {
		return nil, fmt.Errorf("message content is not a JSON object: %.40s", data)
	}
	cleanMessage(msg)
	if nc, ok := msg["m.new_content"].(map[string]any); ok {
		cleanMessage(nc)
	}
	return msg, nil
}

func cleanMessage(msg map[string]any) {
	if html, ok := msg["formatted_body"].(string); ok {
		msg["formatted_body"] = sanitize.HTML(html)
	}
	if _, ok := msg["m.mentions"]; !ok {
		msg["m.mentions"] = map[string]any{}
	}
}
