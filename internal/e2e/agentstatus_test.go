package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
)

// bento agent status, the binary, on the host: what it applied, a failed
// attempt with its retry, a running tick, a damaged state file; the
// server plays no part (it is stopped).
func TestAgentStatusShowsTheHostsOwnView(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	status := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(Bento(t), append([]string{"agent", "status", "--config", h.ConfigFile(t)}, args...)...)
		cmd.Env = h.Environ()
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), code
	}
	out, code := status()
	if code != 0 || !strings.Contains(out, v1.Version[:8]) || !strings.Contains(out, v1.Built) || !strings.Contains(out, "tick running    no") {
		t.Errorf("after an update: exit %d\n%s", code, out)
	}

	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.FailBuild = "2", true })
	v2 := e.Publish(t)["alpha"]
	h.Run(t)
	e.SSHD.Stop()
	out, code = status()
	t.Logf("bento agent status:\n%s", out)
	if code != 1 || !strings.Contains(out, v2.Version[:8]+", attempt 1: failure") || !strings.Contains(out, "next retry") || !strings.Contains(out, "--now") {
		t.Errorf("after a failed build, the server gone: exit %d\n%s", code, out)
	}
	js, _ := status("--json")
	var s struct {
		AppliedVersion string `json:"appliedVersion"`
		NextRetry      *string
		Attempt        struct{ Version, Result string }
		TickRunning    bool `json:"tickRunning"`
	}
	if err := json.Unmarshal([]byte(js), &s); err != nil || s.AppliedVersion != v1.Version || s.Attempt.Version != v2.Version || s.Attempt.Result != "failure" || s.NextRetry == nil {
		t.Errorf("--json: %v\n%s", err, js)
	}

	// A tick holds the lock.
	lock, err := os.OpenFile(filepath.Join(h.StateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if out, _ := status(); !strings.Contains(out, "tick running    yes") {
		t.Errorf("with the lock held:\n%s", out)
	}
	syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	// A damaged state file is named, and left for the next tick to move.
	if err := os.WriteFile(filepath.Join(h.StateDir, "last-report.json"), []byte("{garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = status()
	if code != 1 || !strings.Contains(out, "problem") || !strings.Contains(out, "last-report.json") {
		t.Errorf("with a damaged last-report.json: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(h.StateDir, "last-report.json")); err != nil {
		t.Errorf("status moved or removed the damaged file: %v", err)
	}
}
