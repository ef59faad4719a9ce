package skills

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// parsePattern is an opsdroid match_parse style pattern such as
// "remind me in {minutes:d} minutes to {task}": literal words (matched
// case-insensitively, any run of spaces between them) and typed fields.
type parsePattern struct {
	raw    string
	re     *regexp.Regexp
	fields []parseField
}

type parseField struct {
	name string
	kind byte // 0 (text), 'd' (integer), 'f' (number), 'w' (word)
}

var parseFieldRe = regexp.MustCompile(`\{([a-zA-Z_][a-zA-Z0-9_]*)(?::([dfw]))?\}`)

func compileParse(p string) (*parsePattern, error) {
	pp := &parsePattern{raw: p}
	var b strings.Builder
	b.WriteString(`(?is)^\s*`)
	rest := strings.TrimSpace(p)
	if rest == "" {
		return nil, fmt.Errorf("parse pattern is empty")
	}
	seen := map[string]bool{}
	for rest != "" {
		loc := parseFieldRe.FindStringSubmatchIndex(rest)
		if loc == nil {
			b.WriteString(literal(rest))
			break
		}
		b.WriteString(literal(rest[:loc[0]]))
		name := rest[loc[2]:loc[3]]
		var kind byte
		if loc[4] >= 0 {
			kind = rest[loc[4]]
		}
		if seen[name] {
			return nil, fmt.Errorf("parse pattern %q: field {%s} used twice", p, name)
		}
		seen[name] = true
		switch kind {
		case 'd':
			b.WriteString(`([+-]?\d+)`)
		case 'f':
			b.WriteString(`([+-]?(?:\d+\.?\d*|\.\d+))`)
		case 'w':
			b.WriteString(`(\S+)`)
		default:
			b.WriteString(`(.+?)`)
		}
		pp.fields = append(pp.fields, parseField{name, kind})
		rest = rest[loc[1]:]
	}
	if strings.ContainsAny(parseFieldRe.ReplaceAllString(p, ""), "{}") {
		return nil, fmt.Errorf("parse pattern %q: malformed field (use {name}, {name:d}, {name:f} or {name:w})", p)
	}
	b.WriteString(`\s*$`)
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, fmt.Errorf("parse pattern %q: %w", p, err)
	}
	pp.re = re
	return pp, nil
}

// literal turns literal text into a regex that tolerates spacing.
func literal(s string) string {
	words := strings.Fields(s)
	if len(words) == 0 {
		if s != "" {
			return `\s+`
		}
		return ""
	}
	var parts []string
	for _, w := range words {
		parts = append(parts, regexp.QuoteMeta(w))
	}
	out := strings.Join(parts, `\s+`)
	if strings.HasPrefix(s, " ") || strings.HasPrefix(s, "\t") {
		out = `\s+` + out
	}
	if strings.HasSuffix(s, " ") || strings.HasSuffix(s, "\t") {
		out += `\s+`
	}
	return out
}

// match returns the fields as text and as typed values (int, float64 or
// string), or ok=false.
func (pp *parsePattern) match(body string) (args map[string]string, values map[string]any, ok bool) {
	m := pp.re.FindStringSubmatch(body)
	if m == nil {
		return nil, nil, false
	}
	args, values = map[string]string{}, map[string]any{}
	for i, f := range pp.fields {
		text := m[i+1]
		args[f.name] = text
		switch f.kind {
		case 'd':
			n, err := strconv.Atoi(text)
			if err != nil {
				return nil, nil, false
			}
			values[f.name] = n
		case 'f':
			x, err := strconv.ParseFloat(text, 64)
			if err != nil {
				return nil, nil, false
			}
			values[f.name] = x
		default:
			values[f.name] = text
		}
	}
	return args, values, true
}
