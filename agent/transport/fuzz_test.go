package transport

import (
	"testing"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
)

// FuzzParseHostKeys feeds serverHostKey text (public keys and known_hosts
// lines, as pasted into a host's configuration): ParseHostKeys must never
// panic; what it accepts is at least one key, each of which marshals and
// parses back as itself; and its errors quote the input escaped, never a
// raw control character.
func FuzzParseHostKeys(f *testing.F) {
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	for _, s := range []string{
		key + " root@server",
		"[127.0.0.1]:2222 " + key,
		"server.example,10.0.0.1 " + key + "\n# comment\n\n" + key,
		"|1|c2FsdA==|aGFzaA== " + key,
		"@cert-authority *.example " + key,
		"@revoked * " + key,
		"@\x1b]0;pwned\x07 * " + key,
		"ssh-ed25519 AAAA\x1b]0;t\x07",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		keys, err := ParseHostKeys(text)
		if err != nil {
			msg := err.Error()
			if !utf8.ValidString(msg) {
				t.Fatalf("error is not UTF-8: %q", msg)
			}
			for i, r := range msg {
				if r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f {
					t.Fatalf("error quotes a control (%U at %d): %q", r, i, msg)
				}
			}
			return
		}
		if len(keys) == 0 {
			t.Fatal("accepted no key without an error")
		}
		for _, k := range keys {
			back, err := ssh.ParsePublicKey(k.Marshal())
			if err != nil || string(back.Marshal()) != string(k.Marshal()) {
				t.Fatalf("key %s does not survive a marshal/parse round trip: %v", ssh.FingerprintSHA256(k), err)
			}
		}
	})
}
