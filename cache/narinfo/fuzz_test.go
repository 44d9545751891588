package narinfo_test

import (
	"strings"
	"testing"

	"github.com/bento-nix/bento/cache/narinfo"
)

// FuzzParse feeds hostile narinfo bytes (a binary cache is the server's,
// or a mirror's) to Parse: it must never panic; what it accepts names a
// store path right under the store directory, references that are base
// names of store paths, and a positive NAR size; and computing its
// fingerprint and checking its signatures never panics either.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte(strings.Replace(sample, "StorePath: /nix/store/", "StorePath: /nix/store/../../etc/", 1)))
	f.Add([]byte(strings.Replace(sample, "NarHash: sha256:", "NarHash: sha512:", 1)))
	f.Add([]byte("StorePath: /nix/store/x\nURL: ../../secrets/x\nNarHash: sha256:\nNarSize: -1\n"))
	key, err := narinfo.ParsePublicKey(sampleKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := narinfo.Parse(data)
		if err != nil {
			return
		}
		hash, err := narinfo.HashPart(in.StorePath)
		if err != nil || !strings.HasPrefix(in.StorePath, narinfo.StoreDir+"/"+hash+"-") {
			t.Fatalf("accepted StorePath %q: %v", in.StorePath, err)
		}
		for _, r := range in.References {
			if strings.Contains(r, "/") || !narinfo.ValidHashPart(r[:min(32, len(r))]) {
				t.Fatalf("accepted reference %q", r)
			}
		}
		if in.URL == "" || in.NarSize <= 0 {
			t.Fatalf("accepted URL %q, NarSize %d", in.URL, in.NarSize)
		}
		if _, err := in.Fingerprint(); err == nil {
			if in.Verify([]narinfo.PublicKey{key}) == nil && !strings.Contains(string(data), "Sig: ") {
				t.Fatal("an unsigned narinfo verified")
			}
		}
	})
}
