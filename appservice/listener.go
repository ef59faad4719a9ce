package appservice

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The appservice listener faces the homeserver and, for webhooks, the
// internet. A client that opens a connection and then sends nothing, or
// announces a body and never sends it, must not hold the connection: every
// phase of a request has a deadline, and connections that have not yet
// authenticated are capped (docs/operations.md, "Security"). Variables only
// so that tests can shorten them.
var (
	// headerTimeout bounds the request line and headers.
	headerTimeout = 10 * time.Second
	// bodyGrace and minBodyRate bound reading a body: a 16 MiB transaction
	// over a 64 KiB/s link still gets through (4 min 26 s).
	bodyGrace         = 10 * time.Second
	minBodyRate int64 = 64 << 10 // bytes per second
	// maxBodyTime caps the body deadline whatever the announced length.
	maxBodyTime = 5 * time.Minute
	// writeTimeout bounds writing a response (all of opsbot's are small).
	writeTimeout = 30 * time.Second
	// idleTimeout keeps the homeserver's connection between transactions.
	idleTimeout = 2 * time.Minute
	// maxUnauthenticated caps connections no request has authenticated on
	// yet; past it the oldest such connection is closed. The homeserver's
	// connection authenticates with its first transaction and is not
	// counted after that.
	maxUnauthenticated = 128
)

// newServer returns the HTTP server for the appservice listener, with its
// deadlines; serve it on guard(listener).
func newServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           guardRequests(h),
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
}

type connKey struct{}

// guardRequests sets each request's read and write deadlines, closes the
// connection after a refused request (rather than letting the server wait
// for the body it announced), and marks a connection authenticated once a
// request on it succeeded on an authenticated route.
func guardRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		now := time.Now()
		body := bodyGrace
		if r.ContentLength > 0 {
			body += time.Duration(r.ContentLength/minBodyRate) * time.Second
		}
		_ = rc.SetReadDeadline(now.Add(min(body, maxBodyTime)))
		_ = rc.SetWriteDeadline(now.Add(min(body, maxBodyTime) + writeTimeout))
		rec := &statusRecorder{ResponseWriter: w, rc: rc}
		next.ServeHTTP(rec, r)
		if rec.status < 400 && authenticatedRoute(r.URL.Path) {
			if c, ok := r.Context().Value(connKey{}).(*guardedConn); ok {
				c.authenticated()
			}
		}
	})
}

// authenticatedRoute reports whether a path is one whose handler
// authenticates (appservice API, webhooks), unlike the health probes.
func authenticatedRoute(path string) bool {
	return strings.HasPrefix(path, "/_matrix/") || strings.HasPrefix(path, "/transactions/") ||
		strings.HasPrefix(path, "/users/") || strings.HasPrefix(path, "/rooms/") || strings.HasPrefix(path, "/skills/")
}

// statusRecorder notes the status, and closes the connection after a
// refused request: the server would otherwise read (and wait for) the rest
// of an unread body, up to 256 KiB, to reuse the connection.
type statusRecorder struct {
	http.ResponseWriter
	rc     *http.ResponseController
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
		if code == http.StatusBadRequest || code == http.StatusUnauthorized || code == http.StatusForbidden || code == http.StatusRequestEntityTooLarge {
			r.Header().Set("Connection", "close")
			_ = r.rc.SetReadDeadline(time.Now())
		}
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.WriteHeader(http.StatusOK)
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's deadlines.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// guardedListener caps the connections that have not authenticated yet.
type guardedListener struct {
	net.Listener
	max int

	mu      sync.Mutex
	pending []*guardedConn // oldest first
}

func guard(l net.Listener) *guardedListener {
	return &guardedListener{Listener: l, max: maxUnauthenticated}
}

func (l *guardedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	gc := &guardedConn{Conn: c, l: l}
	l.mu.Lock()
	l.pending = append(l.pending, gc)
	var evict *guardedConn
	if len(l.pending) > l.max {
		evict, l.pending = l.pending[0], l.pending[1:]
	}
	l.mu.Unlock()
	if evict != nil {
		evict.Conn.Close()
	}
	return gc, nil
}

func (l *guardedListener) drop(c *guardedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, p := range l.pending {
		if p == c {
			l.pending = append(l.pending[:i], l.pending[i+1:]...)
			return
		}
	}
}

// unauthenticated is the number of connections counted against the cap.
func (l *guardedListener) unauthenticated() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pending)
}

type guardedConn struct {
	net.Conn
	l    *guardedListener
	once sync.Once
}

func (c *guardedConn) authenticated() { c.once.Do(func() { c.l.drop(c) }) }

func (c *guardedConn) Close() error {
	c.authenticated() // no longer counted, whatever it was
	return c.Conn.Close()
}
