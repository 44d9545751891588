// Package termsafe is the one sanitizer for text that came from a host (or a
// server, a mirror) on its way to an operator's terminal, a log or a JSON
// document. It works on runes: C0 controls other than tab and newline, DEL,
// C1 controls (U+0080–U+009F, whether sent as UTF-8 or as raw bytes), bidi
// overrides and other invisible format characters are never passed through.
package termsafe

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Unsafe tells whether r must not reach a terminal as itself: it controls
// the terminal (C0, DEL, C1), reorders or hides text (bidi controls, format
// characters such as zero-width spaces), or separates lines without being a
// newline (U+2028, U+2029). Tab and newline are safe.
func Unsafe(r rune) bool {
	switch {
	case r == '\t' || r == '\n':
		return false
	case r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f:
		return true
	case r == '\u2028' || r == '\u2029' || r == utf8.RuneError:
		return true
	}
	// Cf holds the bidi embeddings, overrides and isolates (U+202A–U+202E,
	// U+2066–U+2069), the marks (U+200E, U+200F, U+061C), zero-width spaces
	// and joiners, the BOM and the tag characters.
	return unicode.Is(unicode.Cf, r)
}

// escape is how an unsafe rune is shown: \xNN below 0x100, else \uNNNN.
func escape(b *strings.Builder, r rune) {
	if r < 0x100 {
		fmt.Fprintf(b, `\x%02x`, r)
		return
	}
	fmt.Fprintf(b, `\u%04x`, r)
}

// String returns s with every unsafe rune shown escaped (\x1b, \u202e) and
// every byte that is not UTF-8 shown as \xNN. Tabs and newlines are kept.
func String(s string) string {
	if clean(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case Unsafe(r):
			escape(&b, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// Line is String for one line of a table or message: tabs and newlines are
// escaped too, so a host cannot forge a row or a line of its own.
func Line(s string) string {
	s = String(s)
	if !strings.ContainsAny(s, "\t\n") {
		return s
	}
	return strings.NewReplacer("\t", `\t`, "\n", `\n`).Replace(s)
}

func clean(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' && c != '\n' || c >= 0x7f {
			return cleanRunes(s[i:])
		}
	}
	return true
}

func cleanRunes(s string) bool {
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 || Unsafe(r) {
			return false
		}
		i += n
	}
	return true
}

// EscapeJSON rewrites an encoding/json document so that no unsafe rune
// appears in it raw: encoding/json escapes C0 and U+2028/U+2029 but writes
// C1 controls and bidi overrides as they are. Outside strings a JSON
// document is ASCII, so every such rune is inside a string, where \uNNNN is
// the same character to a parser and inert on a terminal.
func EscapeJSON(doc []byte) []byte {
	if cleanRunes(string(doc)) {
		return doc
	}
	out := make([]byte, 0, len(doc)+32)
	for i := 0; i < len(doc); {
		r, n := utf8.DecodeRune(doc[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			// encoding/json never writes invalid UTF-8; keep the document
			// valid anyway.
			out = append(out, `\ufffd`...)
		case r == '\t' || r == '\n':
			out = append(out, doc[i:i+n]...)
		case Unsafe(r):
			if r > 0xffff {
				r1, r2 := utf16Pair(r)
				out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
			} else {
				out = fmt.Appendf(out, `\u%04x`, r)
			}
		default:
			out = append(out, doc[i:i+n]...)
		}
		i += n
	}
	return out
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}
