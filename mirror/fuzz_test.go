package mirror

import (
	"strings"
	"testing"
	"unicode"
)

// A destination that parses prints as one that parses to the same thing,
// with an absolute clean root: what reaches path.Join on the mirror.
func FuzzParseDest(f *testing.F) {
	for _, s := range []string{"ssh://root@m.example:2222/home/chroot", "ssh://[fd00::7]/srv", "ssh://m/a/../b", "ssh://u:p@h/x", "ssh://h:0/x",
		// Escapes that printed back raw did not parse the same (a review found them).
		"ssh://[fe80::1%25eth0]/x", "ssh://a%2Fb@h/x", "ssh://h/a%3Fb", "ssh://h/a%23b", "ssh://h/a%25b", "ssh://u%1b@h/a%1bb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDest(s)
		if err != nil {
			return
		}
		again, err := ParseDest(d.String())
		if err != nil || again != d {
			t.Fatalf("%q → %+v → %q → %+v, %v", s, d, d.String(), again, err)
		}
		if strings.ContainsFunc(d.String(), unicode.IsControl) {
			t.Fatalf("%q prints as %q, with a control character", s, d.String())
		}
		if d.Root == "" || d.Root[0] != '/' || d.Port < 1 || d.Port > 65535 || d.Host == "" {
			t.Fatalf("%q parsed to %+v", s, d)
		}
	})
}
