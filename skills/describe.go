package skills

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/event/cmdschema"
	"maunium.net/go/mautrix/id"
)

// Command descriptions (MSC4391): a bot describes each of its commands in
// the state of its rooms (org.matrix.msc4391.command_description, one
// state key per command and bot), so that clients can offer them, and a
// client may send a structured invocation — the command and its arguments
// as JSON in the message (org.matrix.msc4391.command) — instead of text.
// Both come from the command's pattern, its Help and ArgHelp: one source.

// descriptionName is what a client invokes: the command word and the
// literal words before the first placeholder ("notes add").
func (cp *commandPattern) descriptionName() string {
	name := cp.name
	for _, p := range cp.parts {
		if p.literal == "" {
			break
		}
		name += " " + p.literal
	}
	return name
}

// description is the command's MSC4391 description.
func (rt *route) description() *cmdschema.EventContent {
	cp := rt.command
	ec := &cmdschema.EventContent{Command: cp.descriptionName()}
	if rt.opts.help != "" {
		ec.Description = event.MakeExtensibleText(rt.opts.help)
	}
	for _, p := range cp.parts {
		if p.arg == "" {
			continue
		}
		param := &cmdschema.Parameter{Key: p.arg, Schema: p.typ.Schema(), Optional: p.optional}
		if h := rt.opts.argHelp[p.arg]; h != "" {
			param.Description = event.MakeExtensibleText(h)
		}
		ec.Parameters = append(ec.Parameters, param)
		if p.rest {
			ec.TailParam = p.arg
		}
	}
	return ec
}

// Descriptions returns the descriptions of the commands bot answers, one
// per invocable name (the first skill's, when two register the same), in
// a stable order.
func (e *Engine) Descriptions(bot id.UserID) []*cmdschema.EventContent {
	b := e.bots[bot]
	if b == nil {
		return nil
	}
	seen := map[string]bool{}
	var out []*cmdschema.EventContent
	for _, rt := range e.botRoutes(b) {
		if rt.kind != kindCommand || (len(rt.opts.bots) > 0 && !slices.Contains(rt.opts.bots, bot)) {
			continue
		}
		d := rt.description()
		if seen[d.Command] {
			continue
		}
		seen[d.Command] = true
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b *cmdschema.EventContent) int { return strings.Compare(a.Command, b.Command) })
	return out
}

// structuredCommand reads a structured invocation addressed to bot b (its
// m.mentions names b and nobody else, as MSC4391 clients send it) into the
// command word and the argument text the command's pattern parses, so that
// it takes exactly the path of the typed command. problem, when not empty,
// is what to tell the person (an argument that does not fit).
func (e *Engine) structuredCommand(evt *event.Event, b *BotSpec) (name, argText, problem string, ok bool) {
	msg, _ := evt.Content.Parsed.(*event.MessageEventContent)
	if msg == nil || msg.MSC4391BotCommand == nil || msg.Mentions == nil ||
		len(msg.Mentions.UserIDs) != 1 || msg.Mentions.UserIDs[0] != b.ID {
		return "", "", "", false
	}
	cmd := msg.MSC4391BotCommand
	var args map[string]json.RawMessage
	if len(cmd.Arguments) > 0 && string(cmd.Arguments) != "null" {
		if err := json.Unmarshal(cmd.Arguments, &args); err != nil {
			return "", "", "the command's arguments are not a JSON object", true
		}
	}
	for _, rt := range e.botRoutes(b) {
		if rt.kind != kindCommand || rt.command.descriptionName() != strings.ToLower(strings.TrimSpace(cmd.Command)) {
			continue
		}
		text, problem := rt.command.argText(args)
		return rt.command.name, text, problem, true
	}
	// Not a command of this bot: the text path below may still know it.
	return "", "", "", false
}

// argText writes structured arguments as the text the pattern parses:
// every word after the command word, literals included.
func (cp *commandPattern) argText(args map[string]json.RawMessage) (text, problem string) {
	var words []string
	for _, p := range cp.parts {
		if p.literal != "" {
			words = append(words, p.literal)
			continue
		}
		raw, ok := args[p.arg]
		if !ok || string(raw) == "null" {
			if p.optional {
				break
			}
			return "", fmt.Sprintf("the argument %q is missing", p.arg)
		}
		v, err := scalar(raw)
		if err != nil {
			return "", fmt.Sprintf("the argument %q %v", p.arg, err)
		}
		if !p.rest && (v == "" || strings.ContainsFunc(v, isSpace)) {
			return "", fmt.Sprintf("the argument %q must be one word", p.arg)
		}
		words = append(words, v)
	}
	return strings.Join(words, " "), ""
}

// scalar renders a JSON string, number or boolean as the word typed.
func scalar(raw json.RawMessage) (string, error) {
	var v any
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return "", fmt.Errorf("is not JSON")
	}
	switch v := v.(type) {
	case string:
		return v, nil
	case json.Number:
		return v.String(), nil
	case bool:
		return strconv.FormatBool(v), nil
	}
	return "", fmt.Errorf("must be a string, number or boolean")
}

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }
