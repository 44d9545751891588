package manifest_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

func testKey(t testing.TB, name string) manifest.SigningKey {
	t.Helper()
	k, err := manifest.GenerateSigningKey(name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func unsignedBody(t testing.TB, host string, seq uint64) []byte {
	t.Helper()
	data, err := json.Marshal(manifest.Manifest{Format: 2, Host: host, Version: "0123456789abcdef", Sequence: seq,
		Flake: manifest.Flake{Attr: "nixosConfigurations." + host},
		Files: []manifest.File{{Path: "flake.nix", Mode: 0o444, Size: 3, SHA256: strings.Repeat("a", 64)}}})
	if err != nil {
		t.Fatal(err)
	}
	return append(data, '\n')
}

func TestSignedManifestVerifiesAndParsesAsBefore(t *testing.T) {
	k := testKey(t, "fleet-1")
	signed, err := manifest.Sign(unsignedBody(t, "alpha", 7), k)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.ParseVerified(signed, []manifest.PublicationKey{k.Public()})
	if err != nil {
		t.Fatalf("a manifest signed by the pinned key is refused: %v", err)
	}
	if m.Host != "alpha" || m.Sequence != 7 || m.Signature == nil || m.Signature.Key != k.Public().String() {
		t.Fatalf("parsed %+v", m)
	}
	// Readers that verify nothing (status, older agents) read it as ever.
	plain, err := manifest.Parse(signed)
	if err != nil || plain.Version != m.Version || plain.Sequence != 7 {
		t.Fatalf("Parse of a signed manifest: %+v, %v", plain, err)
	}
	// The signature member is the file's last: the head parser, which
	// stops at "files", never reaches it.
	if !bytes.HasSuffix(signed, []byte("}}\n")) || bytes.Index(signed, []byte(`"signature"`)) < bytes.Index(signed, []byte(`"files"`)) {
		t.Fatalf("layout: %s", signed)
	}
}

func TestVerifyRefuses(t *testing.T) {
	k, other := testKey(t, "fleet-1"), testKey(t, "fleet-2")
	pinned := []manifest.PublicationKey{k.Public()}
	signed, err := manifest.Sign(unsignedBody(t, "alpha", 7), k)
	if err != nil {
		t.Fatal(err)
	}
	byOther, _ := manifest.Sign(unsignedBody(t, "alpha", 7), other)
	sameName := testKey(t, "fleet-1")
	bySameName, _ := manifest.Sign(unsignedBody(t, "alpha", 7), sameName)
	flip := bytes.Clone(signed)
	flip[bytes.Index(flip, []byte("0123456789abcdef"))] = '1'
	sigFlip := bytes.Clone(signed)
	sigFlip[len(sigFlip)-6] ^= 1
	extra := append(bytes.Clone(signed[:len(signed)-1]), []byte(` `+"\n")...)
	// A signature moved before other members: "last member" is the rule.
	moved := bytes.Replace(signed, []byte(`{"format"`), []byte(`{"x":1,"format"`), 1)
	for _, tc := range []struct {
		name, data, want string
	}{
		{"unsigned", string(unsignedBody(t, "alpha", 7)), "not signed"},
		{"one byte of the body changed", string(flip), "does not verify"},
		{"one byte of the signature changed", string(sigFlip), ""},
		{"another key", string(byOther), "does not pin"},
		{"another key of the same name", string(bySameName), "does not pin"},
		{"bytes after the signature", string(extra), "last member"},
		{"a member added before", string(moved), "does not verify"},
		{"signature with an unknown field", strings.Replace(string(signed), `{"key":`, `{"x":1,"key":`, 1), "invalid signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := manifest.ParseVerified([]byte(tc.data), pinned)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if tc.name == "unsigned" && !errors.Is(err, manifest.ErrUnsigned) {
				t.Fatalf("not ErrUnsigned: %v", err)
			}
		})
	}
}

func TestVerifyAcceptsAnyPinnedKey(t *testing.T) {
	old, next := testKey(t, "fleet-1"), testKey(t, "fleet-2")
	signed, _ := manifest.Sign(unsignedBody(t, "alpha", 1), next)
	_, by, err := manifest.Verify(signed, []manifest.PublicationKey{old.Public(), next.Public()})
	if err != nil || by.Name != "fleet-2" {
		t.Fatalf("by %v, %v", by, err)
	}
}

func TestNoPinnedKeyAcceptsUnsigned(t *testing.T) {
	if _, err := manifest.ParseVerified(unsignedBody(t, "alpha", 0), nil); err != nil {
		t.Fatal(err)
	}
}

func TestKeysRoundTripAndRefuseGarbage(t *testing.T) {
	k := testKey(t, "fleet-1")
	sk, err := manifest.ParseSigningKey(k.String() + "\n")
	if err != nil || !sk.Key.Equal(k.Key) {
		t.Fatalf("secret key round trip: %v", err)
	}
	pk, err := manifest.ParsePublicationKey(k.Public().String())
	if err != nil || !pk.Key.Equal(k.Public().Key) {
		t.Fatalf("public key round trip: %v", err)
	}
	for _, s := range []string{"", "fleet", "fleet:", ":AAAA", "fleet:!!!", k.String()} {
		if _, err := manifest.ParsePublicationKey(s); err == nil {
			t.Errorf("ParsePublicationKey(%q) accepted", s)
		}
	}
	if _, err := manifest.ParseSigningKey(k.Public().String()); err == nil || strings.Contains(err.Error(), k.Public().String()) {
		t.Errorf("a public key taken for a secret one: %v", err)
	}
	m := manifest.Manifest{Format: 2, Host: "a", Version: "0123456789abcdef", NextPublicationKey: "nope"}
	if err := m.Validate(); err == nil {
		t.Error("an invalid nextPublicationKey validates")
	}
}

// FuzzSplit feeds hostile bytes to the signature parser: it must never
// panic, and whatever it splits must re-sign to the same layout (the
// body is what was signed, the signature its last member).
func FuzzSplit(f *testing.F) {
	k := testKey(f, "fleet-1")
	signed, _ := manifest.Sign(unsignedBody(f, "alpha", 3), k)
	f.Add(signed)
	f.Add(unsignedBody(f, "alpha", 3))
	f.Add([]byte(`,"signature":{}}` + "\n"))
	f.Add([]byte(`{"a":1,"signature":{"key":"x","sig":"y"},"signature":{"key":"x","sig":"y"}}` + "\n"))
	pinned := []manifest.PublicationKey{k.Public()}
	f.Fuzz(func(t *testing.T, data []byte) {
		body, sig, err := manifest.Split(data)
		if err != nil {
			return
		}
		if sig == nil {
			if !bytes.Equal(body, data) {
				t.Fatal("an unsigned manifest changed")
			}
			return
		}
		if !bytes.HasSuffix(body, []byte("}\n")) || len(body) > len(data) {
			t.Fatalf("body %q of %q", body, data)
		}
		if _, err := manifest.ParseVerified(data, pinned); err == nil && !bytes.Equal(data, signed) {
			// Only the one manifest the fuzzer cannot forge is signed.
			m, _ := manifest.Parse(body)
			if m == nil || m.Host != "alpha" {
				t.Fatalf("verified a forged manifest %q", data)
			}
		}
	})
}

// BenchmarkSignedManifest measures what signing costs a host: the bytes
// the signature adds and the verification of a manifest of 5000 files
// (ParseVerified against Parse).
func BenchmarkSignedManifest(b *testing.B) {
	m := manifest.Manifest{Format: 2, Host: "alpha", Version: "0123456789abcdef", Sequence: 1796306012384,
		Flake: manifest.Flake{Attr: "nixosConfigurations.alpha"}}
	for i := range 5000 {
		m.Files = append(m.Files, manifest.File{Path: "dir/file" + strconv.Itoa(i) + ".nix", Mode: 0o444, Size: int64(i), SHA256: strings.Repeat("a", 64)})
	}
	data, _ := json.Marshal(m)
	body := append(data, '\n')
	k := testKey(b, "fleet-1")
	signed, _ := manifest.Sign(body, k)
	keys := []manifest.PublicationKey{k.Public()}
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			if _, err := manifest.Parse(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parse-verified", func(b *testing.B) {
		for b.Loop() {
			if _, err := manifest.ParseVerified(signed, keys); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(signed)-len(body)), "signature-bytes")
	})
}
