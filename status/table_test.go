package status

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mattn/go-runewidth"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestAgo(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Minute:                    "0s",
		0:                               "0s",
		45 * time.Second:                "45s",
		3*time.Minute + 59*time.Second:  "3m",
		time.Hour:                       "1h",
		2*time.Hour + 5*time.Minute:     "2h 5m",
		23*time.Hour + 59*time.Minute:   "23h 59m",
		4*24*time.Hour + 7*time.Hour:    "4d",
		400 * 24 * time.Hour:            "400d",
		59*time.Minute + 59*time.Second: "59m",
	} {
		if got := Ago(d); got != want {
			t.Errorf("Ago(%s) = %q, want %q", d, got, want)
		}
	}
}

// goldenFleet is a chroot root with a host in nearly every state, a
// version made of wide characters and emoji, and a long message.
func goldenFleet(t *testing.T) (string, *fleet.Fleet) {
	c := newChroot(t)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	c.publish("web-1", v1, ago(2*time.Hour), sysA)
	c.report("web-1", applied(v1, sysA, ago(3*time.Minute)))

	c.publish("web-2", v2, ago(10*time.Minute), sysB)
	c.report("web-2", applied(v1, sysA, ago(2*time.Hour+5*time.Minute-time.Hour)))

	c.publish("db", v2, ago(10*time.Minute), sysB)
	r := applied(v1, sysA, ago(4*time.Minute))
	r.SeenVersion, r.AttemptedVersion, r.Stage, r.Result = v2, v2, manifest.StageFailed, manifest.ResultFailure
	r.Error = "build: error: builder for '/nix/store/q3x…-nixos-system-db.drv' failed with exit code 1; last 10 log lines: fixture: build of db fails on purpose"
	c.report("db", r)

	c.publish("cupboard-pi", v1, ago(5*24*time.Hour), sysA)
	c.report("cupboard-pi", applied(v1, sysA, ago(4*24*time.Hour)))

	c.publish("kiosk", v1, ago(time.Hour), sysA)
	r = applied("版本🍱ab", sysA, ago(30*time.Second))
	r.SeenVersion, r.AttemptedVersion = v1, v1
	r.Stage, r.Result, r.RollbackReason, r.Error = manifest.StageRolledBack, manifest.ResultRolledBack, "activation-failed", "fixture: activation of kiosk fails on purpose"
	c.report("kiosk", r)

	c.publish("gpu", v1, ago(time.Hour), sysA)
	c.report("gpu", applied(v1, sysB, ago(time.Minute)))

	c.publish("edge", v1, ago(time.Hour), sysA)
	r = applied(v1, sysA, ago(7*time.Minute))
	r.RebootRequired = true
	c.report("edge", r)

	c.publish("new-box", v1, ago(time.Minute), sysA)

	c.publish("old-box", v1, ago(90*24*time.Hour), sysA)
	c.report("old-box", applied(v1, sysA, ago(80*24*time.Hour)))

	c.publish("broken-report", v1, ago(time.Hour), sysA)
	c.raw("broken-report", manifest.StatusFile, []byte(`{"format":1,"host":"broken-report","finishedAt":true}`))

	f := &fleet.Fleet{Ref: "/fleet", Hosts: []fleet.Host{
		managed("web-1", ""), managed("web-2", ""), managed("db", ""), managed("cupboard-pi", ""),
		managed("kiosk", ""), managed("gpu", ""), managed("edge", ""), managed("new-box", ""),
		managed("broken-report", ""), managed("staging", ""),
		{Name: "laptop", Managed: true}, {Name: "printer"},
	}}
	return c.root, f
}

func TestTableGolden(t *testing.T) {
	root, f := goldenFleet(t)
	s, err := Collect(context.Background(), Options{Root: root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file  string
		color bool
	}{{"table.golden", false}, {"table-color.golden", true}} {
		var buf bytes.Buffer
		if err := WriteTable(&buf, s, TableOptions{Color: tc.color, MessageWidth: 60}); err != nil {
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
	s, err := Collect(context.Background(), Options{Root: root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	cond := &runewidth.Condition{StrictEmojiNeutral: true}
	for _, color := range []bool{false, true} {
		var buf bytes.Buffer
		WriteTable(&buf, s, TableOptions{Color: color})
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
	w := &TerminalWriter{W: &b}
	w.Write([]byte(s))
	return b.String()
}

func TestSummaryLine(t *testing.T) {
	s := &Snapshot{Root: "/home/chroot", Summary: Summary{Total: 0}}
	if got := SummaryLine(s, false); got != "no hosts in /home/chroot yet (bento deploy publishes them)" {
		t.Errorf("empty: %q", got)
	}
	s.Summary = Summary{Total: 4, States: map[State]int{UpToDate: 2, Failing: 1, Pending: 1}}
	if got := SummaryLine(s, false); got != "4 hosts: 1 failing, 1 pending, 2 up-to-date" {
		t.Errorf("got %q", got)
	}
}

// TestTableFitsTheTerminal: on a terminal, messages are cut so rows fit
// its width, but never below a readable minimum.
func TestTableFitsTheTerminal(t *testing.T) {
	root, f := goldenFleet(t)
	s, err := Collect(context.Background(), Options{Root: root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	cond := &runewidth.Condition{StrictEmojiNeutral: true}
	for _, width := range []int{100, 140, 40} {
		var buf bytes.Buffer
		WriteTable(&buf, s, TableOptions{Width: width})
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
