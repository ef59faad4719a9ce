package sanitize

import (
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

func TestHTML(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"allowed formatting stays", `<b>bold</b> <i>it</i> <code class="language-go">x := 1</code>`, `<b>bold</b> <i>it</i> <code class="language-go">x := 1</code>`},
		{"script and its code go", `hi<script>alert(1)</script>!`, `hi!`},
		{"style goes", `<style>body{display:none}</style>text`, `text`},
		{"event handlers go", `<img src="mxc://hs/abc" onerror="alert(1)">`, `<img src="mxc://hs/abc">`},
		{"javascript link loses its href", `<a href="javascript:alert(1)">click</a>`, `<a>click</a>`},
		{"entity-hidden javascript", `<a href="jav&#x09;ascript:alert(1)">x</a>`, `<a>x</a>`},
		{"upper-case scheme", `<a href="JaVaScRiPt:alert(1)">x</a>`, `<a>x</a>`},
		{"data link", `<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>`, `<a>x</a>`},
		{"https link stays", `<a href="https://example.org/?a=1&amp;b=2" target="_blank">x</a>`, `<a href="https://example.org/?a=1&amp;b=2" target="_blank">x</a>`},
		{"mailto stays", `<a href="mailto:ops@example.org">mail</a>`, `<a href="mailto:ops@example.org">mail</a>`},
		{"remote image becomes its alt text", `<img src="https://evil.example/track.png" alt="logo">`, `logo`},
		{"unknown tags dropped, text kept", `<marquee>moving</marquee> <form><input value="x">typed</form>`, `moving typed`},
		{"iframe and content dropped", `<iframe src="https://evil.example">inside</iframe>after`, `after`},
		{"comments dropped", `a<!-- secret -->b`, `ab`},
		{"bad colour dropped", `<font color="red;background:url(x)">c</font>`, `<font>c</font>`},
		{"good colour kept", `<span data-mx-color="#ff0000">c</span>`, `<span data-mx-color="#ff0000">c</span>`},
		{"style attribute dropped", `<p style="position:fixed">p</p>`, `<p>p</p>`},
		{"unclosed tags closed", `<b><i>open`, `<b><i>open</i></b>`},
		{"stray end tags dropped", `</div>text</b>`, `text`},
		{"misnested closes inner first", `<b><i>x</b>y</i>`, `<b><i>x</i></b>y`},
		{"text re-escaped", `1 &lt; 2 &amp;&amp; <b>"q"</b>`, `1 &lt; 2 &amp;&amp; <b>&#34;q&#34;</b>`},
		{"nested script inside allowed tag", `<p>a<script>b</script>c</p>`, `<p>ac</p>`},
		{"svg with handler dropped", `<svg onload="alert(1)"><circle/></svg>ok`, `ok`},
		{"ol start digits only", `<ol start="3x"><li>a</li></ol><ol start="3"></ol>`, `<ol><li>a</li></ol><ol start="3"></ol>`},
		{"mx-reply kept", `<mx-reply><blockquote>q</blockquote></mx-reply>a`, `<mx-reply><blockquote>q</blockquote></mx-reply>a`},
		{"duplicate attribute once", `<a href="https://a.example" href="javascript:x">l</a>`, `<a href="https://a.example">l</a>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := HTML(tc.in); got != tc.want {
				t.Errorf("HTML(%q)\n got %q\nwant %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestHTMLDepthIsCapped(t *testing.T) {
	in := strings.Repeat("<b>", 500) + "deep" + strings.Repeat("</b>", 500)
	out := HTML(in)
	if n := strings.Count(out, "<b>"); n != maxDepth {
		t.Fatalf("%d nested <b> kept, want %d", n, maxDepth)
	}
	if !strings.Contains(out, "deep") || strings.Count(out, "</b>") != maxDepth {
		t.Fatalf("text or closing tags lost: %.80q…", out)
	}
}

// FuzzHTML: whatever comes in, what comes out is stable (sanitizing it
// again changes nothing) and every tag and attribute in it is allowed.
func FuzzHTML(f *testing.F) {
	for _, s := range []string{`<a href="javascript:x">y</a>`, `<script>x</script>`, `<img src=x onerror=y>`, `<b><i>z`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := HTML(in)
		if again := HTML(out); again != out {
			t.Fatalf("not stable: %q -> %q -> %q", in, out, again)
		}
		z := html.NewTokenizer(strings.NewReader(out))
		for tt := z.Next(); tt != html.ErrorToken; tt = z.Next() {
			tok := z.Token()
			if tt != html.StartTagToken && tt != html.SelfClosingTagToken {
				continue
			}
			allowed, ok := tags[tok.Data]
			if !ok {
				t.Fatalf("tag %q in %q (from %q)", tok.Data, out, in)
			}
			for _, a := range tok.Attr {
				if !slices.Contains(allowed, a.Key) || !valueAllowed(tok.Data, a.Key, a.Val) {
					t.Fatalf("attribute %s=%q on %s in %q (from %q)", a.Key, a.Val, tok.Data, out, in)
				}
			}
		}
	})
}
