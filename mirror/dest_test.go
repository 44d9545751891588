package mirror

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseDest(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "ssh://root@m.example:2222/home/chroot", want: "ssh://root@m.example:2222/home/chroot"},
		{in: "ssh://m.example/home/chroot", want: "ssh://root@m.example:22/home/chroot"},
		{in: "ssh://push@[fd00::7]:22/srv/c", want: "ssh://push@[fd00::7]:22/srv/c"},
		{in: "sftp://m.example/home/chroot", err: "the scheme must be ssh://"},
		{in: "ssh://root:pw@m.example/home/chroot", err: "no password"},
		{in: "ssh://::/00", err: "neither a host name nor an IP address"},
		{in: "ssh://ho*st/srv", err: "neither a host name nor an IP address"},
		{in: "ssh://m.example", err: "the path must be the mirror's chroot root"},
		{in: "ssh://m.example/", err: "not /"},
		{in: "ssh://m.example/a/../etc", err: "absolute and clean"},
		{in: "ssh://m.example:99999/a", err: "port 99999 is not a TCP port"},
		{in: "ssh:///a", err: "no host"},
		{in: "m.example:/a", err: "the scheme must be ssh://"},
	} {
		d, err := ParseDest(tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseDest(%q) = %v, %v; want an error with %q", tc.in, d, err, tc.err)
			}
		case err != nil || d.String() != tc.want:
			t.Errorf("ParseDest(%q) = %q, %v; want %q", tc.in, d.String(), err, tc.want)
		}
	}
}

const key1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"

func hashed(host string) string {
	salt := []byte("0123456789abcdefghij")
	mac := hmac.New(sha1.New, salt)
	mac.Write([]byte(host))
	return "|1|" + base64.StdEncoding.EncodeToString(salt) + "|" + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func TestKnownHosts(t *testing.T) {
	file := filepath.Join(t.TempDir(), "known_hosts")
	text := strings.Join([]string{
		"# comment",
		"[m1.example]:2222 " + key1,
		"[m2.example]:22 " + key1,
		hashed("[m3.example]:2200") + " " + key1,
		"@revoked m4.example " + key1,
		"*.example " + key1,
	}, "\n")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	kh, err := LoadKnownHosts(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"m1.example:2222", true},
		{"m1.example:22", false},
		{"m2.example:22", true},
		{"m3.example:2200", true},
		{"m4.example:22", false}, // a marker line pins nothing
		{"m5.example:22", false}, // wildcards are not honoured
	} {
		keys, err := kh.Keys(tc.addr)
		if tc.ok != (err == nil && len(keys) == 1) {
			t.Errorf("Keys(%s) = %d keys, %v; want found %v", tc.addr, len(keys), err, tc.ok)
		}
		if !tc.ok && (err == nil || !strings.Contains(err.Error(), "no key for")) {
			t.Errorf("Keys(%s): %v, want a message naming what is missing", tc.addr, err)
		}
	}
	os.WriteFile(file, []byte("garbage line\n"), 0o644)
	if _, err := LoadKnownHosts(file); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("a broken known_hosts: %v", err)
	}
}
