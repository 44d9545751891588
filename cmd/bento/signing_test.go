package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

func TestKeygenPublication(t *testing.T) {
	dir := t.TempDir()
	sec := filepath.Join(dir, "publication.sec")
	out, errOut, code := runCLI(t, "keygen", "--publication", "--name", "fleet-pub-1", "--secret-key", sec)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	pub, err := manifest.ParsePublicationKey(out)
	if err != nil || pub.Name != "fleet-pub-1" {
		t.Fatalf("printed %q: %v", out, err)
	}
	data, err := os.ReadFile(sec)
	if err != nil {
		t.Fatal(err)
	}
	k, err := manifest.ParseSigningKey(string(data))
	if err != nil || !k.Public().Key.Equal(pub.Key) {
		t.Fatalf("the secret key %s does not match the printed public key: %v", sec, err)
	}
	if fi, _ := os.Stat(sec); fi.Mode().Perm() != 0o600 {
		t.Errorf("secret key mode %v, want 0600", fi.Mode().Perm())
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "publication.pub")); strings.TrimSpace(string(got)) != pub.String() {
		t.Errorf("the .pub file holds %q, want %q", got, pub)
	}
	if _, errOut, code := runCLI(t, "keygen", "--publication", "--name", "x", "--secret-key", sec); code != 1 || !strings.Contains(errOut, "never replaces a key") {
		t.Errorf("a second keygen over the key: exit %d, %q", code, errOut)
	}
}
