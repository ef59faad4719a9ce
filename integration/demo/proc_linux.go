//go:build linux

package main

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes the kernel kill opsbot if the demo dies without stopping
// it, and puts it in its own process group so a Ctrl-C in the terminal
// reaches only the demo, which then stops opsbot before Dendrite.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
