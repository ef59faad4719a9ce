package peers

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// StartJS starts a matrix-js-sdk peer (js/peer.mjs: matrix-js-sdk with its
// Rust crypto, vodozemac in WASM, as Element-family clients run it) under
// the node on $PATH. Log it in with Login. The SDK must have been installed
// next to the script (`npm ci --prefix integration/peers/js`); if it is
// missing the test fails, with that command in the message: it is never
// skipped. The peer loads the SDK and compiles its WASM as soon as it starts,
// so start peers early and log them in later.
func StartJS(t testing.TB) *Peer {
	t.Helper()
	dir := jsDir(t)
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("js peer: node (Node.js 20 or later) is not on $PATH: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "matrix-js-sdk", "package.json")); err != nil {
		t.Fatalf("js peer: matrix-js-sdk is not installed in %s (%v); install it with\n\tnpm ci --prefix integration/peers/js\nfrom the repository root", dir, err)
	}
	cmd := exec.Command(node, filepath.Join(dir, "peer.mjs"))
	cmd.Dir = dir
	return start(t, "js", cmd)
}

// jsDir is integration/peers/js, found next to this source file.
func jsDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("js peer: cannot find the source directory of package peers")
	}
	return filepath.Join(filepath.Dir(file), "js")
}
