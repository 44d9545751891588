package status

import (
	"bytes"
	"testing"
	"time"
)

func TestPollInterval(t *testing.T) {
	tests := []struct {
		spec string
		want time.Duration // 0: unknown
	}{
		{"", 0},
		{"hourly", time.Hour},
		{"Daily", 24 * time.Hour},
		{"minutely", time.Minute},
		{"15min", 15 * time.Minute},
		{"1h 30min", 90 * time.Minute},
		{"2d4h", 52 * time.Hour},
		{"90", 90 * time.Second},
		{"*:0/15", 15 * time.Minute},
		{"*:00/5", 5 * time.Minute},
		{"*-*-* *:0/15:00", 15 * time.Minute},
		{"*:0,10,40", 30 * time.Minute},
		{"*:07", time.Hour},
		{"04:00", 24 * time.Hour},
		{"*-*-* 04:00:00", 24 * time.Hour},
		{"0/2:00", 2 * time.Hour},
		{"*/2:0/15", time.Hour + 15*time.Minute},
		{"8..18:0/15", 13*time.Hour + 15*time.Minute},
		{"0..23:0,5", 55 * time.Minute},
		{"Mon *-*-* 04:00", 0},
		{"*:0/0", 0},
		{"25:00", 0},
		{"soon", 0},
		{"5 parsecs", 0},
	}
	for _, tc := range tests {
		got, ok := PollInterval(tc.spec)
		if (tc.want == 0) == ok || got != tc.want {
			t.Errorf("PollInterval(%q) = %s, %v; want %s", tc.spec, got, ok, tc.want)
		}
	}
}

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
