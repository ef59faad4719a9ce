// Package discovery finds a homeserver's client-server API from its server
// name, the way Matrix clients do (client-server API, "Server Discovery"):
// GET https://<domain>/.well-known/matrix/client, take m.homeserver.base_url,
// and check that it answers /_matrix/client/versions.
//
// opsbot cannot prompt anyone, so every outcome the spec calls IGNORE,
// FAIL_PROMPT or FAIL_ERROR is an error here, worded to say what was tried
// and what was wrong.
//
// Ours: mautrix.DiscoverClientAPI answers a 404 with no error and checks
// neither base_url nor /versions, so its errors cannot say what to fix.
package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

const (
	// MaxBodyBytes caps the .well-known document and the /versions answer.
	MaxBodyBytes = 64 << 10
	// MaxRedirects is how many redirects a request may follow.
	MaxRedirects = 5
	// WellKnownPath is where the document lives on the server name's host.
	WellKnownPath = "/.well-known/matrix/client"
	// VersionsPath is appended to the base URL to check it.
	VersionsPath = "/_matrix/client/versions"
)

// ErrNoWellKnown is wrapped by the error for a 404 from the .well-known URL.
var ErrNoWellKnown = errors.New("no .well-known")

// Result is what Resolve found.
type Result struct {
	// BaseURL is the client-server API base URL, without a trailing slash.
	BaseURL string
	// WellKnownURL is the document it came from.
	WellKnownURL string
	// Versions are the spec versions the homeserver advertises.
	Versions []string
}

// WellKnownURL returns https://<domain>/.well-known/matrix/client; domain
// may carry a port.
func WellKnownURL(domain string) string {
	return (&url.URL{Scheme: "https", Host: domain, Path: WellKnownPath}).String()
}

// Resolve discovers the client-server API of domain. client is not changed:
// Resolve uses a copy that follows at most MaxRedirects redirects and never
// from https to plain http. ctx bounds the whole lookup.
func Resolve(ctx context.Context, client *http.Client, domain string) (*Result, error) {
	if domain == "" || strings.ContainsAny(domain, "/@?# ") {
		return nil, fmt.Errorf("%q is not a server name (no scheme, no path)", domain)
	}
	if client == nil {
		client = http.DefaultClient
	}
	c := *client
	c.CheckRedirect = checkRedirect
	wk := WellKnownURL(domain)
	status, body, err := get(ctx, &c, wk)
	if err != nil {
		return nil, err
	}
	switch {
	case status == http.StatusNotFound:
		return nil, fmt.Errorf("%w document: GET %s answered 404 Not Found", ErrNoWellKnown, wk)
	case status != http.StatusOK:
		return nil, fmt.Errorf("GET %s answered %d %s, want 200", wk, status, http.StatusText(status))
	}
	base, err := ParseWellKnown(body)
	if err != nil {
		return nil, fmt.Errorf("the document at %s is unusable: %w", wk, err)
	}
	versions, err := checkVersions(ctx, &c, base)
	if err != nil {
		return nil, fmt.Errorf("base_url %s from %s does not look like a Matrix homeserver: %w", base, wk, err)
	}
	return &Result{BaseURL: base, WellKnownURL: wk, Versions: versions}, nil
}

// ParseWellKnown reads a .well-known/matrix/client document and returns its
// m.homeserver.base_url, checked and without a trailing slash. Other keys,
// m.identity_server included, are ignored.
func ParseWellKnown(body []byte) (string, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return "", errors.New("the body is empty")
	}
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("not JSON (%v); it starts with %s", err, excerpt(body))
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return "", fmt.Errorf("not a JSON object but %s", kind(doc))
	}
	hsVal, ok := obj["m.homeserver"]
	if !ok {
		return "", errors.New(`no "m.homeserver" key`)
	}
	hs, ok := hsVal.(map[string]any)
	if !ok {
		return "", fmt.Errorf(`"m.homeserver" is %s, not an object`, kind(hsVal))
	}
	baseVal, ok := hs["base_url"]
	if !ok {
		return "", errors.New(`"m.homeserver" has no "base_url"`)
	}
	base, ok := baseVal.(string)
	if !ok {
		return "", fmt.Errorf(`"m.homeserver"."base_url" is %s, not a string`, kind(baseVal))
	}
	return ParseBaseURL(base)
}

// ParseBaseURL checks that s is an absolute http(s) URL without query or
// fragment, and returns it without trailing slashes.
func ParseBaseURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("base_url %q is not a URL: %v", s, errors.Unwrap(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("base_url %q must be an absolute http:// or https:// URL", s)
	}
	if u.Opaque != "" || u.Host == "" {
		return "", fmt.Errorf("base_url %q has no host", s)
	}
	if u.RawQuery != "" || u.ForceQuery {
		return "", fmt.Errorf("base_url %q must not have a query", s)
	}
	if u.Fragment != "" {
		return "", fmt.Errorf("base_url %q must not have a fragment", s)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// checkVersions GETs base/_matrix/client/versions and returns its versions.
func checkVersions(ctx context.Context, c *http.Client, base string) ([]string, error) {
	target := base + VersionsPath
	status, body, err := get(ctx, c, target)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET %s answered %d %s, want 200", target, status, http.StatusText(status))
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("GET %s: not a JSON object (%v); it starts with %s", target, err, excerpt(body))
	}
	raw, ok := doc["versions"]
	if !ok {
		return nil, fmt.Errorf(`GET %s: no "versions" key`, target)
	}
	var versions []string
	if err := json.Unmarshal(raw, &versions); err != nil || versions == nil {
		return nil, fmt.Errorf(`GET %s: "versions" is not an array of strings`, target)
	}
	if len(versions) == 0 {
		return nil, fmt.Errorf(`GET %s: "versions" is empty`, target)
	}
	return versions, nil
}

// get fetches target and returns its status and body, refusing bodies over
// MaxBodyBytes without reading them all.
func get(ctx context.Context, c *http.Client, target string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("GET %s: %w", target, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, nil, fmt.Errorf("GET %s: %w", target, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil, nil // the body is not needed
	}
	if resp.ContentLength > MaxBodyBytes {
		return 0, nil, fmt.Errorf("GET %s: the body is %d bytes, more than the %d allowed", target, resp.ContentLength, MaxBodyBytes)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes+1))
	if ctx.Err() != nil {
		// The deadline cut the body short; depending on timing the read
		// ends with an error or with what arrived so far, which is no
		// reason to blame the document.
		err = ctx.Err()
	}
	if err != nil {
		return 0, nil, fmt.Errorf("GET %s: reading the body: %w", target, err)
	}
	if len(body) > MaxBodyBytes {
		return 0, nil, fmt.Errorf("GET %s: the body is larger than the %d bytes allowed", target, MaxBodyBytes)
	}
	return resp.StatusCode, body, nil
}

func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > MaxRedirects {
		return fmt.Errorf("too many redirects (more than %d) starting at %s", MaxRedirects, via[0].URL)
	}
	for _, prev := range via {
		if prev.URL.String() == req.URL.String() {
			return fmt.Errorf("too many redirects: %s redirects back to %s (a loop)", via[len(via)-1].URL, req.URL)
		}
	}
	if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("refusing the redirect from %s to %s: it leaves https", via[len(via)-1].URL, req.URL)
	}
	return nil
}

// excerpt quotes the start of a body, for error messages.
func excerpt(body []byte) string {
	const n = 64
	if len(body) > n {
		return fmt.Sprintf("%q...", body[:n])
	}
	return fmt.Sprintf("%q", body)
}

func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
