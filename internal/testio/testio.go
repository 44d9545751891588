// Package testio has the one writer tests share when a goroutine writes
// output that the test reads: a locked buffer that can also tell when a
// line has appeared, so a test waits for the event, never for a moment.
package testio

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Buffer is a bytes.Buffer safe for concurrent writers and readers.
type Buffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	waiters []waiter
}

type waiter struct {
	want string
	ch   chan struct{}
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.b.Write(p)
	b.wake()
	return n, err
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Seen returns a channel closed once the output contains want (at once
// when it already does).
func (b *Buffer) Seen(want string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := waiter{want: want, ch: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.wake()
	return w.ch
}

// Line returns a channel closed once a line of the output is line
// (the whole line, not a part of one).
func (b *Buffer) Line(line string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := waiter{want: "\n" + line + "\n", ch: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.wake()
	return w.ch
}

// wake closes the channels of the waiters whose text has appeared; called
// with mu held. A line at the very start of the output counts too.
func (b *Buffer) wake() {
	if len(b.waiters) == 0 {
		return
	}
	out := "\n" + b.b.String()
	kept := b.waiters[:0]
	for _, w := range b.waiters {
		if strings.Contains(out, w.want) {
			close(w.ch)
			continue
		}
		kept = append(kept, w)
	}
	b.waiters = kept
}

// GrepStore searches every regular file below dir (the Nix store, for a
// test that a secret never lands there) for each needle, and returns the
// first file holding each one found.
func GrepStore(dir string, needles ...string) map[string]string {
	found := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || len(found) == len(needles) {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, n := range needles {
			if _, seen := found[n]; !seen && bytes.Contains(data, []byte(n)) {
				found[n] = p
			}
		}
		return nil
	})
	return found
}
