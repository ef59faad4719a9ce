//go:build linux

package harness

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes the kernel kill Dendrite if the test binary dies without
// running its cleanups (a panic, a go test -timeout, a SIGKILL).
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
