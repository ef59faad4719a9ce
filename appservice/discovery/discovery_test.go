package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const goodVersions = `{"versions":["r0.6.1","v1.1","v1.2"],"unstable_features":{"org.matrix.msc3202":false}}`

// fake is a TLS server for one test; its domain is 127.0.0.1:<port>, and
// tests add handlers for the .well-known document and /versions to mux.
type fake struct {
	srv    *httptest.Server
	mux    *http.ServeMux
	domain string
	wk     string // its .well-known URL
}

func newFake(t *testing.T) *fake {
	t.Helper()
	f := &fake{mux: http.NewServeMux()}
	f.srv = httptest.NewTLSServer(f.mux)
	t.Cleanup(f.srv.Close)
	f.domain = f.srv.Listener.Addr().String()
	f.wk = "https://" + f.domain + WellKnownPath
	return f
}

func (f *fake) handle(path string, status int, body string) {
	f.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	})
}

func (f *fake) resolve(t *testing.T) (*Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return Resolve(ctx, f.srv.Client(), f.domain)
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q lacks %q", err, p)
		}
	}
}

func TestResolveGood(t *testing.T) {
	f := newFake(t)
	f.handle(WellKnownPath, 200, fmt.Sprintf(`{"m.homeserver":{"base_url":%q},"m.identity_server":{"base_url":42}}`, f.srv.URL+"/"))
	f.handle(VersionsPath, 200, goodVersions)
	res, err := f.resolve(t)
	if err != nil {
		t.Fatal(err)
	}
	if res.BaseURL != f.srv.URL {
		t.Errorf("BaseURL %q, want %q (no trailing slash)", res.BaseURL, f.srv.URL)
	}
	if res.WellKnownURL != f.wk {
		t.Errorf("WellKnownURL %q, want %q", res.WellKnownURL, f.wk)
	}
	if strings.Join(res.Versions, " ") != "r0.6.1 v1.1 v1.2" {
		t.Errorf("Versions %q", res.Versions)
	}
}

func TestResolveGoodPathAndPlainHTTP(t *testing.T) {
	// base_url may be plain http and may have a path.
	hs := http.NewServeMux()
	hs.HandleFunc("/matrix"+VersionsPath, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, goodVersions) })
	plain := httptest.NewServer(hs)
	defer plain.Close()
	f := newFake(t)
	f.handle(WellKnownPath, 200, fmt.Sprintf(`{"m.homeserver":{"base_url":%q}}`, plain.URL+"/matrix//"))
	res, err := f.resolve(t)
	if err != nil {
		t.Fatal(err)
	}
	if res.BaseURL != plain.URL+"/matrix" {
		t.Errorf("BaseURL %q, want %q", res.BaseURL, plain.URL+"/matrix")
	}
}

func TestResolveWellKnownErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   []string
	}{
		{"404", 404, `{"errcode":"M_UNRECOGNIZED"}`, []string{"no .well-known", "404 Not Found"}},
		{"500", 500, "oops", []string{"answered 500 Internal Server Error, want 200"}},
		{"empty", 200, "", []string{"the body is empty"}},
		{"bad JSON", 200, "<html>hello</html>", []string{"not JSON", `"<html>hello</html>"`}},
		{"array", 200, `[{"m.homeserver":{"base_url":"https://a.example"}}]`, []string{"not a JSON object but an array"}},
		{"no m.homeserver", 200, `{"m.identity_server":{"base_url":"https://id.example"}}`, []string{`no "m.homeserver" key`}},
		{"m.homeserver a string", 200, `{"m.homeserver":"https://a.example"}`, []string{`"m.homeserver" is a string, not an object`}},
		{"no base_url", 200, `{"m.homeserver":{"url":"https://a.example"}}`, []string{`"m.homeserver" has no "base_url"`}},
		{"base_url a number", 200, `{"m.homeserver":{"base_url":8008}}`, []string{`"base_url" is a number, not a string`}},
		{"base_url null", 200, `{"m.homeserver":{"base_url":null}}`, []string{`"base_url" is null, not a string`}},
		{"base_url not a URL", 200, `{"m.homeserver":{"base_url":"::matrix"}}`, []string{`base_url "::matrix" is not a URL`}},
		{"base_url ftp", 200, `{"m.homeserver":{"base_url":"ftp://a.example"}}`, []string{`base_url "ftp://a.example" must be an absolute http:// or https:// URL`}},
		{"base_url relative", 200, `{"m.homeserver":{"base_url":"/matrix"}}`, []string{`base_url "/matrix" must be an absolute http:// or https:// URL`}},
		{"base_url no host", 200, `{"m.homeserver":{"base_url":"https:///matrix"}}`, []string{`base_url "https:///matrix" has no host`}},
		{"base_url query", 200, `{"m.homeserver":{"base_url":"https://a.example/?x=1"}}`, []string{"must not have a query"}},
		{"base_url fragment", 200, `{"m.homeserver":{"base_url":"https://a.example/#x"}}`, []string{"must not have a fragment"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t)
			f.handle(WellKnownPath, tc.status, tc.body)
			f.handle(VersionsPath, 200, goodVersions)
			_, err := f.resolve(t)
			wantErr(t, err, append(tc.want, f.wk)...)
			if tc.status == 404 && !errors.Is(err, ErrNoWellKnown) {
				t.Errorf("404 error %v is not ErrNoWellKnown", err)
			}
		})
	}
}

func TestResolveVersionsErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"404", 404, `{"errcode":"M_UNRECOGNIZED"}`, "answered 404 Not Found, want 200"},
		{"bad JSON", 200, "<html>", "not a JSON object"},
		{"no versions", 200, `{"unstable_features":{}}`, `no "versions" key`},
		{"versions a string", 200, `{"versions":"v1.1"}`, `"versions" is not an array of strings`},
		{"versions numbers", 200, `{"versions":[1,2]}`, `"versions" is not an array of strings`},
		{"versions empty", 200, `{"versions":[]}`, `"versions" is empty`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t)
			f.handle(WellKnownPath, 200, fmt.Sprintf(`{"m.homeserver":{"base_url":%q}}`, f.srv.URL+"/hs"))
			f.handle("/hs"+VersionsPath, tc.status, tc.body)
			_, err := f.resolve(t)
			wantErr(t, err, "base_url "+f.srv.URL+"/hs from "+f.wk+" does not look like a Matrix homeserver",
				"GET "+f.srv.URL+"/hs"+VersionsPath, tc.want)
		})
	}
}

func TestResolveRedirects(t *testing.T) {
	t.Run("followed", func(t *testing.T) {
		f := newFake(t)
		f.mux.Handle(WellKnownPath, http.RedirectHandler("/r/1", http.StatusFound))
		for i := 1; i < MaxRedirects; i++ {
			f.mux.Handle(fmt.Sprintf("/r/%d", i), http.RedirectHandler(fmt.Sprintf("/r/%d", i+1), http.StatusMovedPermanently))
		}
		f.handle(fmt.Sprintf("/r/%d", MaxRedirects), 200, fmt.Sprintf(`{"m.homeserver":{"base_url":%q}}`, f.srv.URL))
		f.handle(VersionsPath, 200, goodVersions)
		if _, err := f.resolve(t); err != nil {
			t.Fatalf("%d redirects: %v", MaxRedirects, err)
		}
	})
	t.Run("too many", func(t *testing.T) {
		f := newFake(t)
		f.mux.Handle(WellKnownPath, http.RedirectHandler("/r/1", http.StatusFound))
		for i := 1; i <= MaxRedirects; i++ {
			f.mux.Handle(fmt.Sprintf("/r/%d", i), http.RedirectHandler(fmt.Sprintf("/r/%d", i+1), http.StatusFound))
		}
		f.handle(fmt.Sprintf("/r/%d", MaxRedirects+1), 200, fmt.Sprintf(`{"m.homeserver":{"base_url":%q}}`, f.srv.URL))
		_, err := f.resolve(t)
		wantErr(t, err, "too many redirects (more than 5)", f.wk)
	})
	t.Run("loop", func(t *testing.T) {
		f := newFake(t)
		f.mux.Handle(WellKnownPath, http.RedirectHandler("/elsewhere", http.StatusFound))
		f.mux.Handle("/elsewhere", http.RedirectHandler(WellKnownPath, http.StatusFound))
		_, err := f.resolve(t)
		wantErr(t, err, "too many redirects", "a loop", f.wk)
	})
	t.Run("https to http", func(t *testing.T) {
		plain := httptest.NewServer(http.NotFoundHandler())
		defer plain.Close()
		f := newFake(t)
		f.mux.Handle(WellKnownPath, http.RedirectHandler(plain.URL+WellKnownPath, http.StatusFound))
		_, err := f.resolve(t)
		wantErr(t, err, "refusing the redirect", "it leaves https")
	})
}

// countingTransport counts the response body bytes the client reads.
type countingTransport struct {
	next http.RoundTripper
	read atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	if err == nil {
		resp.Body = &countingBody{resp.Body, &c.read}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func TestResolveHugeBody(t *testing.T) {
	const size = 10 << 20
	big := `{"m.homeserver":{"base_url":"https://a.example"},"pad":"` + strings.Repeat("x", size) + `"}`
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			f := newFake(t)
			f.mux.HandleFunc(WellKnownPath, func(w http.ResponseWriter, r *http.Request) {
				if !chunked {
					w.Header().Set("Content-Length", fmt.Sprint(len(big)))
				}
				for i := 0; i < len(big); i += 32 << 10 {
					if _, err := io.WriteString(w, big[i:min(i+32<<10, len(big))]); err != nil {
						return
					}
					if chunked {
						w.(http.Flusher).Flush()
					}
				}
			})
			client := f.srv.Client()
			counter := &countingTransport{next: client.Transport}
			client.Transport = counter
			_, err := Resolve(t.Context(), client, f.domain)
			if chunked {
				wantErr(t, err, "GET "+f.wk, "the body is larger than the 65536 bytes allowed")
			} else {
				wantErr(t, err, "GET "+f.wk, fmt.Sprintf("the body is %d bytes, more than the 65536 allowed", len(big)))
			}
			if n := counter.read.Load(); n > MaxBodyBytes+1 {
				t.Errorf("read %d bytes of the body, want at most %d", n, MaxBodyBytes+1)
			}
		})
	}
}

func TestResolveSlowServer(t *testing.T) {
	for _, where := range []string{"well-known", "versions", "body"} {
		t.Run(where, func(t *testing.T) {
			f := newFake(t)
			stall := func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
			}
			switch where {
			case "well-known":
				f.mux.HandleFunc(WellKnownPath, stall)
			case "versions":
				f.handle(WellKnownPath, 200, fmt.Sprintf(`{"m.homeserver":{"base_url":%q}}`, f.srv.URL))
				f.mux.HandleFunc(VersionsPath, stall)
			case "body":
				f.mux.HandleFunc(WellKnownPath, func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, `{"m.homeserver":`)
					w.(http.Flusher).Flush()
					stall(w, r)
				})
			}
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			began := time.Now()
			_, err := Resolve(ctx, f.srv.Client(), f.domain)
			if time.Since(began) > 5*time.Second {
				t.Errorf("Resolve took %v despite a 300ms context", time.Since(began))
			}
			target := f.wk
			if where == "versions" {
				target = f.srv.URL + VersionsPath
			}
			wantErr(t, err, "GET "+target, "context deadline exceeded")
		})
	}
}

func TestResolveBadDomain(t *testing.T) {
	for _, d := range []string{"", "https://example.org", "example.org/matrix", "@bot:example.org"} {
		_, err := Resolve(t.Context(), nil, d)
		wantErr(t, err, "is not a server name")
	}
}

func TestResolveUnreachable(t *testing.T) {
	// A port nobody listens on: the error names the URL it tried.
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	domain := srv.Listener.Addr().String()
	srv.Close()
	_, err := Resolve(t.Context(), srv.Client(), domain)
	wantErr(t, err, "GET https://"+domain+WellKnownPath, "connection refused")
}

func TestWellKnownURL(t *testing.T) {
	for domain, want := range map[string]string{
		"example.org":      "https://example.org/.well-known/matrix/client",
		"example.org:8448": "https://example.org:8448/.well-known/matrix/client",
		"[::1]:8448":       "https://[::1]:8448/.well-known/matrix/client",
	} {
		if got := WellKnownURL(domain); got != want {
			t.Errorf("WellKnownURL(%q) = %q, want %q", domain, got, want)
		}
	}
}

func FuzzParseWellKnown(f *testing.F) {
	for _, seed := range []string{
		`{"m.homeserver":{"base_url":"https://matrix.example.org"}}`,
		`{"m.homeserver":{"base_url":"https://matrix.example.org/"},"m.identity_server":{"base_url":"https://id.example.org"}}`,
		`{"m.homeserver":{"base_url":"http://127.0.0.1:8008/matrix//"}}`,
		`{"m.homeserver":{"base_url":"https://[::1]:8448"}}`,
		`{"m.homeserver":{"base_url":"ftp://example.org"}}`,
		`{"m.homeserver":{"base_url":"/relative"}}`,
		`{"m.homeserver":{"base_url":"https://example.org/?q#f"}}`,
		`{"m.homeserver":{"base_url":42}}`,
		`{"m.homeserver":"https://example.org"}`,
		`{"m.homeserver":null}`,
		`{}`,
		`[]`,
		`null`,
		`"x"`,
		``,
		`{"m.homeserver":{"base_url":"https://ex%41mple.org/%2F/"}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		base, err := ParseWellKnown(body)
		if err != nil {
			if base != "" {
				t.Fatalf("error %v with base %q", err, base)
			}
			return
		}
		u, perr := url.Parse(base)
		if perr != nil {
			t.Fatalf("accepted %q, which does not parse: %v", base, perr)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			t.Fatalf("accepted %q: scheme %q host %q query %q fragment %q", base, u.Scheme, u.Host, u.RawQuery, u.Fragment)
		}
		if strings.HasSuffix(base, "/") {
			t.Fatalf("accepted %q with a trailing slash", base)
		}
		again, err := ParseBaseURL(base)
		if err != nil || again != base {
			t.Fatalf("ParseBaseURL(%q) = %q, %v: not stable", base, again, err)
		}
	})
}
