package status

import "io"

// TerminalWriter copies a host's log to an operator's terminal without the
// control sequences a hostile or broken host could use to drive it (set the
// title, write the clipboard, move the cursor over earlier lines). Colours
// (SGR sequences) are kept when KeepColor is set; newlines and tabs always.
type TerminalWriter struct {
	W         io.Writer
	KeepColor bool
	state     int
	seq       []byte
	out       []byte
}

const (
	tsText = iota
	tsEsc  // after ESC
	tsCSI  // inside ESC [ … final
	tsOSC  // inside ESC ] … BEL or ESC \
	tsOSCEsc
)

// maxSeq bounds a kept escape sequence; longer ones are dropped.
const maxSeq = 32

func (t *TerminalWriter) Write(p []byte) (int, error) {
	t.out = t.out[:0]
	for _, c := range p {
		switch t.state {
		case tsText:
			switch {
			case c == 0x1b:
				t.state = tsEsc
			case c == '\n' || c == '\t' || c >= 0x20 && c != 0x7f:
				t.out = append(t.out, c)
			}
		case tsEsc:
			switch c {
			case '[':
				t.state, t.seq = tsCSI, append(t.seq[:0], 0x1b, '[')
			case ']', 'P', 'X', '^', '_':
				t.state = tsOSC
			default:
				t.state = tsText
			}
		case tsCSI:
			t.seq = append(t.seq, c)
			if c >= 0x40 && c <= 0x7e {
				if c == 'm' && t.KeepColor && len(t.seq) <= maxSeq && sgrParams(t.seq[2:len(t.seq)-1]) {
					t.out = append(t.out, t.seq...)
				}
				t.state = tsText
			}
		case tsOSC:
			switch c {
			case 0x07:
				t.state = tsText
			case 0x1b:
				t.state = tsOSCEsc
			}
		case tsOSCEsc:
			if c == '\\' {
				t.state = tsText
			} else {
				t.state = tsOSC
			}
		}
	}
	if _, err := t.W.Write(t.out); err != nil {
		return 0, err
	}
	return len(p), nil
}

func sgrParams(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && c != ';' {
			return false
		}
	}
	return true
}
