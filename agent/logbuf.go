package agent

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"sync"
)

// logBuffer collects the log of one attempt (bento's own lines, Nix's
// build output, switch-to-configuration's output) and copies it live to a
// watcher (the terminal or a trigger connection). It keeps at most max
// bytes: the beginning and the end, which say what was tried and how it
// failed, with a note of what was cut in between.
type logBuffer struct {
	mu      sync.Mutex
	max     int
	head    []byte
	tail    []byte
	cut     int64
	live    io.Writer
	liveErr bool
	// tap, when set, gets every byte written (live progress uploads it).
	tap func([]byte)
}

func newLogBuffer(max int64, live io.Writer) *logBuffer {
	return &logBuffer{max: int(max), live: live}
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A watcher that went away (a trigger client pressing Ctrl-C) must not
	// fail the build or the switch that writes here.
	if l.live != nil && !l.liveErr {
		if _, err := l.live.Write(p); err != nil {
			l.liveErr = true
		}
	}
	if l.tap != nil {
		l.tap(p)
	}
	headMax := l.max / 4
	q := p
	if n := headMax - len(l.head); n > 0 {
		if n > len(q) {
			n = len(q)
		}
		l.head = append(l.head, q[:n]...)
		q = q[n:]
	}
	tailMax := l.max - headMax
	l.tail = append(l.tail, q...)
	if len(l.tail) > 2*tailMax {
		drop := len(l.tail) - tailMax
		l.cut += int64(drop)
		l.tail = append(l.tail[:0], l.tail[drop:]...)
	}
	return len(p), nil
}

func (l *logBuffer) Printf(format string, args ...any) {
	fmt.Fprintf(l, "bento: "+format+"\n", args...)
}

// Bytes returns the kept log.
func (l *logBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	tail := l.tail
	cut := l.cut
	tailMax := l.max - l.max/4
	if len(tail) > tailMax {
		cut += int64(len(tail) - tailMax)
		tail = tail[len(tail)-tailMax:]
	}
	var b bytes.Buffer
	b.Write(l.head)
	if cut > 0 {
		fmt.Fprintf(&b, "\n[… %d bytes of log cut here: logMaxBytes is %d …]\n", cut, l.max)
	}
	b.Write(tail)
	return b.Bytes()
}

func gzipBytes(data []byte) []byte {
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	w.Write(data)
	w.Close()
	return b.Bytes()
}
