package termsafe

import (
	"fmt"
	"io"
	"unicode/utf8"
)

// Writer copies a stream (a host's log) to a terminal without the control
// sequences a hostile or broken host could use to drive it: set the title,
// write the clipboard (OSC 52), move the cursor over earlier lines, clear the
// screen. Colours (SGR sequences) are kept when KeepColor is set; newlines
// and tabs always. C0 and C1 controls are dropped, format characters (bidi
// overrides, zero-width spaces) and bytes that are not UTF-8 are shown
// escaped as in String.
//
// Memory is bounded whatever the input: at most MaxSeq bytes of an escape
// sequence are held; a longer one is dropped whole.
type Writer struct {
	W         io.Writer
	KeepColor bool

	state   int
	seq     []byte // the CSI sequence so far, while it fits MaxSeq
	seqLen  int    // its length, also past MaxSeq
	partial []byte // the start of a rune split across writes
	out     []byte
}

// MaxSeq bounds a kept CSI sequence; a longer one is dropped.
const MaxSeq = 32

// maxString bounds an OSC, DCS, SOS, PM or APC string: past it the string
// is given up for broken and what follows is text again (still filtered),
// so that one stray ESC ] does not swallow the rest of a log.
const maxString = 4096

const (
	sText = iota
	sEsc  // after ESC
	sCSI  // inside ESC [ … final byte
	sStr  // inside an OSC/DCS/… string, until BEL or ST
	sStrEsc
)

func (t *Writer) Write(p []byte) (int, error) {
	t.out = t.out[:0]
	i := 0
	if len(t.partial) > 0 {
		// Complete the rune the last write ended in.
		for len(t.partial) < utf8.UTFMax && i < len(p) && !utf8.FullRune(t.partial) {
			t.partial = append(t.partial, p[i])
			i++
		}
		if !utf8.FullRune(t.partial) && i == len(p) {
			return len(p), nil
		}
		buf := t.partial
		t.partial = nil
		t.feed(buf, false)
	}
	t.feed(p[i:], true)
	if _, err := t.W.Write(t.out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// feed filters b; when more may follow, a rune cut at b's end is kept for
// the next write.
func (t *Writer) feed(b []byte, more bool) {
	for i := 0; i < len(b); {
		c := b[i]
		if c < utf8.RuneSelf {
			t.ascii(c)
			i++
			continue
		}
		if more && !utf8.FullRune(b[i:]) {
			t.partial = append(t.partial[:0], b[i:]...)
			return
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			t.rawByte(c)
			i++
			continue
		}
		if t.nonASCII(r, b[i:i+n]) {
			i += n
		}
	}
}

// rawByte acts on a byte that is not part of valid UTF-8.
func (t *Writer) rawByte(c byte) {
	// A raw byte: 0x80–0x9f are the 8-bit C1 controls some
	// terminals obey.
	if c <= 0x9f {
		t.c1(rune(c))
	} else if t.state == sText {
		t.out = fmt.Appendf(t.out, `\x%02x`, c)
	} else {
		t.other()
	}
}

// nonASCII acts on the rune r, encoded as enc. It returns false when r
// ended a sequence and must be read again, as text.
func (t *Writer) nonASCII(r rune, enc []byte) bool {
	switch {
	case r <= 0x9f:
		t.c1(r)
	case t.state != sText:
		t.other()
		return t.state != sText // else re-read the rune as text
	case Unsafe(r):
		t.out = fmt.Appendf(t.out, `\u%04x`, r)
	default:
		t.out = append(t.out, enc...)
	}
	return true
}

// c1 acts on a C1 control: CSI and the string introducers open a sequence
// (dropped like their ESC forms), ST ends a string, the others are dropped.
func (t *Writer) c1(r rune) {
	inString := t.state == sStr || t.state == sStrEsc
	switch {
	case r == 0x9c && inString:
		t.state = sText
	case inString:
		t.strByte()
	case r == 0x9b:
		t.startCSI(false)
	case stringIntroducer(r):
		t.state, t.seqLen = sStr, 0
	default:
		t.state = sText
	}
}

// stringIntroducer: r is DCS, SOS, OSC, PM or APC.
func stringIntroducer(r rune) bool {
	switch r {
	case 0x90, 0x98, 0x9d, 0x9e, 0x9f:
		return true
	}
	return false
}

// other handles a non-ASCII rune inside a sequence: a string swallows it, a
// CSI or ESC sequence ends (dropped) and the rune is text again.
func (t *Writer) other() {
	switch t.state {
	case sStr, sStrEsc:
		t.strByte()
	default:
		t.state = sText
	}
}

func (t *Writer) startCSI(esc bool) {
	t.state, t.seqLen = sCSI, 2
	if esc {
		t.seq = append(t.seq[:0], 0x1b, '[')
	} else {
		// An 8-bit CSI is never kept: a colour is written with ESC [.
		t.seqLen = MaxSeq + 1
		t.seq = t.seq[:0]
	}
}

func (t *Writer) strByte() {
	t.seqLen++
	if t.seqLen > maxString {
		t.state = sText
	}
}

// ascii feeds one byte below 0x80 to the state machine: one method per
// state, each a table of what the byte does there.
func (t *Writer) ascii(c byte) {
	switch t.state {
	case sText:
		t.text(c)
	case sEsc:
		t.esc(c)
	case sCSI:
		t.csi(c)
	case sStr:
		t.str(c)
	case sStrEsc:
		if c == '\\' {
			t.state = sText
		} else {
			t.state = sStr
			t.strByte()
		}
	}
}

func (t *Writer) text(c byte) {
	switch {
	case c == 0x1b:
		t.state = sEsc
	case c == '\n' || c == '\t' || c >= 0x20 && c != 0x7f:
		t.out = append(t.out, c)
	}
}

func (t *Writer) esc(c byte) {
	switch c {
	case '[':
		t.startCSI(true)
	case ']', 'P', 'X', '^', '_':
		t.state, t.seqLen = sStr, 0
	case 0x1b:
	default:
		// A two-byte sequence (ESC c resets the terminal): dropped.
		t.state = sText
	}
}

func (t *Writer) csi(c byte) {
	switch {
	case c >= 0x20 && c <= 0x3f:
		t.seqLen++
		if t.seqLen <= MaxSeq {
			t.seq = append(t.seq, c)
		}
	case c >= 0x40 && c <= 0x7e:
		t.seqLen++
		if c == 'm' && t.KeepColor && t.seqLen <= MaxSeq && sgrParams(t.seq[2:]) {
			t.out = append(t.out, t.seq...)
			t.out = append(t.out, c)
		}
		t.state = sText
	default:
		// Not part of a CSI sequence: it ends there, dropped, and the
		// byte is read as text.
		t.state = sText
		t.ascii(c)
	}
}

func (t *Writer) str(c byte) {
	switch c {
	case 0x07:
		t.state = sText
	case 0x1b:
		t.state = sStrEsc
	default:
		t.strByte()
	}
}

func sgrParams(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && c != ';' {
			return false
		}
	}
	return true
}
