// Package examples_test runs the README's main command, examples/demo.sh,
// and checks that the bento status output the README shows is what the
// demo really prints.
package examples_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// statusBlock returns the table rows and the summary line that follow the
// demo's "bento status" command line in text, one slice of cells per line, with
// what changes from run to run (the SEEN column, the retry delay) masked.
func statusBlock(t *testing.T, text string) [][]string {
	t.Helper()
	lines := strings.Split(text, "\n")
	start := -1
	for i, l := range lines {
		// The demo's own status command: other examples may follow.
		if strings.HasPrefix(l, "$ ") && strings.Contains(l, "bento status ") && strings.Contains(l, "--chroot-root /var/lib/bento-demo/chroot") {
			start = i + 1
			break
		}
	}
	if start < 0 {
		t.Fatalf("no bento status command in:\n%s", text)
	}
	cell := regexp.MustCompile(` {2,}`)
	retry := regexp.MustCompile(`retry in [0-9hms ]+\)`)
	var rows [][]string
	for _, l := range lines[start:] {
		cells := cell.Split(strings.TrimRight(l, " "), -1)
		if len(cells) >= 6 && cells[0] != "HOST" {
			cells[5] = "<seen>"
		}
		if n := len(cells) - 1; len(cells) >= 7 {
			cells[n] = retry.ReplaceAllString(cells[n], "retry in <d>)")
		}
		rows = append(rows, cells)
		if strings.Contains(l, " hosts: ") || strings.Contains(l, " host: ") {
			return rows
		}
	}
	t.Fatalf("no summary line after the bento status command in:\n%s", text)
	return nil
}

// TestDemoMatchesREADME runs the demo for real (root: it starts sshd with
// chroots and adds users) and compares its status table with the README's.
func TestDemoMatchesREADME(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the demo needs root")
	}
	if testing.Short() {
		t.Skip("-short: the demo deploys, starts sshd and runs four agents")
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := statusBlock(t, string(readme))

	// A free port on loopback, so a developer's own sshd on 2222 is no obstacle.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var out []byte
	for attempt := 1; ; attempt++ {
		cmd := exec.CommandContext(ctx, "bash", "examples/demo.sh")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "BENTO_DEMO_PORT="+strconv.Itoa(port), "NO_COLOR=1")
		cmd.WaitDelay = time.Minute
		out, err = cmd.CombinedOutput()
		if err == nil {
			break
		}
		// Tests of other packages add and remove users at the same time:
		// useradd and groupadd fail while another holds /etc/passwd's lock.
		if attempt < 3 && strings.Contains(string(out), "cannot lock") {
			t.Logf("examples/demo.sh lost a race for /etc/passwd, again: %s", out)
			continue
		}
		t.Fatalf("examples/demo.sh: %v\n%s", err, out)
	}
	got := statusBlock(t, string(out))
	if !strings.Contains(string(out), "demo: stopped sshd, removed the demo users") {
		t.Errorf("the demo did not say it cleaned up:\n%s", out)
	}
	if len(got) != len(want) {
		t.Fatalf("the demo printed %d status lines, the README shows %d:\n%q\n%q", len(got), len(want), got, want)
	}
	for i := range want {
		if strings.Join(got[i], " | ") != strings.Join(want[i], " | ") {
			t.Errorf("status line %d differs from the README:\n demo:   %q\n README: %q", i, got[i], want[i])
		}
	}
}
