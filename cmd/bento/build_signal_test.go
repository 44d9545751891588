package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/fixture"
)

// TestBentoMainHelper is not a test: TestBuildInterrupted runs the test
// binary as the bento command through it (main, signal handling and exit
// status included).
func TestBentoMainHelper(t *testing.T) {
	args := os.Getenv("BENTO_TEST_MAIN_ARGS")
	if args == "" {
		t.Skip("helper process for TestBuildInterrupted")
	}
	os.Args = append([]string{"bento"}, strings.Split(args, "\x1f")...)
	main()
}

// markedProcesses lists the processes whose command line contains marker.
func markedProcesses(marker string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue // gone, or a zombie
		}
		if line := string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})); strings.Contains(line, marker) {
			found = append(found, e.Name()+": "+line)
		}
	}
	return found
}

// TestBuildInterrupted is Ctrl-C during bento build: the command exits 130,
// reports the hosts as cancelled, and no nix process or builder survives.
func TestBuildInterrupted(t *testing.T) {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	prefix := "sigint" + hex.EncodeToString(rnd[:])
	seconds := 300 + float64(mrand.IntN(1_000_000))/1e6
	sleepMarker := fmt.Sprintf("sleep %g", seconds)
	dir := t.TempDir()
	if err := fixture.Write(dir, fixture.Fleet{Hosts: fixture.Many(prefix, 3, func(i int, h *fixture.Host) {
		h.BuildSeconds = seconds
	})}); err != nil {
		t.Fatal(err)
	}
	args := []string{"build", "--flake", dir, "--state-dir", t.TempDir(), "--jobs", "2"}
	cmd := exec.Command(os.Args[0], "-test.run=^TestBentoMainHelper$")
	cmd.Env = append(append(os.Environ(), fixture.Env()...), "BENTO_TEST_MAIN_ARGS="+strings.Join(args, "\x1f"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}()

	deadline := time.After(2 * time.Minute)
	for len(markedProcesses(sleepMarker)) < 2 {
		select {
		case <-deadline:
			t.Fatalf("the builds never started:\n%s\n%s", stdout.String(), stderr.String())
		case err := <-exited:
			t.Fatalf("bento build ended before the interrupt (%v):\n%s\n%s", err, stdout.String(), stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-exited:
	case <-time.After(2 * time.Minute):
		t.Fatalf("bento build did not exit after SIGINT; running: %v", markedProcesses(prefix))
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("exit %v, want status 130\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	// Nix kills its builders (another session, as a build user) while it
	// exits, and delivery is asynchronous (slow on a loaded machine): allow
	// up to a minute, polling. A leaked builder sleeps for 300 s.
	left := append(markedProcesses(prefix), markedProcesses(sleepMarker)...)
	for wait := time.Now().Add(60 * time.Second); len(left) > 0 && time.Now().Before(wait); {
		time.Sleep(100 * time.Millisecond)
		left = append(markedProcesses(prefix), markedProcesses(sleepMarker)...)
	}
	if len(left) > 0 {
		t.Errorf("processes survived the interrupt:\n%s", strings.Join(left, "\n"))
	}
	if !strings.Contains(stdout.String(), "3 cancelled") {
		t.Errorf("the summary does not count the cancelled hosts:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "build interrupted") {
		t.Errorf("stderr does not say the build was interrupted:\n%s", stderr.String())
	}
}
