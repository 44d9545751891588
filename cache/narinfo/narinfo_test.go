package narinfo_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

// A narinfo written by nix copy --to file://…?secret-key=… for a fixture path.
const sample = `StorePath: /nix/store/4rf0vswgglkan8jb2lpfq4pdzpfzs9a4-nixos-system-alpha-1
URL: nar/1bl0n3m7zmw4mdm0208kgdbpy5w5lyk7pxrkcgdj00nkg7smylmm.nar.zst
Compression: zstd
FileHash: sha256:1bl0n3m7zmw4mdm0208kgdbpy5w5lyk7pxrkcgdj00nkg7smylmm
FileSize: 687
NarHash: sha256:1f9la2maqa5d5nhx4psk45zh1l5lky19ipv5gmcfy55drz78wdz2
NarSize: 2176
References: 2c8vms6y44bvprby8033b0srlz884y6j-fixture-kernel-1 38gfwra74lqqz8x7sanxwsa3jmk933q5-fixture-initrd-1 rz9pmldaiiwwbaaapdji66i4cl3fmrqm-fixture-modules-1
Deriver: ak9rglnddhiqvh1cv9jlp10n8zjz8ndi-nixos-system-alpha-1.drv
Sig: test-1:jO9HgMCo9CN3fu5lm/B6ueDBX5GwEY8jZYjlO8ZBU+zyt3gb7jL95D3M2wK3iv4/mb4i8BPREQ857e4skKRADg==
`

const sampleKey = "test-1:N1/CIPXLUqGXOiIjc+l4fAEaXVDCJ/SutdFaqICfogQ="

func TestVerify(t *testing.T) {
	key, err := narinfo.ParsePublicKey(sampleKey)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := narinfo.ParsePublicKey("test-1:" + strings.Repeat("A", 43) + "=")
	cases := []struct {
		name   string
		edit   func(string) string
		keys   []narinfo.PublicKey
		wantOK bool
	}{
		{"as Nix wrote it", nil, []narinfo.PublicKey{key}, true},
		{"among other keys", nil, []narinfo.PublicKey{other, key}, true},
		{"NarHash in base16 (same hash)", func(s string) string {
			return strings.Replace(s, "sha256:1f9la2maqa5d5nhx4psk45zh1l5lky19ipv5gmcfy55drz78wdz2", "sha256:"+hexOf(t, "1f9la2maqa5d5nhx4psk45zh1l5lky19ipv5gmcfy55drz78wdz2"), 1)
		}, []narinfo.PublicKey{key}, true},
		{"wrong key of the same name", nil, []narinfo.PublicKey{other}, false},
		{"NarSize changed", func(s string) string { return strings.Replace(s, "NarSize: 2176", "NarSize: 2177", 1) }, []narinfo.PublicKey{key}, false},
		{"NarHash changed", func(s string) string { return strings.Replace(s, "drz78wdz2", "drz78wdz3", 1) }, []narinfo.PublicKey{key}, false},
		{"a reference dropped", func(s string) string {
			return strings.Replace(s, " rz9pmldaiiwwbaaapdji66i4cl3fmrqm-fixture-modules-1", "", 1)
		}, []narinfo.PublicKey{key}, false},
		{"signature removed", func(s string) string { return s[:strings.Index(s, "Sig:")] }, []narinfo.PublicKey{key}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			text := sample
			if c.edit != nil {
				text = c.edit(text)
			}
			in, err := narinfo.Parse([]byte(text))
			if err != nil {
				t.Fatal(err)
			}
			err = in.Verify(c.keys)
			if c.wantOK && err != nil {
				t.Errorf("Verify: %v", err)
			}
			if !c.wantOK && !errors.Is(err, narinfo.ErrUnsigned) {
				t.Errorf("Verify: %v, want ErrUnsigned", err)
			}
		})
	}
}

func hexOf(t *testing.T, b32 string) string {
	t.Helper()
	_, d, err := narinfo.ParseHash("sha256:" + b32)
	if err != nil {
		t.Fatal(err)
	}
	return hexBytes(d)
}

func TestParseRefuses(t *testing.T) {
	cases := []struct {
		name, edit, with, want string
	}{
		{"store path elsewhere", "/nix/store/4rf0", "/tmp/store/4rf0", "bad StorePath"},
		{"no URL", "URL: nar/1bl0n3m7zmw4mdm0208kgdbpy5w5lyk7pxrkcgdj00nkg7smylmm.nar.zst\n", "", "URL, NarHash and NarSize are required"},
		{"bad reference", "2c8vms6y44bvprby8033b0srlz884y6j-fixture-kernel-1", "../../etc", "bad reference"},
		{"malformed line", "Compression: zstd", "Compression zstd", "malformed line"},
		{"bad size", "NarSize: 2176", "NarSize: lots", "NarSize"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := narinfo.Parse([]byte(strings.Replace(sample, c.edit, c.with, 1)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// Base32 agrees with Nix on real hashes.
func TestBase32MatchesNix(t *testing.T) {
	r := &nix.Runner{Env: fixture.Env()}
	for _, data := range []string{"", "bento", strings.Repeat("x", 1000)} {
		sum := sha256.Sum256([]byte(data))
		hexSum := hexBytes(sum[:])
		out, err := r.Output(context.Background(), "", "hash", "to-base32", "--type", "sha256", hexSum)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := narinfo.Base32(sum[:]), strings.TrimSpace(string(out)); got != want {
			t.Errorf("Base32(sha256(%q)) = %s, Nix says %s", data, got, want)
		}
		_, back, err := narinfo.ParseHash("sha256:" + narinfo.Base32(sum[:]))
		if err != nil || hexBytes(back) != hexSum {
			t.Errorf("round trip of %s: %x, %v", hexSum, back, err)
		}
	}
}

func hexBytes(b []byte) string {
	const digits = "0123456789abcdef"
	var s strings.Builder
	for _, c := range b {
		s.WriteByte(digits[c>>4])
		s.WriteByte(digits[c&15])
	}
	return s.String()
}

func TestKeys(t *testing.T) {
	if _, err := narinfo.ParsePublicKey("no-colon"); err == nil {
		t.Error("ParsePublicKey accepted a key without a name")
	}
	if _, err := narinfo.PublicFromSecret(sampleKey); err == nil || strings.Contains(err.Error(), "N1/C") {
		t.Errorf("PublicFromSecret of a public key: %v; want an error that quotes nothing", err)
	}
}
