package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/table"
	"github.com/bento-nix/bento/mirror"
)

// The mirror table is aligned like every other table, and what a mirror
// sent back (an error quoting its files) stays on its row, inert.
func TestPrintMirrorTable(t *testing.T) {
	res := []mirror.HostResult{
		{Mirror: "ssh://root@m1:22/home/chroot", Host: "alpha", Files: 12, Bytes: 3 << 20, Skipped: 1, Changed: true},
		{Mirror: "ssh://root@m1:22/home/chroot", Host: "beta-long-name", Err: errors.New("open reports/\x1b]0;pwned\x07x\nFORGED row")},
		{Mirror: "ssh://root@m1:22/home/chroot", Host: "gamma", Note: "no report on the mirror"},
	}
	var b strings.Builder
	if err := printMirrorTable(&b, res, "pushed"); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("want a header and 3 rows, got %d lines:\n%s", len(lines), out)
	}
	if strings.ContainsAny(out, "\x1b\x07") {
		t.Errorf("controls reached the terminal: %q", out)
	}
	// Every column starts where its header does.
	header := lines[0]
	for _, col := range []string{"HOST", "STATE", "FILES", "BYTES", "MESSAGE"} {
		at := strings.Index(header, col)
		for _, l := range lines[1:] {
			if at >= len(l) || l[at-2:at] != "  " || l[at] == ' ' {
				t.Errorf("column %s (at %d) misaligned in %q", col, at, l)
			}
		}
	}
	for i, want := range []string{"pushed", "failed", "unchanged"} {
		if !strings.Contains(lines[i+1], want) {
			t.Errorf("row %d lacks %q: %q", i+1, want, lines[i+1])
		}
	}
	if !strings.Contains(lines[1], "3.0 MiB") || !strings.HasSuffix(lines[1], " -") {
		t.Errorf("alpha's row: want its size with a unit and - for no message: %q", lines[1])
	}
	if table.Width(lines[2]) != len([]rune(lines[2])) || !strings.Contains(lines[2], `\nFORGED row`) {
		t.Errorf("beta's error must be one escaped line: %q", lines[2])
	}
}
