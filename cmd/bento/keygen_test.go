package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	sec := filepath.Join(dir, "keys", "cache.sec")
	out, errOut, code := runCLI(t, "keygen", "--name", "fleet.example.org-1", "--secret-key", sec)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "keys", "cache.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "fleet.example.org-1:") || out != string(pub) {
		t.Errorf("printed %q, public key file holds %q; want the same name:key line", out, pub)
	}
	if fi, err := os.Stat(sec); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secret key: %v %v; want mode 0600", fi, err)
	}

	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"never replaces a key", []string{"keygen", "--secret-key", sec}, 1, "already exists"},
		{"arguments", []string{"keygen", "mykey"}, 2, "takes no arguments"},
		{"bad name", []string{"keygen", "--name", "a b", "--secret-key", filepath.Join(dir, "x.sec")}, 1, "key name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, errOut, code := runCLI(t, c.args...)
			if code != c.code || !strings.Contains(errOut, c.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errOut, c.code, c.want)
			}
		})
	}
}
