package logs

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/testio"

	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
	"github.com/bento-nix/bento/status/internal/statustest"
)

func gz(t *testing.T, s string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(s))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// logChroot has three logs whose modification times disagree with the one
// the report names as the latest.
func logChroot(t *testing.T) statustest.Chroot {
	c := statustest.New(t)
	c.Publish("alpha", statustest.V2, now, statustest.SysB)
	c.Raw("alpha", manifest.LogsDir+"/"+statustest.V1+"-20250314T100000.log", []byte("old build\n"))
	c.Raw("alpha", manifest.LogsDir+"/"+statustest.V2+"-20250314T110000.log.gz", gz(t, "building v2\nswitch-to-configuration switch\n"))
	c.Raw("alpha", manifest.LogsDir+"/"+statustest.V2+"-20250314T113000.log", []byte("retry\n"))
	c.Raw("alpha", manifest.LogsDir+"/.upload.tmp", []byte("partial"))
	base := time.Date(2025, 3, 14, 0, 0, 0, 0, time.UTC)
	for i, n := range []string{statustest.V1 + "-20250314T100000.log", statustest.V2 + "-20250314T110000.log.gz", statustest.V2 + "-20250314T113000.log"} {
		// The newest file is not the one the report names.
		mt := base.Add(time.Duration([]int{1, 2, 3}[i]) * time.Hour)
		os.Chtimes(filepath.Join(c.Root, "alpha", manifest.LogsDir, n), mt, mt)
	}
	r := statustest.Applied(statustest.V1, statustest.SysA, now)
	r.Log = statustest.V2 + "-20250314T110000.log.gz"
	c.Report("alpha", r)
	return c
}

func readLog(t *testing.T, root, host, name string) (string, File, error) {
	t.Helper()
	rc, l, err := Open(root, host, name, DefaultMaxBytes, status.ReportLimits{})
	if err != nil {
		return "", l, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	return string(data), l, err
}

func TestList(t *testing.T) {
	c := logChroot(t)
	logs, err := List(c.Root, "alpha", status.ReportLimits{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range logs {
		names = append(names, l.Name)
		if l.Latest != (l.Name == statustest.V2+"-20250314T110000.log.gz") {
			t.Errorf("%s latest = %v; the report names the .gz", l.Name, l.Latest)
		}
	}
	if len(names) != 3 {
		t.Errorf("logs %v: want 3, without the temporary upload", names)
	}

	tests := []struct {
		name, want, err string
	}{
		{"", "building v2\nswitch-to-configuration switch\n", ""},
		{statustest.V1, "old build\n", ""},
		{statustest.V2 + "-20250314T113000.log", "retry\n", ""},
		{statustest.V2, "", "matches 2 logs"},
		{"nope", "", `host alpha has no log "nope" (bento logs --list alpha shows them)`},
	}
	for _, tc := range tests {
		got, _, err := readLog(t, c.Root, "alpha", tc.name)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("log %q: error %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("log %q: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestLogsLatestWithoutReport(t *testing.T) {
	c := logChroot(t)
	os.Remove(filepath.Join(c.Root, "alpha", manifest.StatusFile))
	got, l, err := readLog(t, c.Root, "alpha", "")
	if err != nil || got != "retry\n" {
		t.Errorf("latest without a report: %s %q, %v; want the newest file", l.Name, got, err)
	}
}

func TestLogsBadInput(t *testing.T) {
	c := logChroot(t)
	c.Publish("beta", statustest.V1, now, statustest.SysA)
	outside := filepath.Join(c.Root, "secret")
	os.WriteFile(outside, []byte("root's secret"), 0o600)
	os.MkdirAll(filepath.Join(c.Root, "gamma", manifest.ReportsDir), 0o755)
	if err := os.Symlink(c.Root, filepath.Join(c.Root, "gamma", manifest.LogsDir)); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(c.Root, "delta", manifest.LogsDir), 0o755)
	os.Symlink(outside, filepath.Join(c.Root, "delta", manifest.LogsDir, "x.log"))
	tests := []struct {
		host, err string
		noLogs    bool
	}{
		{"../etc", "invalid host name", false},
		{"nope", "host nope: no chroot at", false},
		{"beta", "host beta: no logs uploaded yet", true},
		{"gamma", "path escapes from parent", false},
		{"delta", "host delta: no logs uploaded yet", true},
	}
	for _, tc := range tests {
		got, _, err := readLog(t, c.Root, tc.host, "")
		if err == nil || !strings.Contains(err.Error(), tc.err) || errors.Is(err, ErrNoLogs) != tc.noLogs {
			t.Errorf("host %q: %q, %v; want error %q", tc.host, got, err, tc.err)
		}
		if strings.Contains(got, "secret") {
			t.Errorf("host %q: printed a file outside its chroot", tc.host)
		}
	}
}

func TestFollowLog(t *testing.T) {
	c := statustest.New(t)
	c.Publish("alpha", statustest.V1, now, statustest.SysA)
	logs := filepath.Join(c.Root, "alpha", manifest.LogsDir)
	first := filepath.Join(logs, statustest.V1+"-1.log")
	c.Raw("alpha", manifest.LogsDir+"/"+statustest.V1+"-1.log", []byte("building\n"))
	ctx, cancel := context.WithCancel(context.Background())
	var out testio.Buffer
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, c.Root, "alpha", "", &out, time.Hour, DefaultMaxBytes, status.ReportLimits{})
	}()
	wait := func(want string) {
		t.Helper()
		deadline := time.Now().Add(waitFor)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("follow output %q never showed %q", out.String(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("building\n")
	f, _ := os.OpenFile(first, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("switching\n")
	f.Close()
	wait("building\nswitching\n")
	// A newer attempt's log, named by the report, follows under a header.
	later := time.Now().Add(time.Minute)
	c.Raw("alpha", manifest.LogsDir+"/"+statustest.V2+"-2.log.gz", gz(t, "next version\n"))
	os.Chtimes(filepath.Join(logs, statustest.V2+"-2.log.gz"), later, later)
	r := statustest.Applied(statustest.V1, statustest.SysA, now)
	r.Log = statustest.V2 + "-2.log.gz"
	c.Report("alpha", r)
	wait("switching\n\n==> " + statustest.V2 + "-2.log.gz <==\nnext version\n")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follow returned %v after cancel, want nil", err)
	}
	if strings.Count(out.String(), "building") != 1 {
		t.Errorf("printed a line twice: %q", out.String())
	}
}

// bento logs enforces the limits first: a host they can fix loses its
// oldest logs and its latest is printed; a host still over them is not
// read at all, and the error names the flags.
func TestLogsEnforceTheLimits(t *testing.T) {
	c := statustest.New(t)
	c.Publish("alpha", statustest.V1, now, statustest.SysA)
	for i := range 6 {
		c.LogAt("alpha", fmt.Sprintf("v-%d.log", i), 10, now.Add(time.Duration(i)*time.Minute))
	}
	limits := status.ReportLimits{MaxBytes: 1 << 20, MaxFiles: 4}
	logs, err := List(c.Root, "alpha", limits)
	if err != nil {
		t.Fatal(err)
	}
	if len(logs) != 3 || logs[0].Name != "v-3.log" || !logs[2].Latest {
		t.Errorf("logs after the trim: %+v", logs)
	}
	// Five entries besides the logs: removing every log would not do.
	for _, n := range []string{"a", "b", "c", "d"} {
		c.Raw("alpha", "reports/junk/"+n, []byte("x"))
	}
	for _, open := range []func() error{
		func() error { _, err := List(c.Root, "alpha", limits); return err },
		func() error { _, _, err := Open(c.Root, "alpha", "", DefaultMaxBytes, limits); return err },
		func() error {
			return Follow(context.Background(), c.Root, "alpha", "", io.Discard, time.Hour, DefaultMaxBytes, limits)
		},
	} {
		err := open()
		if !errors.Is(err, status.ErrReportsOverLimit) || !strings.Contains(err.Error(), "host alpha: reports over limit: ") || !strings.Contains(err.Error(), "--reports-max-files") {
			t.Errorf("over the limit: %v", err)
		}
	}
}

// A tick under way: --follow prints the growing log its live progress
// names (a gzip member per chunk, the last one maybe half written), then
// goes on in the report's log of the same name where it stopped.
func TestFollowLiveLog(t *testing.T) {
	c := statustest.New(t)
	c.Publish("alpha", statustest.V2, now, statustest.SysB)
	c.Raw("alpha", manifest.LogsDir+"/"+statustest.V1+"-1.log.gz", gz(t, "old attempt\n"))
	hourAgo := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(c.Root, "alpha", manifest.LogsDir, statustest.V1+"-1.log.gz"), hourAgo, hourAgo)
	old := statustest.Applied(statustest.V1, statustest.SysA, time.Now().Add(-time.Hour))
	old.Log = statustest.V1 + "-1.log.gz"
	c.Report("alpha", old)
	live := statustest.V2 + "-2.log.gz"
	started := time.Now().Add(-time.Minute).UTC()
	c.JSON("alpha", manifest.ProgressFile, manifest.Progress{Format: manifest.ProgressFormat, Host: "alpha", Version: statustest.V2,
		StartedAt: started, Stage: manifest.ProgressBuilding, StageStartedAt: started, Log: live})
	path := filepath.Join(c.Root, "alpha", manifest.LogsDir, live)
	second := gz(t, "building\n")
	c.Raw("alpha", manifest.LogsDir+"/"+live, append(gz(t, "fetching\n"), second[:len(second)/2]...))

	ctx, cancel := context.WithCancel(context.Background())
	var out testio.Buffer
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, c.Root, "alpha", "", &out, 20*time.Millisecond, DefaultMaxBytes, status.ReportLimits{})
	}()
	wait := func(want string) {
		t.Helper()
		deadline := time.Now().Add(waitFor)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("follow output %q never showed %q", out.String(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("fetching\n")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(second[len(second)/2:])
	f.Close()
	wait("fetching\nbuilding\n")
	// Between the tick's last progress record and its report, the report
	// still names the old attempt's log: the follower stays on the newer,
	// growing one, and prints what is appended to it.
	if err := os.Remove(filepath.Join(c.Root, "alpha", manifest.ProgressFile)); err != nil {
		t.Fatal(err)
	}
	f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(gz(t, "checking\n"))
	f.Close()
	wait("fetching\nbuilding\nchecking\n")
	// The report arrives: its log replaces the growing one.
	c.Raw("alpha", manifest.LogsDir+"/"+live, gz(t, "fetching\nbuilding\nchecking\nswitched\n"))
	rep := statustest.Applied(statustest.V2, statustest.SysB, time.Now())
	rep.StartedAt, rep.Log = started, live
	c.Report("alpha", rep)
	wait("fetching\nbuilding\nchecking\nswitched\n")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follow: %v", err)
	}
	if got := out.String(); got != "fetching\nbuilding\nchecking\nswitched\n" {
		t.Errorf("follow printed %q; want the attempt's log once, without the old attempt's or a header", got)
	}
}
