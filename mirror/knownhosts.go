package mirror

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// maxKnownHosts bounds the known_hosts file read.
const maxKnownHosts = 4 << 20

// KnownHosts holds the pinned keys of the mirrors, from a known_hosts
// file: "[host]:port key" (or "host key" for port 22), hashed entries
// included. Wildcards and @-markers are not honoured: a mirror's key is
// pinned by its own line.
type KnownHosts struct {
	file    string
	entries []khEntry
}

type khEntry struct {
	patterns []string
	key      ssh.PublicKey
}

// LoadKnownHosts reads a known_hosts file.
func LoadKnownHosts(file string) (*KnownHosts, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("known hosts: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKnownHosts+1))
	if err != nil {
		return nil, fmt.Errorf("known hosts %s: %w", file, err)
	}
	if len(data) > maxKnownHosts {
		return nil, fmt.Errorf("known hosts %s: larger than %d bytes", file, maxKnownHosts)
	}
	kh := &KnownHosts{file: file}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		marker, hosts, key, _, _, err := ssh.ParseKnownHosts([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("known hosts %s line %d: %w", file, n, err)
		}
		if marker != "" {
			continue
		}
		kh.entries = append(kh.entries, khEntry{patterns: hosts, key: key})
	}
	return kh, nil
}

// Keys are the keys pinned for addr ("host:port").
func (kh *KnownHosts) Keys(addr string) ([]ssh.PublicKey, error) {
	want := knownhosts.Normalize(addr)
	var out []ssh.PublicKey
	for _, e := range kh.entries {
		for _, p := range e.patterns {
			// "[host]:22" and "host" are the same entry.
			if p == want || knownhosts.Normalize(p) == want || hashedMatch(p, want) {
				out = append(out, e.key)
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no key for %s in %s: add the mirror's host key, checked out of band (ssh-keyscan -p PORT HOST prints it; compare its fingerprint with the mirror's /etc/ssh/ssh_host_ed25519_key.pub)", want, kh.file)
	}
	return out, nil
}

// hashedMatch checks a "|1|salt|hash" entry (ssh-keygen -H) against host.
func hashedMatch(pattern, host string) bool {
	rest, ok := strings.CutPrefix(pattern, "|1|")
	if !ok {
		return false
	}
	salt64, hash64, ok := strings.Cut(rest, "|")
	if !ok {
		return false
	}
	salt, err1 := base64.StdEncoding.DecodeString(salt64)
	hash, err2 := base64.StdEncoding.DecodeString(hash64)
	if err1 != nil || err2 != nil {
		return false
	}
	mac := hmac.New(sha1.New, salt)
	mac.Write([]byte(host))
	return hmac.Equal(mac.Sum(nil), hash)
}
