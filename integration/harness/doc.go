// Package harness runs a real Dendrite homeserver for integration tests and
// drives real Matrix users over the client-server API.
//
// The users are deliberately plain net/http + encoding/json clients: they
// stand for independent people's clients, not for opsbot's own SDK, so a bug
// shared by opsbot and mautrix cannot hide behind them.
//
// A typical test:
//
//	hs := harness.Start(t, harness.Options{AppServiceRegistrations: []string{regPath}})
//	alice := hs.RegisterUser(t, "alice")
//	room := alice.CreateRoom(t, harness.RoomOptions{Invite: []string{botID}})
//	alice.SendText(t, room, "!ping")
//	alice.WaitForMessage(t, room, 10*time.Second, harness.From(botID))
//
// # Programs
//
// The harness is also usable outside tests (integration/demo does so):
// Launch starts a Homeserver and returns errors instead of failing a test,
// FindDendrite finds or builds the binary, RegisterAccount and LoginAccount
// give a User with a chosen password, User.Do sends requests and
// User.AwaitEvent waits for events until a context is done. Options.Dir keeps
// a homeserver's data across runs and Options.Port fixes its port.
//
// # The Dendrite binary
//
// Start runs the binary named by $DENDRITE_BIN, else <repo>/.build/bin/dendrite
// (<repo> is the directory whose go.mod says "module github.com/opsbot/opsbot"). If that file is
// missing, or was built from another Dendrite version than the one pinned in
// integration/tools/go.mod, the harness builds it with
//
//	go build -o <repo>/.build/bin/dendrite github.com/matrix-org/dendrite/cmd/dendrite
//
// run in integration/tools (a few minutes on a cold cache, seconds when warm),
// holding a file lock so parallel test binaries build it only once. A failed
// build fails the test; it is never skipped.
//
// # Errors
//
// Helpers that take a testing.TB fail the test with t.Fatalf on any error, so
// they must be called from the test's own goroutine. For requests whose
// failure the test wants to inspect, use User.Do or Homeserver.Do, which
// return an error (an *HTTPError for a non-2xx answer). Each request of a
// t-taking helper has its own deadline (RequestTimeout, plus the poll time
// for /sync) and does not depend on t.Context, so the helpers also work in
// t.Cleanup functions.
//
// # Events
//
// Every User keeps its own /sync position, established when the user is
// registered or logged in, and a buffer of events it has fetched but no wait
// has consumed yet. WaitForEvent and friends therefore see every event that
// arrives after the user was created, including those that arrive between two
// calls; see WaitForEvent for what a wait consumes.
package harness
