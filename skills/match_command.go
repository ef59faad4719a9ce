package skills

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"maunium.net/go/mautrix/event/cmdschema"
	"maunium.net/go/mautrix/id"
)

// commandPattern is a parsed command pattern such as
// "remind {duration} {text...}": a command word, then literal words and
// placeholders. {name} takes one word, {name...} the rest of the line,
// and a trailing ? makes a placeholder optional ({name?}, {name...?}).
// A one-word placeholder may name its type, as MSC4391 clients know them:
// {sides:integer}, {who:user_id} (argTypes); a word that is not of that
// type does not match. The same declaration drives !help, the command
// descriptions published into rooms, and structured invocations.
type commandPattern struct {
	raw   string
	name  string // the command word, lower case
	parts []patternPart
}

type patternPart struct {
	literal  string // set for literal words (lower case)
	arg      string // set for placeholders
	typ      cmdschema.PrimitiveType
	rest     bool
	optional bool
}

// argTypes are the placeholder types, with how a word is checked.
var argTypes = map[cmdschema.PrimitiveType]func(string) bool{
	cmdschema.PrimitiveTypeString:  func(string) bool { return true },
	cmdschema.PrimitiveTypeInteger: func(w string) bool { _, err := strconv.ParseInt(w, 10, 64); return err == nil },
	cmdschema.PrimitiveTypeBoolean: func(w string) bool { _, err := strconv.ParseBool(w); return err == nil },
	cmdschema.PrimitiveTypeUserID: func(w string) bool {
		_, _, err := id.UserID(w).ParseAndValidateRelaxed()
		return err == nil
	},
	cmdschema.PrimitiveTypeRoomID:     func(w string) bool { return strings.HasPrefix(w, "!") && len(w) > 1 },
	cmdschema.PrimitiveTypeRoomAlias:  func(w string) bool { return strings.HasPrefix(w, "#") && strings.Contains(w, ":") },
	cmdschema.PrimitiveTypeEventID:    func(w string) bool { return strings.HasPrefix(w, "$") && len(w) > 1 },
	cmdschema.PrimitiveTypeServerName: func(w string) bool { return !strings.ContainsAny(w, "/@!#$ ") },
}

var argNameRe = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

func parseCommandPattern(p string) (*commandPattern, error) {
	words := strings.Fields(p)
	if len(words) == 0 {
		return nil, fmt.Errorf("command pattern is empty")
	}
	cp := &commandPattern{raw: strings.Join(words, " ")}
	if strings.HasPrefix(words[0], "{") {
		return nil, fmt.Errorf("command pattern %q must start with the command word", p)
	}
	if !isCommandWord(words[0]) {
		return nil, fmt.Errorf("command word %q may contain only letters, digits, '-' and '_'", words[0])
	}
	cp.name = strings.ToLower(words[0])
	seen := map[string]bool{}
	sawOptional := false
	for i, w := range words[1:] {
		if !strings.HasPrefix(w, "{") {
			if strings.ContainsAny(w, "{}") {
				return nil, fmt.Errorf("command pattern %q: malformed placeholder %q", p, w)
			}
			if sawOptional {
				return nil, fmt.Errorf("command pattern %q: literal %q after an optional placeholder", p, w)
			}
			cp.parts = append(cp.parts, patternPart{literal: strings.ToLower(w)})
			continue
		}
		if !strings.HasSuffix(w, "}") {
			return nil, fmt.Errorf("command pattern %q: malformed placeholder %q", p, w)
		}
		inner := w[1 : len(w)-1]
		part := patternPart{}
		if strings.HasSuffix(inner, "?") {
			part.optional = true
			inner = strings.TrimSuffix(inner, "?")
		}
		if strings.HasSuffix(inner, "...") {
			part.rest = true
			inner = strings.TrimSuffix(inner, "...")
			if i != len(words)-2 {
				return nil, fmt.Errorf("command pattern %q: {%s...} must be the last placeholder", p, inner)
			}
		}
		if name, typ, typed := strings.Cut(inner, ":"); typed {
			part.typ = cmdschema.PrimitiveType(typ)
			if _, ok := argTypes[part.typ]; !ok {
				return nil, fmt.Errorf("command pattern %q: {%s} has unknown type %q (one of %s)", p, name, typ, typeNames())
			}
			if part.rest && part.typ != cmdschema.PrimitiveTypeString {
				return nil, fmt.Errorf("command pattern %q: {%s...} takes the rest of the line and is always a string", p, name)
			}
			inner = name
		} else {
			part.typ = cmdschema.PrimitiveTypeString
		}
		if !argNameRe.MatchString(inner) {
			return nil, fmt.Errorf("command pattern %q: placeholder name %q is not a word", p, inner)
		}
		if seen[inner] {
			return nil, fmt.Errorf("command pattern %q: placeholder {%s} used twice", p, inner)
		}
		if sawOptional && !part.optional {
			return nil, fmt.Errorf("command pattern %q: required {%s} after an optional placeholder", p, inner)
		}
		sawOptional = sawOptional || part.optional
		seen[inner] = true
		part.arg = inner
		cp.parts = append(cp.parts, part)
	}
	return cp, nil
}

func typeNames() string {
	var names []string
	for t := range argTypes {
		names = append(names, string(t))
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func isCommandWord(w string) bool {
	for _, r := range w {
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '-' && r != '_' {
			return false
		}
	}
	return w != ""
}

// usage renders the pattern for people: "!remind <duration> <text...>".
func (cp *commandPattern) usage(prefix string) string {
	var b strings.Builder
	b.WriteString(prefix)
	b.WriteString(cp.name)
	for _, part := range cp.parts {
		b.WriteByte(' ')
		switch {
		case part.literal != "":
			b.WriteString(part.literal)
		case part.typ != cmdschema.PrimitiveTypeString && part.optional:
			fmt.Fprintf(&b, "[%s:%s]", part.arg, part.typ)
		case part.typ != cmdschema.PrimitiveTypeString:
			fmt.Fprintf(&b, "<%s:%s>", part.arg, part.typ)
		case part.optional && part.rest:
			fmt.Fprintf(&b, "[%s...]", part.arg)
		case part.optional:
			fmt.Fprintf(&b, "[%s]", part.arg)
		case part.rest:
			fmt.Fprintf(&b, "<%s...>", part.arg)
		default:
			fmt.Fprintf(&b, "<%s>", part.arg)
		}
	}
	return b.String()
}

// match matches the text after the command word. ok is false when the
// arguments do not fit the pattern.
func (cp *commandPattern) match(argText string) (args map[string]string, ok bool) {
	args = map[string]string{}
	rest := strings.TrimSpace(argText)
	for _, part := range cp.parts {
		if part.rest {
			if rest == "" && !part.optional {
				return nil, false
			}
			args[part.arg] = rest
			rest = ""
			continue
		}
		word, remaining := nextWord(rest)
		if word == "" {
			if part.optional {
				continue
			}
			return nil, false
		}
		if part.literal != "" {
			if !strings.EqualFold(word, part.literal) {
				return nil, false
			}
		} else {
			if !argTypes[part.typ](word) {
				return nil, false
			}
			args[part.arg] = word
		}
		rest = remaining
	}
	if rest != "" {
		return nil, false
	}
	return args, true
}

func nextWord(s string) (word, rest string) {
	s = strings.TrimLeftFunc(s, unicode.IsSpace)
	i := strings.IndexFunc(s, unicode.IsSpace)
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimLeftFunc(s[i:], unicode.IsSpace)
}

// splitCommand splits "!remind 10m x" with prefix "!" into ("remind", "10m x").
// ok is false when body is not a command for this prefix.
func splitCommand(body, prefix string) (name, argText string, ok bool) {
	if prefix == "" || !strings.HasPrefix(body, prefix) {
		return "", "", false
	}
	rest := body[len(prefix):]
	// "! ping", "!!!" and "!1" are not commands: people type those in chat.
	if !startsWithLetter(rest) {
		return "", "", false
	}
	word, _ := nextWord(rest)
	if !isCommandWord(word) {
		return "", "", false
	}
	return strings.ToLower(word), strings.TrimSpace(rest[len(word):]), true
}

func startsWithLetter(s string) bool {
	for _, r := range s {
		return unicode.IsLetter(r)
	}
	return false
}
