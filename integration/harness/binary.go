package harness

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	dendriteModule  = "github.com/matrix-org/dendrite"
	dendritePackage = dendriteModule + "/cmd/dendrite"
	buildTimeout    = 15 * time.Minute
)

var binaryCache struct {
	mu   sync.Mutex
	path string
	err  error
}

// DendriteBinary returns the path of the Dendrite binary the harness runs,
// building it first if needed (see the package documentation). It fails the
// test if there is none and it cannot be built.
func DendriteBinary(t testing.TB) string {
	t.Helper()
	bin, err := FindDendrite(t.Logf)
	if err != nil {
		t.Fatalf("harness: no Dendrite binary: %v", err)
	}
	return bin
}

// FindDendrite is DendriteBinary for programs that are not tests: it returns
// the binary's path, or an error if there is none and it cannot be built.
// logf, which may be nil, is told when (and how long) it builds. The outcome
// is remembered for the life of the process.
func FindDendrite(logf func(format string, args ...any)) (string, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	binaryCache.mu.Lock()
	defer binaryCache.mu.Unlock()
	if binaryCache.path == "" && binaryCache.err == nil {
		binaryCache.path, binaryCache.err = findOrBuildDendrite(logf)
	}
	return binaryCache.path, binaryCache.err
}

func findOrBuildDendrite(logf func(format string, args ...any)) (string, error) {
	if p := os.Getenv("DENDRITE_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("DENDRITE_BIN=%s: %w", p, err)
		}
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	toolsDir := filepath.Join(root, "integration", "tools")
	want, err := pinnedDendriteVersion(filepath.Join(toolsDir, "go.mod"))
	if err != nil {
		return "", err
	}
	binDir := filepath.Join(root, ".build", "bin")
	bin := filepath.Join(binDir, "dendrite")
	ok, why := binaryUpToDate(bin, want)
	if ok {
		return bin, nil
	}
	logf("harness: %s; building Dendrite %s (a few minutes on a cold Go cache)", why, want)

	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(filepath.Join(binDir, ".dendrite-build.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	// Another test process may have built it while we waited for the lock.
	if ok, _ := binaryUpToDate(bin, want); ok {
		return bin, nil
	}

	goCmd, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go command is needed to build Dendrite: %w", err)
	}
	tmp := fmt.Sprintf("%s.tmp-%d", bin, os.Getpid())
	defer os.Remove(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goCmd, "build", "-o", tmp, dendritePackage)
	cmd.Dir = toolsDir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s in %s: %v\n%s", dendritePackage, toolsDir, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	logf("harness: built %s in %s", bin, time.Since(start).Round(time.Second))
	return bin, nil
}

// binaryUpToDate reports whether bin exists and embeds Dendrite version want.
func binaryUpToDate(bin, want string) (bool, string) {
	info, err := buildinfo.ReadFile(bin)
	if errors.Is(err, os.ErrNotExist) {
		return false, bin + " does not exist"
	}
	if err != nil {
		return false, fmt.Sprintf("cannot read build info of %s: %v", bin, err)
	}
	got := ""
	if info.Main.Path == dendriteModule {
		got = info.Main.Version
	}
	for _, d := range info.Deps {
		if d.Path == dendriteModule {
			got = d.Version
		}
	}
	if got != want {
		return false, fmt.Sprintf("%s was built from Dendrite %q, integration/tools pins %s", bin, got, want)
	}
	return true, ""
}

// pinnedDendriteVersion reads the Dendrite version required by the tools module.
func pinnedDendriteVersion(goMod string) (string, error) {
	data, err := os.ReadFile(goMod)
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "require "))
		if len(f) >= 2 && f[0] == dendriteModule {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%s does not require %s", goMod, dendriteModule)
}

// RepoRoot returns the directory of the opsbot main module: the nearest
// ancestor of the working directory whose go.mod declares "module github.com/opsbot/opsbot".
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modulePath(data) == "github.com/opsbot/opsbot" {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod with \"module github.com/opsbot/opsbot\" above the working directory")
		}
		dir = parent
	}
}

func modulePath(goMod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(goMod))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}
