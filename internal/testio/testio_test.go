package testio

import (
	"fmt"
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
