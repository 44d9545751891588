package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pkg/sftp"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
)

// bentoCmd runs the real bento binary against the e2e chroots and returns
// its standard output, everything it printed, and its exit status.
func bentoCmd(t *testing.T, args ...string) (stdout, all string, code int) {
	t.Helper()
	cmd := exec.Command(Bento(t), args...)
	cmd.Env = append(os.Environ(), fixture.Env()...)
	// os/exec copies stdout and stderr in two goroutines: both are
	// written from each, so under a lock (go test -race found it).
	var out, both bytes.Buffer
	locked := &lockedWriter{w: &both}
	cmd.Stdout = io.MultiWriter(&out, locked)
	cmd.Stderr = locked
	err := cmd.Run()
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("bento %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return out.String(), both.String(), code
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// upload writes n files of size bytes under reports/logs over SFTP, as the
// host, named after prefix; it fails the test if the server refuses one.
func uploadMany(t *testing.T, c *sftp.Client, prefix string, n, size int) {
	t.Helper()
	data := bytes.Repeat([]byte("x"), size)
	for i := range n {
		f, err := c.Create(fmt.Sprintf("%s/%s-%04d.log", manifest.LogsDir, prefix, i))
		if err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		if _, err := io.Copy(f, bytes.NewReader(data)); err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		f.Close()
	}
}

// reportsUsage counts the files and bytes under a host's reports/.
func reportsUsage(t *testing.T, dir string) (files int, size int64) {
	t.Helper()
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		files++
		if info.Mode().IsRegular() {
			size += info.Size()
		}
		return nil
	})
	return files, size
}

// A host that fills its reports/ over SFTP with its own key is flagged by
// bento status, its oldest logs are removed down to the limits (files,
// then bytes), and bento deploy still publishes the other hosts, which
// update as usual.
func TestAHostOverItsReportsLimitIsFlaggedAndTrimmed(t *testing.T) {
	e := Start(t, hostsFleet("alpha", "beta"))
	alpha, beta := e.Host(t, "alpha"), e.Host(t, "beta")
	state := t.TempDir()
	deploy := func() (string, int) {
		_, out, code := bentoCmd(t, "deploy", "--flake", e.FleetDir, "--chroot-root", e.SSHD.Root, "--state-dir", state, "--no-user-check")
		return out, code
	}
	if out, code := deploy(); code != 0 {
		t.Fatalf("first deploy: exit %d\n%s", code, out)
	}
	for _, h := range []*Host{alpha, beta} {
		if res := h.Run(t); res.ExitCode != 0 {
			t.Fatalf("%s: first tick: exit %d", h.Name, res.ExitCode)
		}
	}
	reports := filepath.Join(e.Chroot("alpha"), manifest.ReportsDir)
	betaReports := filepath.Join(e.Chroot("beta"), manifest.ReportsDir)
	betaFiles, betaBytes := reportsUsage(t, betaReports)

	// Over the limit on files: 600 small logs.
	c := e.SSHD.SFTP(t, alpha.SSH)
	uploadMany(t, c, "flood", 600, 100)
	js, out, code := bentoCmd(t, "status", "--no-eval", "--chroot-root", e.SSHD.Root, "--state-dir", state, "--json")
	if code != status.ExitFailing {
		t.Errorf("status: exit %d, want %d\n%s", code, status.ExitFailing, out)
	}
	var doc status.Snapshot
	if err := json.Unmarshal([]byte(js), &doc); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	rows := map[string]status.Row{}
	for _, r := range doc.Hosts {
		rows[r.Host] = r
	}
	if a := rows["alpha"]; a.State != status.Unreadable || !strings.HasPrefix(a.Message, "reports over limit: ") || !a.ReportsOverLimit || a.AppliedVersion != "" {
		t.Errorf("alpha: %s %q over=%v; want unreadable: reports over limit, its report unread", a.State, a.Message, a.ReportsOverLimit)
	}
	if b := rows["beta"]; b.State != status.UpToDate {
		t.Errorf("beta: %s %q", b.State, b.Message)
	}
	files, _ := reportsUsage(t, reports)
	if files != status.DefaultReportsMaxFiles {
		t.Errorf("alpha's reports/ holds %d entries after status, want exactly the limit %d", files, status.DefaultReportsMaxFiles)
	}
	if _, err := os.Stat(filepath.Join(e.Chroot("alpha"), manifest.StatusFile)); err != nil {
		t.Errorf("alpha's own report went: %v", err)
	}
	if _, err := os.Stat(filepath.Join(reports, "logs", fmt.Sprintf("flood-%04d.log", 599))); err != nil {
		t.Errorf("the newest log went: %v", err)
	}

	// Over the limit on bytes: three logs of 30 MiB. A deploy trims them
	// and publishes beta's new generation all the same.
	uploadMany(t, c, "big", 3, 30<<20)
	e.Update(t, "beta", func(h *fixture.Host) { h.Generation = "2" })
	before := e.Manifest(t, "beta").Version
	out, code = deploy()
	if code != 0 {
		t.Fatalf("deploy with alpha over its limit: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "host alpha: reports over limit: ") {
		t.Errorf("deploy does not warn about alpha:\n%s", out)
	}
	files, size := reportsUsage(t, reports)
	if size > status.DefaultReportsMaxBytes || files > status.DefaultReportsMaxFiles {
		t.Errorf("alpha's reports/ after deploy: %d files, %d bytes: over the limits", files, size)
	}
	if size < 30<<20 {
		t.Errorf("alpha's reports/ after deploy: %d bytes: more than the oldest logs went", size)
	}
	if f, b := reportsUsage(t, betaReports); f != betaFiles || b != betaBytes {
		t.Errorf("beta's reports/ changed from %d files, %d bytes to %d, %d", betaFiles, betaBytes, f, b)
	}
	if _, err := os.Stat(filepath.Join(e.Chroot("alpha"), manifest.ManifestFile)); err != nil {
		t.Errorf("alpha's publication went: %v", err)
	}
	if e.Manifest(t, "beta").Version == before {
		t.Error("beta was not published")
	}
	if res := beta.Run(t); res.ExitCode != 0 || beta.Status(t).AppliedVersion != e.Manifest(t, "beta").Version {
		t.Errorf("beta after the deploy: exit %d, applied %s", res.ExitCode, beta.Status(t).AppliedVersion)
	}
	// Within its limits again, alpha's agent goes on and status shows it as
	// usual.
	if res := alpha.Run(t); res.ExitCode != 0 {
		t.Errorf("alpha after the trim: exit %d", res.ExitCode)
	}
	_, out, code = bentoCmd(t, "status", "--no-eval", "--chroot-root", e.SSHD.Root, "--state-dir", state)
	if code != 0 {
		t.Errorf("status after alpha's agent cleaned up: exit %d\n%s", code, out)
	}
}
