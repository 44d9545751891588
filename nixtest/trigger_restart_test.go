package nixtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/bento-nix/bento/manifest"
)

// A switch that upgrades bento restarts bento-trigger (restartIfChanged,
// KillMode=process: systemd signals the server alone). A tick the server
// started goes on through that restart and reports to the server. All of
// it real: the module's command line, the bento binary, a real sshd. The
// tick is held in progress by the agent's own state lock, which the test
// takes first (the tick says "another tick is running" and waits).
func TestTriggerRestartKeepsTheTick(t *testing.T) {
	needNix(t)
	sshdtest.RequireRoot(t)
	bin := bentoBinary(t)
	srv := sshdtest.Start(t, sshdtest.Options{})
	host := srv.AddHost(t, "web-1")
	chroot := filepath.Join(srv.Root, "web-1")
	// A publication the agent refuses, and so reports on: the report is
	// what the tick leaves on the server once the test lets it go on.
	if err := os.WriteFile(filepath.Join(chroot, "manifest.json"), []byte("not a manifest\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	r := evalClient(t, fmt.Sprintf(`{
	  networking.hostName = "web-1";
	  services.bento = {
	    enable = true; server = "127.0.0.1"; port = %d; user = %s; identityFile = %s;
	    serverHostKey = %s; stateDir = %s;
	    package = { type = "derivation"; name = "bento"; outPath = %s; };
	    trigger = { enable = true; socket = %s; };
	  };
	}`, srv.Port, nixString(host.User), nixString(host.KeyFile), nixString(srv.KnownHostsLine), nixString(state),
		nixString(filepath.Dir(filepath.Dir(bin))), nixString(sock)))
	if len(r.Failed) != 0 {
		t.Fatalf("failed assertions: %q", r.Failed)
	}
	store := splitExec(t, r.Services["bento-agent"].ServiceConfig["ExecStart"].(string))[4]
	argv := splitExec(t, r.Services["bento-trigger"].ServiceConfig["ExecStart"].(string))
	// /etc/bento/agent.json on a host; the store file here.
	argv[indexOf(argv, "--config")+1] = store

	lock, err := os.OpenFile(filepath.Join(state, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}

	first := startTrigger(t, argv)

	// A client asks for a tick and watches it until the tick waits for the lock.
	client := exec.Command(bin, "agent", "trigger", "--address", "unix:"+sock)
	var clientErr strings.Builder
	client.Stderr = &clientErr
	clientOut, err := client.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	var clientLines []string
	clientDone := make(chan error, 1)
	waiting := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(clientOut)
		told := false
		for sc.Scan() {
			clientLines = append(clientLines, sc.Text())
			if !told && strings.Contains(sc.Text(), "another tick is running") {
				told = true
				close(waiting)
			}
		}
		clientDone <- client.Wait()
	}()
	select {
	case <-waiting:
	case err := <-clientDone:
		t.Fatalf("the client ended (%v) before the tick waited for the lock: %q", err, clientLines)
	case <-time.After(time.Minute):
		t.Fatal("the tick did not reach the lock within a minute")
	}
	tick := childOf(t, first.Process.Pid)

	// The restart, as systemd does it with KillMode=process.
	if err := first.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- first.Wait() }()
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("the trigger server did not stop within 30s of SIGTERM while a tick ran: a restart would wait for the tick (and a tick running the switch that restarts it would wait for the restart)")
	}
	select {
	case err := <-clientDone:
		if err == nil || !strings.Contains(clientErr.String(), "the tick goes on without it") {
			t.Errorf("the client of the detached tick exited %v: %q; want a failure saying the tick goes on", err, clientErr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the client still waits after the trigger server stopped")
	}
	second := startTrigger(t, argv)
	defer func() {
		second.Process.Signal(syscall.SIGTERM)
		second.Wait()
	}()
	if !alive(tick) {
		t.Fatalf("the tick (pid %d) did not survive the restart of the trigger server", tick)
	}

	// Let the tick go on: it reads the publication, refuses it, and reports.
	reports := filepath.Join(chroot, "reports")
	watch := watchDir(t, reports)
	pidfd, err := unix.PidfdOpen(tick, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", tick, err)
	}
	defer unix.Close(pidfd)
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	status := filepath.Join(srv.Root, "web-1", manifest.StatusFile)
	deadline := time.After(2 * time.Minute)
	for {
		if _, err := os.Stat(status); err == nil {
			break
		}
		select {
		case <-watch:
		case <-deadline:
			t.Fatalf("no %s two minutes after the tick was let go", manifest.StatusFile)
		}
	}
	data, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	var rep manifest.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("%s: %v\n%s", status, err, data)
	}
	if rep.Host != "web-1" || rep.Result != manifest.ResultFailure || !strings.Contains(rep.Error, "manifest.json") {
		t.Errorf("report %s", data)
	}
	// And the tick ends.
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, int((time.Minute).Milliseconds())); err != nil || n != 1 {
		t.Errorf("the tick (pid %d) did not end within a minute of reporting: %v", tick, err)
	}
}

// startTrigger runs the trigger server's command line and waits until it listens.
func startTrigger(t *testing.T, argv []string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		told := false
		for sc.Scan() {
			if !told && strings.HasPrefix(sc.Text(), "bento: trigger server listening on ") {
				told = true
				close(listening)
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case <-listening:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatalf("%q is not listening after a minute", argv)
	}
	return cmd
}

// childOf is the one child process of pid (the tick the trigger server runs).
func childOf(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var kids []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _, ok := procStat(n); ok && ppid == pid {
			kids = append(kids, n)
		}
	}
	if len(kids) != 1 {
		t.Fatalf("children of the trigger server %d: %v, want the one tick", pid, kids)
	}
	return kids[0]
}

// procStat reads the parent and state of a process from /proc/PID/stat.
func procStat(pid int) (ppid int, state string, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", false
	}
	// "pid (comm) state ppid …"; comm may hold spaces and parentheses.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, "", false
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, f[0], err == nil
}

func alive(pid int) bool {
	_, state, ok := procStat(pid)
	return ok && state != "Z" && state != "X"
}

// watchDir sends on the returned channel whenever a file in dir is
// written or moved there (inotify); it stops at the test's end.
func watchDir(t *testing.T, dir string) <-chan struct{} {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO|unix.IN_CREATE); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	t.Cleanup(func() { f.Close() })
	ch := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch
}
