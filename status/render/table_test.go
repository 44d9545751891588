package render

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/status"
	"github.com/mattn/go-runewidth"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestTableGolden(t *testing.T) {
	root, f := goldenFleet(t)
	s, err := status.Collect(context.Background(), status.Options{Root: root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file  string
		color bool
	}{{"table.golden", false}, {"table-color.golden", true}} {
		var buf bytes.Buffer
		if err := Table(&buf, s, TableOptions{Color: tc.color, MessageWidth: 60}); err != nil {
			t.Fatal(err)
		}
		golden := filepath.Join("testdata", tc.file)
		if *update {
			if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (go test ./status -run TestTableGolden -update writes it)", err)
		}
		if !bytes.Equal(buf.Bytes(), want) {
			t.Errorf("%s differs (go test ./status -run TestTableGolden -update rewrites it after review):\n--- got\n%s\n--- want\n%s", tc.file, buf.String(), want)
		}
		if !tc.color && bytes.Contains(buf.Bytes(), []byte("\x1b")) {
			t.Errorf("colourless table holds escape codes")
		}
		if tc.color && !bytes.Contains(buf.Bytes(), []byte("\x1b[1;31mfailing\x1b[0m")) {
			t.Errorf("colour table does not paint failing red")
		}
	}
}

// TestTableAlignment checks, independently of the golden file, that every
// column starts at the same terminal cell on every line, with wide
// characters and with colour codes.
func TestTableAlignment(t *testing.T) {
	root, f := goldenFleet(t)
	s, err := status.Collect(context.Background(), status.Options{Root: root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	cond := &runewidth.Condition{StrictEmojiNeutral: true}
	for _, color := range []bool{false, true} {
		var buf bytes.Buffer
		Table(&buf, s, TableOptions{Color: color})
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		if len(lines) != len(s.Hosts)+2 {
			t.Fatalf("%d lines for %d hosts", len(lines), len(s.Hosts))
		}
		header := stripSGR(lines[0])
		var headerStarts []int
		for _, name := range []string{"HOST", "STATE", "PUBLISHED", "APPLIED", "SYSTEM", "SEEN", "MESSAGE"} {
			i := strings.Index(header, name)
			headerStarts = append(headerStarts, cond.StringWidth(header[:i]))
		}
		for i, r := range s.Hosts {
			line := stripSGR(lines[i+1])
			cells := tableCells(&r, s.GeneratedAt)
			pos := 0
			for j, cell := range cells {
				if cell == "" {
					continue
				}
				k := strings.Index(line[pos:], cell)
				if k < 0 {
					t.Fatalf("line %q lacks cell %q", line, cell)
				}
				pos += k
				if got := cond.StringWidth(line[:pos]); got != headerStarts[j] {
					t.Errorf("colour %v, host %s: column %d starts at cell %d, header at %d:\n%s\n%s", color, r.Host, j, got, headerStarts[j], header, line)
				}
				pos += len(cell)
			}
			if strings.HasSuffix(line, " ") {
				t.Errorf("line %q ends with spaces", line)
			}
		}
	}
}

func stripSGR(s string) string {
	var b strings.Builder
	w := &termsafe.Writer{W: &b}
	w.Write([]byte(s))
	return b.String()
}

func TestSummaryLine(t *testing.T) {
	s := &status.Snapshot{Root: "/home/chroot", Summary: status.Summary{Total: 0}}
	if got := SummaryLine(s, false); got != "no hosts in /home/chroot yet (bento deploy publishes them)" {
		t.Errorf("empty: %q", got)
	}
	s.Summary = status.Summary{Total: 4, States: map[status.State]int{status.UpToDate: 2, status.Failing: 1, status.Pending: 1}}
	if got := SummaryLine(s, false); got != "4 hosts: 1 failing, 1 pending, 2 up-to-date" {
		t.Errorf("got %q", got)
	}
}

// TestTableFitsTheTerminal: on a terminal, messages are cut so rows fit
// its width, but never below a readable minimum.
func TestTableFitsTheTerminal(t *testing.T) {
	root, f := goldenFleet(t)
	s, err := status.Collect(context.Background(), status.Options{Root: root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	cond := &runewidth.Condition{StrictEmojiNeutral: true}
	for _, width := range []int{100, 140, 40} {
		var buf bytes.Buffer
		Table(&buf, s, TableOptions{Width: width})
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		header := lines[0]
		msgCol := cond.StringWidth(header[:strings.Index(header, "MESSAGE")])
		cut := 0
		for _, line := range lines[1 : len(lines)-1] {
			w := cond.StringWidth(line)
			if w > max(width, msgCol+minMessageWidth) {
				t.Errorf("width %d: line of %d cells: %s", width, w, line)
			}
			if strings.HasSuffix(line, "…") {
				cut++
			}
		}
		if cut == 0 {
			t.Errorf("width %d: no message was cut:\n%s", width, buf.String())
		}
	}
}

// However narrow the terminal, a failing host's message keeps when it
// retries: the cut is made before it.
func TestTableKeepsRetryTime(t *testing.T) {
	retry := now.Add(12*time.Minute + 30*time.Second)
	s := &status.Snapshot{GeneratedAt: now, Summary: status.Summary{Total: 2}, Hosts: []status.Row{
		{Host: "web", State: status.Failing, NextRetry: &retry,
			Message: "build: error: builder for '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-web.drv' failed with exit code 1 (attempt 3, retry in 12m30s)"},
		{Host: "db", State: status.Pending, Message: "updating: building (45s) and a long tale of what it builds for how long"},
	}}
	for _, width := range []int{200, 100, 80, 60, 30} {
		var buf bytes.Buffer
		if err := Table(&buf, s, TableOptions{Width: width}); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(buf.String(), "\n")
		if !strings.HasSuffix(lines[1], "retry in 12m30s)") {
			t.Errorf("width %d: the retry time is cut off:\n%s", width, lines[1])
		}
		if width >= 80 && runewidth.StringWidth(lines[1]) >= width {
			t.Errorf("width %d: row of %d cells:\n%s", width, runewidth.StringWidth(lines[1]), lines[1])
		}
		if width < 150 && !strings.Contains(lines[1], "… (retry in 12m30s)") {
			t.Errorf("width %d: want the message cut before the retry time:\n%s", width, lines[1])
		}
	}
}
