// Package sanitize keeps the HTML opsbot sends (formatted_body) to the
// subset the Matrix client-server spec allows in m.room.message: its tags,
// its attributes, links only to safe schemes, images only from mxc://. What
// a skill, an external skill or a webhook template wrote is not trusted.
//
// The HTML is tokenized with golang.org/x/net/html (the Go project's HTML5
// tokenizer, already in opsbot's build through mautrix); the allow list is
// ours, taken from the spec, because no sanitizer library is among
// opsbot's fixed dependencies. Output is rebuilt from tokens, never copied
// through: attribute values and text are escaped again, tags are balanced.
package sanitize

import (
	"net/url"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/net/html"
)

// tags are the spec's allowed tags (client-server API, "HTML"), with the
// attributes each may carry.
var tags = map[string][]string{
	"font": {"data-mx-bg-color", "data-mx-color", "color"},
	"del":  nil, "s": nil, "strike": nil,
	"h1": nil, "h2": nil, "h3": nil, "h4": nil, "h5": nil, "h6": nil,
	"blockquote": nil, "p": nil,
	"a":   {"target", "href"},
	"ul":  nil,
	"ol":  {"start"},
	"sup": nil, "sub": nil, "li": nil, "b": nil, "i": nil, "u": nil,
	"strong": nil, "em": nil,
	"code":  {"class"},
	"hr":    nil,
	"br":    nil,
	"div":   {"data-mx-maths"},
	"table": nil, "thead": nil, "tbody": nil, "tr": nil, "th": nil, "td": nil, "caption": nil,
	"pre":      nil,
	"span":     {"data-mx-bg-color", "data-mx-color", "data-mx-spoiler", "data-mx-maths"},
	"img":      {"width", "height", "alt", "title", "src"},
	"details":  nil,
	"summary":  nil,
	"mx-reply": nil,
}

// dropWithContent are tags whose content is not text for people: it goes
// with the tag (a <script>'s code must not turn into visible text either).
var dropWithContent = map[string]bool{
	"script": true, "style": true, "iframe": true, "object": true, "embed": true,
	"noscript": true, "template": true, "textarea": true, "title": true, "head": true,
	"svg": true, "math": true, "select": true, "frame": true, "frameset": true, "noembed": true,
	"xmp": true, "plaintext": true,
}

// linkSchemes are the schemes the spec lets a link use.
var linkSchemes = []string{"http", "https", "ftp", "mailto", "magnet"}

var (
	color        = regexp.MustCompile(`^#[0-9a-fA-F]{6}$`)
	codeLanguage = regexp.MustCompile(`^language-[A-Za-z0-9_+#.-]{1,40}$`)
	digits       = regexp.MustCompile(`^[0-9]{1,9}$`)
)

// maxDepth is how deep tags may nest (the spec's recommended limit);
// deeper tags are dropped, their text kept.
const maxDepth = 100

// HTML returns s with everything the spec does not allow removed: other
// tags are dropped (their text kept, except script-like ones), other
// attributes, unsafe links and non-mxc images too; comments go.
func HTML(s string) string {
	var b strings.Builder
	z := html.NewTokenizer(strings.NewReader(s))
	var open []string // allowed tags written and not yet closed
	skip := 0         // depth inside a dropWithContent tag
	var skipTag string
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			break // io.EOF: a strings.Reader has no other error
		}
		tok := z.Token()
		name := tok.Data
		switch tt {
		case html.StartTagToken, html.SelfClosingTagToken:
			if skip > 0 {
				if name == skipTag && tt == html.StartTagToken {
					skip++
				}
				continue
			}
			if dropWithContent[name] {
				if tt == html.StartTagToken {
					skip, skipTag = 1, name
				}
				continue
			}
			allowedAttrs, ok := tags[name]
			if !ok || len(open) >= maxDepth {
				continue
			}
			attrs := keep(name, tok.Attr, allowedAttrs)
			if name == "img" && !hasAttr(attrs, "src") {
				// An image that cannot be shown becomes its alt text.
				for _, a := range tok.Attr {
					if a.Key == "alt" {
						b.WriteString(html.EscapeString(a.Val))
					}
				}
				continue
			}
			b.WriteString("<" + name)
			for _, a := range attrs {
				b.WriteString(" " + a.Key + `="` + html.EscapeString(a.Val) + `"`)
			}
			b.WriteString(">")
			switch {
			case void(name):
			case tt == html.StartTagToken:
				open = append(open, name)
			default: // <b/> is not HTML: an empty element
				b.WriteString("</" + name + ">")
			}
		case html.EndTagToken:
			if skip > 0 {
				if name == skipTag {
					skip--
				}
				continue
			}
			// Close up to the matching open tag; an end tag nothing opened
			// is dropped.
			if i := slices.Index(reversed(open), name); i >= 0 {
				for n := 0; n <= i; n++ {
					b.WriteString("</" + open[len(open)-1] + ">")
					open = open[:len(open)-1]
				}
			}
		case html.TextToken:
			if skip == 0 {
				b.WriteString(html.EscapeString(tok.Data))
			}
		}
		// Comments and doctypes are dropped.
	}
	for i := len(open) - 1; i >= 0; i-- {
		b.WriteString("</" + open[i] + ">")
	}
	return b.String()
}

// keep returns the attributes of tag that are allowed, with allowed values.
func keep(tag string, attrs []html.Attribute, allowed []string) []html.Attribute {
	var out []html.Attribute
	for _, a := range attrs {
		if a.Namespace != "" || !slices.Contains(allowed, a.Key) || hasAttr(out, a.Key) {
			continue
		}
		if valueAllowed(tag, a.Key, a.Val) {
			out = append(out, a)
		}
	}
	return out
}

func valueAllowed(tag, key, val string) bool {
	switch key {
	case "href":
		return safeLink(val)
	case "src":
		return strings.HasPrefix(val, "mxc://")
	case "target":
		return val == "_blank"
	case "color", "data-mx-color", "data-mx-bg-color":
		return color.MatchString(val)
	case "class":
		return tag == "code" && codeLanguage.MatchString(val)
	case "start", "width", "height":
		return digits.MatchString(val)
	}
	return true
}

// safeLink reports whether a link uses one of the spec's schemes. Links
// without a scheme are refused: a client resolves them against nothing
// useful, and "javascript:" hides behind whitespace and entities that the
// tokenizer has already decoded here.
func safeLink(href string) bool {
	u, err := url.Parse(strings.TrimSpace(href))
	if err != nil {
		return false
	}
	return slices.Contains(linkSchemes, strings.ToLower(u.Scheme))
}

func hasAttr(attrs []html.Attribute, key string) bool {
	return slices.ContainsFunc(attrs, func(a html.Attribute) bool { return a.Key == key })
}

func void(tag string) bool { return tag == "br" || tag == "hr" || tag == "img" }

func reversed(s []string) []string {
	r := slices.Clone(s)
	slices.Reverse(r)
	return r
}
