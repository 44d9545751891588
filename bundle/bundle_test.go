package bundle

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnsafeLogName(t *testing.T) {
	for name, unsafe := range map[string]bool{
		"2026-01-02T03-04-05Z.log.gz": false,
		"a.log.gz":                    false,
		"../x.log.gz":                 true,
		"logs/a.log.gz":               true,
		`a\b.log.gz`:                  true,
		"a\x00.log.gz":                true,
		".hidden.log.gz":              true,
		strings.Repeat("x", 256):      true,
		strings.Repeat("x", 255):      false,
	} {
		if got := unsafeLogName(name); got != unsafe {
			t.Errorf("unsafeLogName(%q) = %v, want %v", name, got, unsafe)
		}
	}
}

func TestExportRefusesBeforeWriting(t *testing.T) {
	root, out := t.TempDir(), t.TempDir()
	for host, want := range map[string]string{
		"../alpha": "invalid host name", // fleet.ValidateName
		"alpha":    "no chroot",         // none under root
	} {
		sum, err := Export(context.Background(), root, host, out, ExportOptions{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Export(%q): %v, want an error with %q", host, err, want)
		}
		if sum.Dir != filepath.Join(out, host) {
			t.Errorf("Export(%q): Dir %q", host, sum.Dir)
		}
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("a refused export wrote %v", entries)
	}
}

func TestImportReportNeedsABundle(t *testing.T) {
	_, err := ImportReport(t.TempDir(), t.TempDir(), ImportOptions{})
	if err == nil || !strings.HasPrefix(err.Error(), "not a bundle: ") {
		t.Fatalf("ImportReport of an empty directory: %v", err)
	}
}
