package termsafe

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzSanitize checks, for any input, that nothing unsafe gets out of
// String, Line, Writer (in any split) or EscapeJSON.
func FuzzSanitize(f *testing.F) {
	for _, tc := range attacks {
		f.Add([]byte(tc.in), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, cut uint8) {
		if s := String(string(in)); firstUnsafe(s) >= 0 {
			t.Fatalf("String(%q) = %q", in, s)
		}
		if s := Line(string(in)); firstUnsafe(s) >= 0 || bytes.ContainsAny([]byte(s), "\t\n") {
			t.Fatalf("Line(%q) = %q", in, s)
		}
		var b bytes.Buffer
		w := &Writer{W: &b, KeepColor: cut%2 == 0}
		at := int(cut) % (len(in) + 1)
		w.Write(in[:at])
		w.Write(in[at:])
		out := b.Bytes()
		for i := 0; i < len(out); {
			r, n := utf8.DecodeRune(out[i:])
			if r == 0x1b {
				// Only a kept colour: ESC [ digits/semicolons m.
				end := bytes.IndexByte(out[i:], 'm')
				if !w.KeepColor || end < 0 || out[i+1] != '[' || !sgrParams(out[i+2:i+end]) {
					t.Fatalf("Writer(%q) passed an escape: %q", in, out)
				}
				i += end + 1
				continue
			}
			if r == utf8.RuneError && n <= 1 || Unsafe(r) {
				t.Fatalf("Writer(%q) passed %U at %d: %q", in, r, i, out)
			}
			i += n
		}
		doc, _ := json.Marshal(string(in))
		esc := EscapeJSON(doc)
		if firstUnsafe(string(esc)) >= 0 {
			t.Fatalf("EscapeJSON(%q) = %q", doc, esc)
		}
		var back, orig string
		if err := json.Unmarshal(esc, &back); err != nil {
			t.Fatalf("EscapeJSON(%q) is not JSON: %v", doc, err)
		}
		json.Unmarshal(doc, &orig)
		if back != orig {
			t.Fatalf("EscapeJSON changed the value: %q, want %q", back, orig)
		}
	})
}
