package builder_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bento-nix/bento/builder"
)

// LogTail shows Nix's last lines, never bento's own (which the summary
// prints beside it already), and only the end of a large log.
func TestLogTail(t *testing.T) {
	big := strings.Repeat("early nix line\n", 10000) + "last nix line\n"
	tests := []struct {
		name string
		log  string
		n    int
		want []string
	}{
		{"bento lines left out", "bento: build of alpha\nbento: $ nix-store --realise x\nbuilding x\nerror: boom\nbento: build: error: boom\n", 5, []string{"building x", "error: boom"}},
		{"last n", "one\ntwo\nthree\n", 2, []string{"two", "three"}},
		{"only bento", "bento: unchanged\n", 3, nil},
		{"large log", big, 1, []string{"last nix line"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "alpha.log")
			if err := os.WriteFile(p, []byte(tt.log), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := builder.LogTail(p, tt.n); !slices.Equal(got, tt.want) {
				t.Errorf("LogTail = %q, want %q", got, tt.want)
			}
		})
	}
	if got := builder.LogTail(filepath.Join(t.TempDir(), "missing.log"), 3); got != nil {
		t.Errorf("LogTail of a missing log = %q", got)
	}
}
