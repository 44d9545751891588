package transport

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLocalReadsBelowTheBundleOnly(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	bundle := filepath.Join(base, "bundle")
	outside := filepath.Join(base, "secret")
	for p, content := range map[string]string{
		"bundle/manifest.json":    `{"format":2}`,
		"bundle/objects/ab/cdef":  "object",
		"secret":                  "outside the bundle",
		"bundle/reports/old.json": "x",
	} {
		p = filepath.Join(base, p)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink(outside, filepath.Join(bundle, "objects", "ab", "escape"))
	os.Symlink("/etc", filepath.Join(bundle, "etc"))
	if err := syscall.Mkfifo(filepath.Join(bundle, "objects", "ab", "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := OpenLocal(bundle, "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	if data, err := l.ReadFile(ctx, "manifest.json", 1024); err != nil || string(data) != `{"format":2}` {
		t.Fatalf("ReadFile: %q, %v", data, err)
	}
	if _, err := l.ReadFile(ctx, "objects/ab/cdef", 3); err == nil {
		t.Error("a file over the limit was read")
	}
	var buf bytes.Buffer
	if n, err := l.Download(ctx, "objects/ab/cdef", &buf, 100); err != nil || n != 6 || buf.String() != "object" {
		t.Fatalf("Download: %d %q %v", n, buf.String(), err)
	}
	done := make(chan error, 1)
	go func() { _, err := l.ReadFile(ctx, "objects/ab/fifo", 100); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a FIFO: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading a FIFO in the bundle hangs")
	}
	for _, p := range []string{"objects/ab/escape", "etc/passwd", "../secret", "/../secret"} {
		if data, err := l.ReadFile(ctx, p, 1024); err == nil {
			t.Errorf("%s read outside the bundle: %q", p, data)
		}
	}
	if err := l.WriteFile(ctx, "etc/bento-was-here", []byte("x")); err == nil {
		t.Error("wrote through a symlink out of the bundle")
	}
	if _, err := os.Lstat("/etc/bento-was-here"); err == nil {
		t.Fatal("/etc/bento-was-here exists")
	}

	// reports/ is the bundle's own, written atomically.
	if err := l.Mkdir(ctx, "reports/logs"); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteFile(ctx, "reports/status.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(bundle, "reports", "status.json")); string(data) != "{}" {
		t.Errorf("status.json in the bundle: %q", data)
	}
	fis, err := l.ReadDir(ctx, "reports")
	if err != nil || len(fis) != 3 {
		t.Errorf("ReadDir(reports): %d entries, %v", len(fis), err)
	}
}

func TestLocalWritesReportsElsewhere(t *testing.T) {
	ctx := context.Background()
	bundle, reports := t.TempDir(), filepath.Join(t.TempDir(), "out")
	os.WriteFile(filepath.Join(bundle, "manifest.json"), []byte("{}"), 0o644)
	os.Chmod(bundle, 0o555)
	defer os.Chmod(bundle, 0o755)
	l, err := OpenLocal(bundle, reports)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Mkdir(ctx, "reports/logs"); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteFile(ctx, "reports/logs/a.log.gz", []byte("log")); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteFile(ctx, "reports/status.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"status.json", "logs/a.log.gz"} {
		if _, err := os.Stat(filepath.Join(reports, p)); err != nil {
			t.Errorf("--report: %s: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(bundle, "reports")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the bundle got a reports/ though --report is set: %v", err)
	}
	if err := l.Touch(ctx, "reports/status.json", time.Unix(1e9, 0)); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(reports, "status.json")); !fi.ModTime().Equal(time.Unix(1e9, 0)) {
		t.Errorf("Touch: mtime %v", fi.ModTime())
	}
}
