package peers

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// NioPython is the interpreter the matrix-nio peer runs with: the system
// Python, where Debian's packages install nio and olm (not a pyenv or
// virtualenv python3 that may come first on PATH).
const NioPython = "/usr/bin/python3"

// NioPackages are the Debian packages the matrix-nio peer needs.
const NioPackages = "python3-matrix-nio python3-olm"

// StartNio starts a matrix-nio peer (libolm E2EE, Debian's
// python3-matrix-nio 0.20) for the test; log it in with Login. It fails the
// test, never skips it, when the system Python lacks nio or olm.
func StartNio(t testing.TB) *Peer {
	t.Helper()
	if _, err := os.Stat(NioPython); err != nil {
		t.Fatalf("the matrix-nio peer needs the system Python %s (Debian: apt-get install -y python3 %s): %v", NioPython, NioPackages, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	check := exec.CommandContext(ctx, NioPython, "-I", "-c", "import nio, olm")
	check.Stdout, check.Stderr = &out, &out
	if err := check.Run(); err != nil {
		t.Fatalf("the matrix-nio peer needs Debian's %s for %s (apt-get install -y %s): import nio, olm: %v\n%s",
			NioPackages, NioPython, NioPackages, err, strings.TrimSpace(out.String()))
	}
	script, err := nioScript()
	if err != nil {
		t.Fatal(err)
	}
	// -I: isolated mode, so PYTHONPATH, PYTHONHOME and the user's site
	// packages cannot swap in another nio; -u: unbuffered protocol lines.
	cmd := exec.Command(NioPython, "-I", "-u", script)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	return start(t, "nio", cmd)
}

// nioScript finds nio_peer.py next to this source file, or else under the
// repository root (the directory whose go.mod says "module github.com/opsbot/opsbot").
func nioScript() (string, error) {
	const name = "nio_peer.py"
	if _, file, _, ok := runtime.Caller(0); ok {
		p := filepath.Join(filepath.Dir(file), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && nioModulePath(data) == "opsbot" {
			p := filepath.Join(dir, "integration", "peers", name)
			if _, err := os.Stat(p); err != nil {
				return "", err
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("matrix-nio peer: cannot find " + name + ": not next to nio.go and no go.mod of module opsbot above the working directory")
		}
		dir = parent
	}
}

func nioModulePath(gomod []byte) string {
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}
