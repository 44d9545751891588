package logs

import (
	"bytes"
	"testing"
)

func TestTerminalWriter(t *testing.T) {
	tests := []struct {
		in        string
		keepColor bool
		want      string
	}{
		{"plain\ttext\n", false, "plain\ttext\n"},
		{"\x1b[1;31merror:\x1b[0m boom\n", true, "\x1b[1;31merror:\x1b[0m boom\n"},
		{"\x1b[1;31merror:\x1b[0m boom\n", false, "error: boom\n"},
		{"title\x1b]0;pwned\x07 ok", true, "title ok"},
		{"clip\x1b]52;c;ZWNobw==\x1b\\ ok", true, "clip ok"},
		{"up\x1b[2Aover\x1b[2Kwrite", true, "upoverwrite"},
		{"bell\x07 cr\r del\x7f", true, "bell cr del"},
		{"ünïcødé 🍱\n", false, "ünïcødé 🍱\n"},
	}
	for _, tc := range tests {
		// Byte by byte too: sequences split across writes are still caught.
		for _, chunk := range []int{len(tc.in), 1} {
			var buf bytes.Buffer
			w := &TerminalWriter{W: &buf, KeepColor: tc.keepColor}
			for i := 0; i < len(tc.in); i += chunk {
				w.Write([]byte(tc.in[i:min(i+chunk, len(tc.in))]))
			}
			if buf.String() != tc.want {
				t.Errorf("%q (chunks of %d, colour %v) → %q, want %q", tc.in, chunk, tc.keepColor, buf.String(), tc.want)
			}
		}
	}
}
