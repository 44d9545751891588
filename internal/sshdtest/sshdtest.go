// Package sshdtest runs a real OpenSSH sshd on loopback for tests, serving one
// SFTP chroot per host exactly as the NixOS server module configures
// production: a system user per host whose home is <root>/<host>, a Match
// Group block that chroots it there and forces internal-sftp, and
// authorized keys kept in root-owned files outside the chroots.
//
// A fake SFTP server would hide the things that break in production: sshd's
// ownership rules for ChrootDirectory and AuthorizedKeysFile, locked
// accounts, host key verification and connections dropping when the server
// goes away. Hence the real thing, which needs root.
//
// Everything a Server creates (users, group, directories, the sshd process
// and its sessions) is removed by t.Cleanup. If a test binary dies before its
// cleanups run (a -timeout panic, a kill), the next Start in any test binary
// of the same machine reaps what that dead process left behind.
package sshdtest

import (
	"os"
	"os/exec"
	"regexp"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

// stateParent holds every Server's state directory (and the default chroot
// root). It must not be /tmp: sshd rejects a ChrootDirectory or an
// AuthorizedKeysFile (StrictModes) below a group- or world-writable
// directory, and /tmp is world-writable.
const stateParent = "/var/lib"

const statePrefix = "bento-test-"

// hostRE is the host name rule from DESIGN.md: host names become directory
// and user names.
var hostRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// maxUserLen is the longest user name useradd accepts on Linux.
const maxUserLen = 32

// Options configures Start. Zero values pick safe, unique defaults.
type Options struct {
	// Root is the chroot root; each host's chroot is Root/<host>. Every
	// component must be a root-owned directory that is not group- or
	// world-writable, so not under /tmp. Default: a fresh directory under
	// /var/lib/bento-test-XXXX, removed at cleanup. A Root that does not
	// exist is created and removed at cleanup; an existing one is kept (only
	// the host directories made by AddHost are removed).
	Root string
	// Group is the group whose members sshd chroots. Default: a unique
	// "bt<random>" group. A named group is created if missing (and then
	// removed at cleanup).
	Group string
	// MaxStartups is sshd's MaxStartups; "100:30:200" when empty.
	MaxStartups string
}

// Server is a running sshd serving chroots under Root.
type Server struct {
	Addr           string        // 127.0.0.1:Port
	Port           int           // kept across Restart
	Root           string        // chroot root; host chroots are Root/<host>
	HostKey        ssh.PublicKey // kept across Restart
	KnownHostsLine string        // "[127.0.0.1]:PORT ssh-ed25519 AAAA..."
	KnownHostsFile string        // a known_hosts file holding KnownHostsLine
	Group          string        // members are chrooted to their home
	StateDir       string        // sshd config, host key, authorized keys, pid and log; outside Root
	ConfigFile     string        // the generated sshd_config
	LogFile        string        // sshd's stderr, appended across restarts

	sshd        string
	base        string // /var/lib/bento-test-XXXX
	maxStartups string

	mu     sync.Mutex
	shells []shellUser // AddShellUser
	pusher bool        // AllowPusher
	cmd    *exec.Cmd
	exited chan struct{}
	own    owner
}

// Client is one host's identity on the server.
type Client struct {
	Host    string
	User    string     // the system user the host logs in as
	KeyFile string     // OpenSSH private key (0600); KeyFile+".pub" is the public half
	Signer  ssh.Signer // the same key, ready for ssh.PublicKeys
}

// RequireRoot fails, rather than skips, when the test is not running as
// root: CI runs as root, so a skip would only hide that these tests never
// ran.
func RequireRoot(t testing.TB) {
	t.Helper()
	if uid := os.Geteuid(); uid != 0 {
		t.Fatalf("sshdtest: this test runs a real sshd with chroots and system users and must run as root (euid is %d); CI runs tests as root", uid)
	}
}
