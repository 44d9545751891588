package status

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

const helperRootEnv = "BENTO_STATUS_TEST_ROOT"

// TestHelperCollect is not a test: TestUnreadableReportsDirectory runs the
// test binary as an unprivileged user with this one selected, because root
// reads every directory whatever its mode.
func TestHelperCollect(t *testing.T) {
	root := os.Getenv(helperRootEnv)
	if root == "" {
		t.Skip("helper for TestUnreadableReportsDirectory")
	}
	s, err := Collect(context.Background(), Options{Root: root, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	json.NewEncoder(os.Stdout).Encode(s)
}

// TestUnreadableReportsDirectory: a reports directory bento cannot read is
// that host's problem, shown with the reason; the other hosts still show.
func TestUnreadableReportsDirectory(t *testing.T) {
	dir, err := os.MkdirTemp("", "bento-status-perm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "chroot")
	c := chroot{t, root}
	c.publish("open", v1, now.Add(-time.Hour), sysA)
	c.report("open", applied(v1, sysA, now.Add(-time.Minute)))
	c.publish("locked", v1, now.Add(-time.Hour), sysA)
	c.report("locked", applied(v1, sysA, now.Add(-time.Minute)))
	if err := os.Chmod(filepath.Join(root, "locked", manifest.ReportsDir), 0o700); err != nil {
		t.Fatal(err)
	}
	var s Snapshot
	if os.Getuid() != 0 {
		got, err := Collect(context.Background(), Options{Root: root, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		s = *got
	} else {
		// Copy the test binary where the unprivileged user can run it.
		self, err := os.Open(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(dir, "status.test")
		out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(out, self)
		self.Close()
		out.Close()
		cmd := exec.Command(bin, "-test.run=^TestHelperCollect$")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), helperRootEnv+"="+root)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		stdout, err := cmd.Output()
		if err != nil {
			t.Fatalf("helper as nobody: %v\n%s", err, stdout)
		}
		// go test's own PASS line follows the JSON document.
		if err := json.NewDecoder(strings.NewReader(string(stdout))).Decode(&s); err != nil {
			t.Fatalf("helper output: %v\n%s", err, stdout)
		}
	}
	rows := rowsByHost(&s)
	if r := rows["locked"]; r.State != Unreadable || !strings.Contains(r.Message, "unreadable report: reports/status.json: permission denied (run bento status as root") {
		t.Errorf("locked: %s %q; want unreadable, permission denied", r.State, r.Message)
	}
	if r := rows["open"]; r.State != UpToDate {
		t.Errorf("open: %s %q; want up-to-date", r.State, r.Message)
	}
}
