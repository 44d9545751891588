package status

import (
	"io"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrometheusFileInMissingDirectory(t *testing.T) {
	err := WriteFileAtomic(filepath.Join(t.TempDir(), "nope", "bento.prom"), 0o644, func(w io.Writer) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "nope/bento.prom") {
		t.Fatalf("error %v, want one naming the file", err)
	}
}
