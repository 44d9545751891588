// Package mirror copies the primary bento server's publications to other
// bento servers (mirrors) and brings the hosts' reports back from them.
//
// A mirror is a bento server whose chroots are laid out like the
// primary's (the same hosts, each with its SFTP user and a reports/ it
// owns). Push logs in to it over SSH as an account allowed to write its
// chroot root (root, restricted to internal-sftp) and, per host, copies
// what the host reads — objects/, cache/, secrets/, then manifest.json
// last by rename — and nothing a host wrote (reports/). A mirror holds no
// signing key: with signed manifests it can withhold or delay a
// publication, never forge or replay one (docs/mirrors.md).
//
// PullReports reads each host's reports/status.json (and its log) from a
// mirror, treating both as hostile, and keeps the newest report in the
// primary's chroot, so bento status sees every host whichever server it
// reached.
package mirror

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
)

// Dest is one mirror: ssh://user@host:port/chroot-root.
type Dest struct {
	User string
	Host string
	Port int
	// Root is the mirror's chroot root, an absolute path.
	Root string
}

// Addr is "host:port".
func (d Dest) Addr() string { return net.JoinHostPort(d.Host, strconv.Itoa(d.Port)) }

// String is the destination as written on the command line (no
// password: there is none).
func (d Dest) String() string {
	return "ssh://" + d.User + "@" + d.Addr() + d.Root
}

// ParseDest reads ssh://user@host[:port]/path. The user defaults to
// root, the port to 22; the path is the mirror's chroot root and must be
// absolute and clean.
func ParseDest(s string) (Dest, error) {
	bad := func(why string) (Dest, error) {
		return Dest{}, fmt.Errorf("mirror %q: %s (want ssh://user@host:port/var/lib/bento/chroots)", s, why)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("not a URL")
	}
	if u.Scheme != "ssh" {
		return bad("the scheme must be ssh://")
	}
	if u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" {
		return bad("no query or fragment")
	}
	if _, has := u.User.Password(); has {
		return bad("no password: push logs in with a key")
	}
	d := Dest{User: u.User.Username(), Host: u.Hostname(), Port: 22, Root: u.Path}
	if d.User == "" {
		d.User = "root"
	}
	if d.Host == "" {
		return bad("no host")
	}
	if !validHost(d.Host) {
		return bad("the host " + strconv.Quote(d.Host) + " is neither a host name nor an IP address")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return bad("port " + p + " is not a TCP port")
		}
		d.Port = n
	}
	if !strings.HasPrefix(d.Root, "/") || path.Clean(d.Root) != d.Root || d.Root == "/" {
		return bad("the path must be the mirror's chroot root, absolute and clean, not /")
	}
	return d, nil
}

// validHost accepts an IP address or a DNS name (letters, digits, '-',
// '.', '_'), so that what was parsed prints back the same.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 || strings.HasPrefix(h, ".") || strings.HasPrefix(h, "-") {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}
