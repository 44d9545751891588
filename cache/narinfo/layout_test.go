package narinfo_test

import (
	"testing"

	"github.com/bento-nix/bento/cache/narinfo"
)

// The names sftpcache serves and LinkHost links: anything else a narinfo's
// URL or a client's request names must be refused.
func TestValidNARName(t *testing.T) {
	const h = "1bl0n3m7zmw4mdm0208kgdbpy5w5lyk7pxrkcgdj00nkg7smylmm"
	for _, c := range []struct {
		name string
		want bool
	}{
		{h + ".nar", true},
		{h + ".nar.zst", true},
		{h + ".nar.xz", true},
		{h + ".nar.bz2", true},
		{h + ".nar.exe", false},
		{h + ".narinfo", false},
		{h, false},
		{h[:51] + ".nar", false},
		{h + "e.nar", false},
		{"../" + h + ".nar", false},
		{h[:51] + "u.nar", false}, // u is not in Nix's base32 alphabet
		{"", false},
		{".nar", false},
	} {
		if got := narinfo.ValidNARName(c.name); got != c.want {
			t.Errorf("ValidNARName(%q) = %v, want %v", c.name, got, c.want)
		}
	}
}
