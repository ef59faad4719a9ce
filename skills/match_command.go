package skills

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
)

// commandPattern is a parsed command pattern such as
// "remind {duration} {text...}": a command word, then literal words and
// placeholders. {name} takes one word, {name...} the rest of the line,
// and a trailing ? makes a placeholder optional ({name?}, {name...?}).
type commandPattern struct {
	raw   string
	name  string // the command word, lower case
	parts []patternPart
}

type patternPart struct {
	literal  string // set for literal words (lower case)
	arg      string // set for placeholders
	rest     bool
	optional bool
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
