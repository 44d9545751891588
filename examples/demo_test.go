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
// demo's last "bento status" command line in text (round two's, which the
// README shows), one slice of cells per line, with
// what changes from run to run (the SEEN column, the retry delay) masked.
func statusBlock(t *testing.T, text string) [][]string {
	t.Helper()
	lines := strings.Split(text, "\n")
	start := -1
	for i, l := range lines {
		// The demo's own status command: other examples may follow.
		if strings.HasPrefix(l, "$ ") && strings.Contains(l, "bento status ") && strings.Contains(l, "--chroot-root /var/lib/bento-demo/chroot") {
			start = i + 1
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

	out := runDemo(t)
	// Round one puts a good version everywhere, so round two's rollback
	// has a system to go back to.
	if !strings.Contains(out, "4 hosts: 4 up-to-date") {
		t.Errorf("round one did not end with every host up to date:\n%s", out)
	}
	got := statusBlock(t, out)
	if !strings.Contains(out, "demo: stopped sshd, removed the demo users") {
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

// TestDemoKeepAndClean: --keep leaves the demo's directory and users for a
// look around, and --clean removes them.
func TestDemoKeepAndClean(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the demo needs root")
	}
	if testing.Short() {
		t.Skip("-short: the demo deploys, starts sshd and runs four agents")
	}
	t.Cleanup(func() { exec.Command("bash", "../examples/demo.sh", "--clean").Run() })
	runDemo(t, "--keep")
	const dir = "/var/lib/bento-demo"
	if _, err := os.Stat(dir + "/chroot/broken/manifest.json"); err != nil {
		t.Fatalf("--keep left no chroots: %v", err)
	}
	if err := exec.Command("id", "bento-broken").Run(); err != nil {
		t.Fatalf("--keep left no user bento-broken: %v", err)
	}
	out, err := exec.Command("bash", "../examples/demo.sh", "--clean").CombinedOutput()
	if err != nil {
		t.Fatalf("--clean: %v\n%s", err, out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("--clean left %s: %v", dir, err)
	}
	if err := exec.Command("id", "bento-broken").Run(); err == nil {
		t.Error("--clean left the user bento-broken")
	}
}

// runDemo runs examples/demo.sh with args on a free port and returns its
// output.
func runDemo(t *testing.T, args ...string) string {
	t.Helper()
	// A free port on loopback, so a developer's own sshd on 2222 is no obstacle.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for attempt := 1; ; attempt++ {
		cmd := exec.CommandContext(ctx, "bash", append([]string{"examples/demo.sh"}, args...)...)
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "BENTO_DEMO_PORT="+strconv.Itoa(port), "NO_COLOR=1")
		cmd.WaitDelay = time.Minute
		out, err := cmd.CombinedOutput()
		if err == nil {
			return string(out)
		}
		// Tests of other packages add and remove users at the same time:
		// useradd and groupadd fail while another holds /etc/passwd's lock.
		if attempt < 3 && strings.Contains(string(out), "cannot lock") {
			t.Logf("examples/demo.sh lost a race for /etc/passwd, again: %s", out)
			continue
		}
		t.Fatalf("examples/demo.sh %v: %v\n%s", args, err, out)
	}
}
