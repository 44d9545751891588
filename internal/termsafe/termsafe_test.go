package termsafe

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// attacks are the sequences a hostile host was found to get through.
var attacks = []struct{ name, in string }{
	{"OSC 52 clipboard", "a\x1b]52;c;ZWNobyBwd25lZA==\x07b"},
	{"OSC title ST", "a\x1b]0;owned\x1b\\b"},
	{"clear screen", "a\x1b[2J\x1b[Hb"},
	{"reset", "a\x1bcb"},
	{"UTF-8 C1 CSI", "a\u009b2Jb"},
	{"UTF-8 C1 OSC", "a\u009d0;owned\u009cb"},
	{"raw 8-bit CSI", "a\x9b2Jb"},
	{"raw 8-bit OSC", "a\x9d52;c;eA==\x07b"},
	{"bidi override", "a\u202egnp.exe\u202cb"},
	{"bidi isolate", "a\u2066x\u2069b"},
	{"zero width space", "a\u200bb"},
	{"line separator", "a\u2028b"},
	{"DEL and BS", "a\x7f\x08b"},
	{"DCS", "a\x1bPq#0;2;0;0;0\x1b\\b"},
}

func TestStringEscapesEveryAttack(t *testing.T) {
	for _, tc := range attacks {
		t.Run(tc.name, func(t *testing.T) {
			got := String(tc.in)
			if bad := firstUnsafe(got); bad >= 0 {
				t.Errorf("String(%q) = %q: byte %d is unsafe", tc.in, got, bad)
			}
			if !strings.HasPrefix(got, "a") || !strings.HasSuffix(got, "b") {
				t.Errorf("String(%q) = %q: lost the text around it", tc.in, got)
			}
		})
	}
}

func TestStringShows(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"tab\tand\nnewline", "tab\tand\nnewline"},
		{"\x1b[31m", `\x1b[31m`},
		{"\u202e", `\u202e`},
		{"\u009b", `\x9b`},
		{"\x9b", `\x9b`},
		{"\xff", `\xff`},
		{"é ü 日本", "é ü 日本"},
	} {
		if got := String(tc.in); got != tc.want {
			t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := Line("a\nb\tc"); got != `a\nb\tc` {
		t.Errorf("Line = %q", got)
	}
}

func TestWriterDropsEveryAttack(t *testing.T) {
	for _, tc := range attacks {
		for _, color := range []bool{false, true} {
			var b bytes.Buffer
			w := &Writer{W: &b, KeepColor: color}
			w.Write([]byte(tc.in))
			got := b.String()
			if strings.ContainsAny(got, "\x1b\x07\x7f\x08") || strings.ContainsRune(got, 0x9b) || strings.Contains(got, "\x9b") || strings.Contains(got, "\x9d") {
				t.Errorf("%s: Writer passed a control: %q", tc.name, got)
			}
			for _, r := range got {
				if Unsafe(r) && r != utf8.RuneError {
					t.Errorf("%s: Writer passed %U: %q", tc.name, r, got)
				}
			}
			if !strings.HasPrefix(got, "a") || !strings.HasSuffix(got, "b") {
				t.Errorf("%s: Writer lost the text around it: %q", tc.name, got)
			}
		}
	}
}

func TestWriterKeepsColourAndText(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		color    bool
	}{
		{"\x1b[1;31mred\x1b[0m\n", "\x1b[1;31mred\x1b[0m\n", true},
		{"\x1b[1;31mred\x1b[0m\n", "red\n", false},
		{"\x1b[?1049h" + "alt", "alt", true},
		{"progress\r50%\r100%\n", "progress50%100%\n", false},
		{"\x1b[" + strings.Repeat("1;", 40) + "mlong", "long", true},
		{"\u202eevil", `\u202eevil`, false},
		{"\xffx", `\xffx`, false},
		{"日本\n", "日本\n", false},
	} {
		var b bytes.Buffer
		(&Writer{W: &b, KeepColor: tc.color}).Write([]byte(tc.in))
		if b.String() != tc.want {
			t.Errorf("Writer(%q, colour %v) = %q, want %q", tc.in, tc.color, b.String(), tc.want)
		}
	}
}

// Runes and sequences split across writes are filtered as if whole.
func TestWriterSplitWrites(t *testing.T) {
	in := "x\u202e日\x1b]0;t\x07\x1b[31mé\u009b2J\n"
	var whole bytes.Buffer
	(&Writer{W: &whole, KeepColor: true}).Write([]byte(in))
	for cut := 0; cut <= len(in); cut++ {
		var b bytes.Buffer
		w := &Writer{W: &b, KeepColor: true}
		w.Write([]byte(in[:cut]))
		w.Write([]byte(in[cut:]))
		if b.String() != whole.String() {
			t.Errorf("cut at %d: %q, want %q", cut, b.String(), whole.String())
		}
	}
}

// An endless escape sequence costs bounded memory (it took 1.3 GB before).
func TestWriterBoundsSequences(t *testing.T) {
	var b bytes.Buffer
	w := &Writer{W: &b, KeepColor: true}
	chunk := bytes.Repeat([]byte("1;"), 1<<15)
	w.Write([]byte("\x1b["))
	for range 64 {
		w.Write(chunk)
	}
	if cap(w.seq) > 4*MaxSeq {
		t.Errorf("an endless CSI sequence grew the buffer to %d bytes", cap(w.seq))
	}
	w.Write([]byte("mafter"))
	if b.String() != "after" {
		t.Errorf("after an overlong sequence: %q, want \"after\"", b.String())
	}
	// An unterminated OSC string gives up after maxString bytes.
	b.Reset()
	w.Write([]byte("\x1b]0;" + strings.Repeat("x", maxString+10)))
	if b.Len() == 0 || b.Len() > 20 {
		t.Errorf("an unterminated OSC string: %d bytes shown, want the few past the cap", b.Len())
	}
}

func TestEscapeJSON(t *testing.T) {
	for _, tc := range attacks {
		doc, err := json.Marshal(map[string]string{"message": tc.in})
		if err != nil {
			t.Fatal(err)
		}
		got := EscapeJSON(doc)
		if bad := firstUnsafe(string(got)); bad >= 0 {
			t.Errorf("%s: EscapeJSON left an unsafe byte at %d: %q", tc.name, bad, got)
		}
		var back map[string]string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%s: EscapeJSON made invalid JSON %q: %v", tc.name, got, err)
		}
		if want := strings.ToValidUTF8(tc.in, "\ufffd"); back["message"] != want {
			t.Errorf("%s: decodes to %q, want %q", tc.name, back["message"], want)
		}
	}
}

// firstUnsafe is the offset of the first byte or rune a terminal would act
// on, or -1.
func firstUnsafe(s string) int {
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 || Unsafe(r) && r != '\t' && r != '\n' {
			return i
		}
		i += n
	}
	return -1
}
