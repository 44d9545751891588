package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
)

// bento agent watch, the binary: a publication is applied without any
// timer tick, by a child "bento agent run", and SIGTERM ends the watch
// cleanly.
func TestAgentWatchBinary(t *testing.T) {
	env := e2e.Start(t, fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}},
		Files: map[string]string{"modules/a.nix": "{ a = 1; }\n"},
	})
	v1 := env.Publish(t)["alpha"]
	h := env.Host(t, "alpha")
	cmd := exec.CommandContext(context.Background(), e2e.Bento(t), "agent", "watch", "--config", h.ConfigFile(t), "--every", "1s")
	cmd.Env = h.Environ()
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 1024)
	var seen strings.Builder
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitFor := func(s string) {
		t.Helper()
		timeout := time.After(2 * time.Minute)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("watch ended before %q:\n%s", s, seen.String())
				}
				seen.WriteString(l + "\n")
				if strings.Contains(l, s) {
					return
				}
			case <-timeout:
				t.Fatalf("no %q after 2 minutes:\n%s", s, seen.String())
			}
		}
	}

	waitFor("watch: tick finished")
	if got := h.Current(t); got != v1.Built {
		t.Fatalf("first tick: running %s, want %s\n%s", got, v1.Built, seen.String())
	}
	env.Fleet.Files["modules/a.nix"] = "{ a = 2; }\n"
	env.WriteFleet(t, env.Fleet)
	v2 := env.Publish(t)["alpha"]
	waitFor("manifest.json changed")
	waitFor("watch: tick finished")
	if got := h.Current(t); got != v2.Built {
		t.Fatalf("after the publication: running %s, want %s\n%s", got, v2.Built, seen.String())
	}

	// Stopped while a tick runs (held on the agent's lock, as a switch
	// restarting the watch would hold it): the watch ends at once and the
	// tick, a process of its own, finishes the update.
	lock, err := os.OpenFile(filepath.Join(h.StateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	env.Fleet.Files["modules/a.nix"] = "{ a = 3; }\n"
	env.WriteFleet(t, env.Fleet)
	v3 := env.Publish(t)["alpha"]
	waitFor("manifest.json changed")
	waitFor("another tick")
	tick := onlyChild(t, cmd.Process.Pid)
	pidfd, err := unix.PidfdOpen(tick, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", tick, err)
	}
	defer unix.Close(pidfd)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	// Not cmd.Wait after reading to the end: the tick left running holds
	// the write end of the output pipe. Wait closes it once the watch
	// itself has exited.
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		for l := range lines {
			seen.WriteString(l + "\n")
		}
		if err != nil {
			t.Errorf("watch after SIGTERM: %v (want exit 0)\n%s", err, seen.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the watch did not stop within 30s of SIGTERM while a tick ran:\n%s", seen.String())
	}
	if !strings.Contains(seen.String(), "the running tick goes on without the watch") {
		t.Errorf("the watch did not say the tick goes on:\n%s", seen.String())
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, int((2 * time.Minute).Milliseconds())); err != nil || n != 1 {
		t.Fatalf("the tick (pid %d) did not end within 2 minutes of the lock's release: %v", tick, err)
	}
	if got := h.Current(t); got != v3.Built {
		t.Errorf("the tick left behind by the watch: running %s, want %s", got, v3.Built)
	}
}

// onlyChild is the one child process of pid (found through every thread's
// children: the Go runtime forks from whichever thread runs the goroutine).
func onlyChild(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, task := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err == nil {
			kids = append(kids, strings.Fields(string(data))...)
		}
	}
	if len(kids) != 1 {
		t.Fatalf("children of the watch %d: %q, want the one tick", pid, kids)
	}
	n, err := strconv.Atoi(kids[0])
	if err != nil {
		t.Fatal(err)
	}
	return n
}
