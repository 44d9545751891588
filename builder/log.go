package builder

import (
	"io"
	"os"
	"strings"

	"github.com/bento-nix/bento/nix"
)

// logMark starts every line bento itself writes into a host's log (the
// commands, the outcome, the errors); the other lines are Nix's.
const logMark = "bento: "

// bentoLines marks every line of a multi-line message as bento's own, so
// that a log's tail (which leaves out bento's lines) does not show Nix's
// last lines twice.
func bentoLines(msg string) string {
	return strings.ReplaceAll(strings.TrimRight(msg, "\n"), "\n", "\n"+logMark)
}

// LogTail returns the last n lines Nix wrote to a host's log (LogFile),
// without bento's own lines; nil when the log cannot be read.
func LogTail(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	// A build log can be large; its end is what explains a failure.
	const window = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > window {
		if _, err := f.Seek(-window, io.SeekEnd); err != nil {
			return nil
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil
	}
	var kept []string
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(l, logMark) {
			kept = append(kept, l)
		}
	}
	return nix.Tail(strings.Join(kept, "\n"), n)
}
