package testio

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestSeenAndLine(t *testing.T) {
	tests := []struct {
		name       string
		writes     []string
		seen, line string
		wantSeen   bool
		wantLine   bool
	}{
		{"nothing yet", nil, "ready", "ready", false, false},
		{"whole line", []string{"ready\n"}, "ready", "ready", true, true},
		{"line split over writes", []string{"rea", "dy", "\n"}, "ready", "ready", true, true},
		{"part of a line is seen, not a line", []string{"not ready\n"}, "ready", "ready", true, false},
		{"line not yet ended", []string{"x\nready"}, "ready", "ready", true, false},
		{"later line", []string{"a\nb\nready\nc\n"}, "b\nready", "ready", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Buffer
			seen, line := b.Seen(tt.seen), b.Line(tt.line)
			for _, w := range tt.writes {
				fmt.Fprint(&b, w)
			}
			if got := closed(seen); got != tt.wantSeen {
				t.Errorf("Seen(%q) closed = %v, want %v (output %q)", tt.seen, got, tt.wantSeen, b.String())
			}
			if got := closed(line); got != tt.wantLine {
				t.Errorf("Line(%q) closed = %v, want %v (output %q)", tt.line, got, tt.wantLine, b.String())
			}
			// Asking after the fact answers at once.
			if got := closed(b.Line(tt.line)); got != tt.wantLine {
				t.Errorf("late Line(%q) closed = %v, want %v", tt.line, got, tt.wantLine)
			}
		})
	}
}

func TestConcurrentWriters(t *testing.T) {
	var b Buffer
	done := b.Line("w3 99")
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				fmt.Fprintf(&b, "w%d %d\n", w, i)
			}
		}()
	}
	wg.Wait()
	<-done
	if n := len(b.String()); n < 4*100*5 {
		t.Fatalf("lost writes: %d bytes", n)
	}
}

func TestGrepStore(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"a/x": "hello secret-1", "b/y": "nothing", "c": "secret-2 and secret-1"} {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := GrepStore(dir, "secret-1", "secret-2", "secret-3")
	if got["secret-1"] == "" || got["secret-2"] != filepath.Join(dir, "c") {
		t.Errorf("found %v, want secret-1 and secret-2 (in c)", got)
	}
	if p, ok := got["secret-3"]; ok {
		t.Errorf("secret-3 found in %s: it is nowhere", p)
	}
}
