//go:build linux

package harness

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes the kernel kill Dendrite if the test binary dies without
// running its cleanups (a panic, a go test -timeout, a SIGKILL), and puts it
// in its own process group, so a Ctrl-C in the terminal reaches only the
// program running it, which then stops Dendrite itself (see Launch).
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
