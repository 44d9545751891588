package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

// Live progress through the real binaries and a real sshd: while a tick
// is held in its switch (switch-to-configuration blocks on its record),
// the server's bento status (and --watch) shows the stage and bento logs
// --follow prints the log the agent appends as it goes; once the tick is
// over, the status is the report's again and the log is the report's.
func TestLiveProgressDuringATick(t *testing.T) {
	e, h, _ := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	start, _ := recordFIFO(t, h)
	watch := startCmd(t, "status", "--no-eval", "--watch", "--every", "1h", "--chroot-root", e.SSHD.Root, "alpha")
	watch.waitFor(t, "1 host: 1 pending")

	run := h.Start(t)
	run.WaitFor(t, "switch-to-configuration switch")
	p := waitProgress(t, e, "alpha", manifest.ProgressSwitching)
	if p.Version != v2.Version || p.Log == "" {
		t.Fatalf("progress %+v, want version %s with a log", p, v2.Version)
	}

	st := serverCmd(t, "status", "--no-eval", "--chroot-root", e.SSHD.Root, "alpha")
	if !strings.Contains(st, "updating: switching (") {
		t.Errorf("bento status during the switch:\n%s\nwant updating: switching (…)", st)
	}
	js := serverCmd(t, "status", "--no-eval", "--json", "--chroot-root", e.SSHD.Root, "alpha")
	var doc struct {
		Hosts []struct {
			Progress *struct {
				Stage, Version string
			} `json:"progress"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(js), &doc); err != nil || len(doc.Hosts) != 1 || doc.Hosts[0].Progress == nil ||
		doc.Hosts[0].Progress.Stage != "switching" || doc.Hosts[0].Progress.Version != v2.Version {
		t.Errorf("bento status --json during the switch: %v\n%s", err, js)
	}

	watch.waitFor(t, "updating: switching (")
	follow := startCmd(t, "logs", "--follow", "--chroot-root", e.SSHD.Root, "alpha")
	follow.waitFor(t, "switching to "+v2.Built)
	if strings.Contains(follow.text(), "confirmed: the server answers") {
		t.Fatalf("the log was complete before the tick went on:\n%s", follow.text())
	}

	start()
	if res := run.Wait(t); res.ExitCode != 0 {
		t.Fatalf("the tick failed: exit %d", res.ExitCode)
	}
	// The report's gzipped log goes on where the growing one stopped.
	follow.waitFor(t, "confirmed: the server answers after the switch")
	out := follow.text()
	if strings.Count(out, "applying version "+v2.Version) != 1 || strings.Contains(out, "==>") {
		t.Errorf("bento logs --follow printed the attempt's log twice, or under a second header:\n%s", out)
	}

	watch.waitFor(t, "1 host: 1 up-to-date")
	st = serverCmd(t, "status", "--no-eval", "--chroot-root", e.SSHD.Root, "alpha")
	if strings.Contains(st, "updating") || !strings.Contains(st, "up-to-date") {
		t.Errorf("bento status after the tick:\n%s\nwant up-to-date, no progress", st)
	}
	if got := h.Status(t).Log; got != p.Log {
		t.Errorf("the report names log %s, the progress %s: the report's log replaces the growing one", got, p.Log)
	}
	if logs := h.Logs(t); len(logs) != 2 {
		t.Errorf("logs on the server %v, want one per attempt", logs)
	}
}

// An idle tick uploads no progress and leaves what is there untouched.
func TestIdleTickUploadsNoProgress(t *testing.T) {
	e, h, _ := applied(t, hostsFleet("alpha"))
	path := filepath.Join(e.Chroot("alpha"), manifest.ProgressFile)
	os.Remove(path)
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("idle tick: exit %d", res.ExitCode)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("an idle tick wrote %s (%v)", manifest.ProgressFile, err)
	}
}

// waitProgress waits until the host's progress.json names stage.
func waitProgress(t *testing.T, e *Env, host string, stage manifest.ProgressStage) *manifest.Progress {
	t.Helper()
	path := filepath.Join(e.Chroot(host), manifest.ProgressFile)
	deadline := time.Now().Add(time.Minute)
	var last string
	for {
		if data, err := os.ReadFile(path); err == nil {
			last = string(data)
			if p, err := manifest.ParseProgress(data, host); err == nil && p.Stage == stage {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never said %s; last: %q", manifest.ProgressFile, stage, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serverCmd runs the bento binary on the server side and returns its
// output (exit codes of status are states, not failures).
func serverCmd(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(Bento(t), args...)
	cmd.Env = append(append(os.Environ(), fixture.Env()...), "NO_COLOR=1", "COLUMNS=200")
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("bento %v: %v", args, err)
	}
	return string(out)
}

type follower struct {
	mu    sync.Mutex
	out   strings.Builder
	lines chan struct{}
}

// startCmd runs the bento binary (bento logs --follow, status --watch)
// until the test ends, collecting its output.
func startCmd(t *testing.T, args ...string) *follower {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, Bento(t), args...)
	cmd.Env = append(append(os.Environ(), fixture.Env()...), "NO_COLOR=1")
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &follower{lines: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			f.mu.Lock()
			f.out.WriteString(sc.Text() + "\n")
			f.mu.Unlock()
			select {
			case f.lines <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done; cmd.Wait() })
	return f
}

func (f *follower) text() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.out.String()
}

// waitFor waits until the output holds s.
func (f *follower) waitFor(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(time.Minute)
	for !strings.Contains(f.text(), s) {
		select {
		case <-f.lines:
		case <-timeout:
			t.Fatalf("bento never printed %q:\n%s", s, f.text())
		}
	}
}
