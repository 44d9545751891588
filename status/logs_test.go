package status

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
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
func logChroot(t *testing.T) chroot {
	c := newChroot(t)
	c.publish("alpha", v2, now, sysB)
	c.raw("alpha", manifest.LogsDir+"/"+v1+"-20250314T100000.log", []byte("old build\n"))
	c.raw("alpha", manifest.LogsDir+"/"+v2+"-20250314T110000.log.gz", gz(t, "building v2\nswitch-to-configuration switch\n"))
	c.raw("alpha", manifest.LogsDir+"/"+v2+"-20250314T113000.log", []byte("retry\n"))
	c.raw("alpha", manifest.LogsDir+"/.upload.tmp", []byte("partial"))
	base := time.Date(2025, 3, 14, 0, 0, 0, 0, time.UTC)
	for i, n := range []string{v1 + "-20250314T100000.log", v2 + "-20250314T110000.log.gz", v2 + "-20250314T113000.log"} {
		// The newest file is not the one the report names.
		mt := base.Add(time.Duration([]int{1, 2, 3}[i]) * time.Hour)
		os.Chtimes(filepath.Join(c.root, "alpha", manifest.LogsDir, n), mt, mt)
	}
	r := applied(v1, sysA, now)
	r.Log = v2 + "-20250314T110000.log.gz"
	c.report("alpha", r)
	return c
}

func readLog(t *testing.T, root, host, name string) (string, LogFile, error) {
	t.Helper()
	rc, l, err := OpenLog(root, host, name, DefaultMaxLogBytes, ReportLimits{})
	if err != nil {
		return "", l, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	return string(data), l, err
}

func TestLogs(t *testing.T) {
	c := logChroot(t)
	logs, err := Logs(c.root, "alpha", ReportLimits{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range logs {
		names = append(names, l.Name)
		if l.Latest != (l.Name == v2+"-20250314T110000.log.gz") {
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
		{v1, "old build\n", ""},
		{v2 + "-20250314T113000.log", "retry\n", ""},
		{v2, "", "matches 2 logs"},
		{"nope", "", `host alpha has no log "nope" (bento logs --list alpha shows them)`},
	}
	for _, tc := range tests {
		got, _, err := readLog(t, c.root, "alpha", tc.name)
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
	os.Remove(filepath.Join(c.root, "alpha", manifest.StatusFile))
	got, l, err := readLog(t, c.root, "alpha", "")
	if err != nil || got != "retry\n" {
		t.Errorf("latest without a report: %s %q, %v; want the newest file", l.Name, got, err)
	}
}

func TestLogsBadInput(t *testing.T) {
	c := logChroot(t)
	c.publish("beta", v1, now, sysA)
	outside := filepath.Join(c.root, "secret")
	os.WriteFile(outside, []byte("root's secret"), 0o600)
	os.MkdirAll(filepath.Join(c.root, "gamma", manifest.ReportsDir), 0o755)
	if err := os.Symlink(c.root, filepath.Join(c.root, "gamma", manifest.LogsDir)); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(c.root, "delta", manifest.LogsDir), 0o755)
	os.Symlink(outside, filepath.Join(c.root, "delta", manifest.LogsDir, "x.log"))
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
		got, _, err := readLog(t, c.root, tc.host, "")
		if err == nil || !strings.Contains(err.Error(), tc.err) || errors.Is(err, ErrNoLogs) != tc.noLogs {
			t.Errorf("host %q: %q, %v; want error %q", tc.host, got, err, tc.err)
		}
		if strings.Contains(got, "secret") {
			t.Errorf("host %q: printed a file outside its chroot", tc.host)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestFollowLog(t *testing.T) {
	c := newChroot(t)
	c.publish("alpha", v1, now, sysA)
	logs := filepath.Join(c.root, "alpha", manifest.LogsDir)
	first := filepath.Join(logs, v1+"-1.log")
	c.raw("alpha", manifest.LogsDir+"/"+v1+"-1.log", []byte("building\n"))
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- FollowLog(ctx, c.root, "alpha", "", &out, time.Hour, DefaultMaxLogBytes, ReportLimits{})
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
	c.raw("alpha", manifest.LogsDir+"/"+v2+"-2.log.gz", gz(t, "next version\n"))
	os.Chtimes(filepath.Join(logs, v2+"-2.log.gz"), later, later)
	r := applied(v1, sysA, now)
	r.Log = v2 + "-2.log.gz"
	c.report("alpha", r)
	wait("switching\n\n==> " + v2 + "-2.log.gz <==\nnext version\n")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follow returned %v after cancel, want nil", err)
	}
	if strings.Count(out.String(), "building") != 1 {
		t.Errorf("printed a line twice: %q", out.String())
	}
}
