package render

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/table"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/status"
)

// Screen is where Watch draws.
type Screen struct {
	Out io.Writer
	// TTY redraws the table in place with a line saying when; otherwise
	// (a log) a table is printed only when something in it changed.
	TTY   bool
	Table TableOptions
	// Every is the longest time between redraws; Clock says the time.
	Every time.Duration
	Clock func() time.Time
	// PromFile, when set, is rewritten with the metrics on every redraw.
	PromFile string
	// Resize redraws at once when it fires (SIGWINCH), with the table
	// sized to Width() when Width is set.
	Resize <-chan struct{}
	Width  func() int
	// Header, when set, gives lines printed above each table (bento
	// status: the rollout's summary), "" for none.
	Header func(*status.Snapshot) string
}

// Watch is bento status --watch: status.Watch, drawing each snapshot (or
// the error that stopped its collection) as a table on the screen.
func Watch(ctx context.Context, o status.Options, sc Screen) error {
	var last []byte
	draw := func(s *status.Snapshot, err error) error {
		opts := sc.Table
		if sc.Width != nil {
			opts.Width = sc.Width()
		}
		var buf bytes.Buffer
		if err != nil {
			fmt.Fprintf(&buf, "bento: %v\n", err)
		} else {
			if sc.Header != nil {
				if h := sc.Header(s); h != "" {
					fmt.Fprintf(&termsafe.Writer{W: &buf}, "%s\n\n", h)
				}
			}
			Table(&buf, s, opts)
			if sc.PromFile != "" {
				if err := atomicfile.Write(sc.PromFile, 0o644, func(w io.Writer) error { return Prometheus(w, s) }); err != nil {
					fmt.Fprintf(&buf, "bento: %v\n", err)
				}
			}
		}
		if !sc.TTY {
			if bytes.Equal(buf.Bytes(), last) {
				return nil
			}
			last = bytes.Clone(buf.Bytes())
			buf.WriteByte('\n')
			_, err := sc.Out.Write(buf.Bytes())
			return err
		}
		_, err = sc.Out.Write(screen(buf.String(), o.Root, sc.Clock(), opts.Width))
		return err
	}
	return status.WatchWith(ctx, o, sc.Every, sc.Clock, sc.Resize, draw)
}

// screen redraws text (the table) in place: home, each line cleared to
// its end, then the rest of the screen: no flicker, no leftovers from a
// longer table.
func screen(text, root string, now time.Time, width int) []byte {
	var b bytes.Buffer
	b.WriteString("\x1b[H")
	for _, line := range strings.SplitAfter(text, "\n") {
		b.WriteString(strings.TrimSuffix(line, "\n"))
		if strings.HasSuffix(line, "\n") {
			b.WriteString("\x1b[K\n")
		}
	}
	footer := fmt.Sprintf("watching %s, redrawn %s; Ctrl-C quits", root, now.Format("15:04:05"))
	if width > 0 && table.Width(footer) >= width {
		// A wrapped line would push the table down on every redraw.
		footer = table.Truncate(footer, width-1)
	}
	fmt.Fprintf(&b, "%s\x1b[K\n\x1b[J", footer)
	return b.Bytes()
}
