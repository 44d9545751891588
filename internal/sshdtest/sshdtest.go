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
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
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

// Start runs a fresh sshd on a free loopback port. t.Cleanup stops it (and
// every session it serves) and removes the users, group and directories it
// made.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	RequireRoot(t)
	sshd := sshdBinary(t)
	reapOnce.Do(func() { reapStale(t) })

	if err := os.MkdirAll(stateParent, 0o755); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	if err := checkRootOwnedPath(stateParent); err != nil {
		t.Fatalf("sshdtest: state directories go under %s, which sshd would refuse: %v", stateParent, err)
	}
	base, err := os.MkdirTemp(stateParent, statePrefix)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	s := &Server{
		sshd:           sshd,
		base:           base,
		StateDir:       filepath.Join(base, "sshd"),
		ConfigFile:     filepath.Join(base, "sshd", "sshd_config"),
		LogFile:        filepath.Join(base, "sshd", "sshd.log"),
		KnownHostsFile: filepath.Join(base, "sshd", "known_hosts"),
		maxStartups:    opts.MaxStartups,
	}
	s.own = owner{PID: os.Getpid(), PIDNS: pidNamespace(), Config: s.ConfigFile}
	// Registered before anything else is made, so a Fatalf halfway through
	// still undoes what was made.
	t.Cleanup(func() { s.cleanup(t) })
	s.saveOwner(t)

	if err := os.MkdirAll(filepath.Join(s.StateDir, "keys"), 0o755); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	s.setupRoot(t, opts.Root)
	s.setupGroup(t, opts.Group)
	s.makeHostKey(t)

	// sshd refuses to start without its privilege separation directory;
	// on a systemd host it is created by the unit, which is not running here.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}

	// Picking a port by listening on :0 and closing races with every other
	// process doing the same, so a lost race is retried on a new port.
	const attempts = 5
	for i := 1; ; i++ {
		s.setPort(t, freePort(t))
		s.writeConfig(t)
		err := s.launch()
		if err == nil {
			break
		}
		if !errors.Is(err, errPortTaken) || i == attempts {
			t.Fatalf("sshdtest: starting sshd: %v", err)
		}
		t.Logf("sshdtest: port %d was taken, retrying: %v", s.Port, err)
	}
	return s
}

// AddHost creates host's system user and chroot and returns its identity.
// The user is removed when t's cleanups run (and at the latest when the
// Server's do). Root/<host> (root:root 0755) and Root/<host>/reports (owned
// by the user, 0755) are created if missing; existing ones are kept, so the
// deploy step may have made them first.
func (s *Server) AddHost(t testing.TB, host string) *Client {
	t.Helper()
	if !hostRE.MatchString(host) {
		t.Fatalf("sshdtest: invalid host name %q: must match %s", host, hostRE)
	}
	home := filepath.Join(s.Root, host)

	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	keyFile := filepath.Join(t.TempDir(), "id_ed25519")
	writePrivateKey(t, keyFile, priv, "bento-test-"+host)
	authorized := ssh.MarshalAuthorizedKey(signer.PublicKey())
	if err := os.WriteFile(keyFile+".pub", authorized, 0o644); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}

	name := s.addUser(t, host, home)
	t.Cleanup(func() { s.removeUser(t, name) })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("sshdtest: looking up the user just created: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	// The file, not the chroot, holds the key: a host must not be able to
	// add keys for itself, and StrictModes wants the file and every
	// directory above it root-owned.
	if err := os.WriteFile(filepath.Join(s.StateDir, "keys", name), authorized, 0o644); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}

	if err := os.Mkdir(home, 0o755); err == nil {
		s.mu.Lock()
		s.own.Dirs = append(s.own.Dirs, home)
		s.mu.Unlock()
		s.saveOwner(t)
		// Mkdir's mode is filtered by the umask; sshd wants exactly "not
		// group/world-writable", but the deploy step and the agent expect 0755.
		if err := os.Chmod(home, 0o755); err != nil {
			t.Fatalf("sshdtest: %v", err)
		}
	} else if !errors.Is(err, os.ErrExist) {
		t.Fatalf("sshdtest: %v", err)
	}
	if err := checkRootOwnedPath(home); err != nil {
		t.Fatalf("sshdtest: sshd would refuse to chroot %s into %s: %v", name, home, err)
	}
	reports := filepath.Join(home, "reports")
	if err := os.Mkdir(reports, 0o755); err == nil {
		if err := os.Chmod(reports, 0o755); err != nil {
			t.Fatalf("sshdtest: %v", err)
		}
	} else if !errors.Is(err, os.ErrExist) {
		t.Fatalf("sshdtest: %v", err)
	}
	// Also when it already existed: a deploy step that ran before AddHost
	// could not have known the user.
	if err := os.Lchown(reports, uid, gid); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}

	return &Client{Host: host, User: name, KeyFile: keyFile, Signer: signer}
}

// ClientConfig is the configuration a host's agent would use: its own key,
// and the server's host key verified, never skipped.
func (s *Server) ClientConfig(c *Client) *ssh.ClientConfig {
	return &ssh.ClientConfig{
		User:            c.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(c.Signer)},
		HostKeyCallback: ssh.FixedHostKey(s.HostKey),
		Timeout:         5 * time.Second,
	}
}

// SFTP connects as c's user, verifying the host key, and fails the test if
// that does not work. The connection is closed by t.Cleanup.
func (s *Server) SFTP(t testing.TB, c *Client) *sftp.Client {
	t.Helper()
	conn, err := ssh.Dial("tcp", s.Addr, s.ClientConfig(c))
	if err != nil {
		t.Fatalf("sshdtest: ssh to %s as %s (host %s): %v", s.Addr, c.User, c.Host, err)
	}
	sc, err := sftp.NewClient(conn)
	if err != nil {
		conn.Close()
		t.Fatalf("sshdtest: sftp as %s: %v", c.User, err)
	}
	t.Cleanup(func() {
		sc.Close()
		conn.Close()
	})
	return sc
}

// Stop kills sshd and every session it serves, as if the server machine
// vanished: open connections break, new ones are refused. Killing only the
// listener would not do that, because sshd puts each connection in its own
// session (setsid) where it outlives the listener.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd, s.exited = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	killTree(cmd.Process.Pid)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
	}
}

// Restart stops sshd if it runs and starts it again on the same port with
// the same host key, so known-hosts entries stay valid.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.launch(); err != nil {
		t.Fatalf("sshdtest: restarting sshd on port %d: %v", s.Port, err)
	}
}

// errPortTaken means another process holds the port sshd was given.
var errPortTaken = errors.New("port already in use")

// launch starts sshd with the current config and waits until it serves its
// own host key on its port.
func (s *Server) launch() error {
	logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, 2)
	fmt.Fprintf(logf, "--- sshdtest: starting sshd on %s at %s\n", s.Addr, time.Now().Format(time.RFC3339Nano))

	// -D: stay in the foreground, a child we can wait for; -e: log to
	// stderr (the log file) instead of syslog, which does not exist here.
	cmd := exec.Command(s.sshd, "-D", "-e", "-f", s.ConfigFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own process group: a ^C meant for go test must not reach sshd
		// before the cleanup does. Pdeathsig: if the test binary dies
		// without cleanups, the listener dies with it (it fires when the
		// thread that started sshd exits, which Go only does for threads
		// locked with LockOSThread; the reaper covers that case).
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.own.SSHDPID = cmd.Process.Pid
	s.mu.Unlock()
	s.saveOwner(nil)

	err = s.waitReady(exited)
	if err == nil {
		return nil
	}
	s.Stop()
	logText := s.logSince(logStart)
	if errors.Is(err, errForeignServer) || strings.Contains(logText, "Address already in use") || strings.Contains(logText, "Cannot bind any address") {
		err = fmt.Errorf("%w: %v", errPortTaken, err)
	}
	return fmt.Errorf("%w\nsshd log:\n%s", err, logText)
}

var (
	errForeignServer = errors.New("another ssh server answers on this port")
	errProbeOK       = errors.New("sshdtest probe: host key matched")
)

// waitReady polls until sshd presents its own host key. An open port alone
// is not enough: after a lost port race it is someone else's server.
func (s *Server) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			return errors.New("sshd exited during startup")
		default:
		}
		err := s.probe()
		if err == nil || errors.Is(err, errForeignServer) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd not serving on %s after 10s: %v", s.Addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// probe runs an SSH key exchange and aborts it as soon as the host key is
// seen, so no authentication is attempted and sshd only logs a closed
// preauth connection.
func (s *Server) probe() error {
	conn, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	var verdict error
	cfg := &ssh.ClientConfig{
		User: "sshdtest-probe",
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			if bytes.Equal(key.Marshal(), s.HostKey.Marshal()) {
				verdict = errProbeOK
			} else {
				verdict = errForeignServer
			}
			return verdict
		},
	}
	_, _, _, err = ssh.NewClientConn(conn, s.Addr, cfg)
	switch {
	case verdict == errProbeOK:
		return nil
	case verdict != nil:
		return verdict
	case err != nil:
		return err
	default:
		return errors.New("handshake completed without a host key check")
	}
}

func (s *Server) setPort(t testing.TB, port int) {
	s.Port = port
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s.KnownHostsLine = knownhosts.Line([]string{s.Addr}, s.HostKey)
	if err := os.WriteFile(s.KnownHostsFile, []byte(s.KnownHostsLine+"\n"), 0o644); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
}

// writeConfig writes the same sshd settings the NixOS server module
// generates, and has sshd -t check them so that a rejected option fails here
// with sshd's own words instead of as a startup timeout.
func (s *Server) writeConfig(t testing.TB) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "# generated by sshdtest for %s\n", t.Name())
	fmt.Fprintf(&b, "ListenAddress 127.0.0.1\nPort %d\n", s.Port)
	fmt.Fprintf(&b, "HostKey %s\n", filepath.Join(s.StateDir, "ssh_host_ed25519_key"))
	fmt.Fprintf(&b, "PidFile %s\n", filepath.Join(s.StateDir, "sshd.pid"))
	b.WriteString("UsePAM no\n")
	b.WriteString("PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n")
	fmt.Fprintf(&b, "AuthorizedKeysFile %s/%%u\n", filepath.Join(s.StateDir, "keys"))
	b.WriteString("StrictModes yes\n")
	b.WriteString("PermitRootLogin no\n")
	// Only this server's hosts: the machine's other accounts, and other
	// tests' users, cannot log in here even by mistake.
	fmt.Fprintf(&b, "AllowGroups %s\n", s.Group)
	maxStartups := s.maxStartups
	if maxStartups == "" {
		maxStartups = "100:30:200"
	}
	fmt.Fprintf(&b, "MaxStartups %s\n", maxStartups)
	if sshdPenalizes(s.sshd) {
		// OpenSSH 9.8+ blocks a source address after failed logins, and
		// every test connects from 127.0.0.1: one negative test would make
		// the next ones flaky.
		b.WriteString("PerSourcePenalties no\n")
	}
	// VERBOSE logs which key each login used: what a failing test needs.
	b.WriteString("LogLevel VERBOSE\n")
	b.WriteString("Subsystem sftp internal-sftp\n")
	// Before the chroot block: sshd keeps the first value of a keyword.
	b.WriteString(s.shellBlocks())
	fmt.Fprintf(&b, "\nMatch Group %s\n", s.Group)
	for _, line := range []string{
		"ChrootDirectory %h",
		"ForceCommand internal-sftp",
		"AllowTcpForwarding no",
		"AllowStreamLocalForwarding no",
		"X11Forwarding no",
		"PermitTTY no",
		"PermitTunnel no",
		"AllowAgentForwarding no",
	} {
		b.WriteString("\t" + line + "\n")
	}
	if err := os.WriteFile(s.ConfigFile, []byte(b.String()), 0o644); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	out, err := exec.Command(s.sshd, "-t", "-f", s.ConfigFile).CombinedOutput()
	if err != nil {
		t.Fatalf("sshdtest: sshd -t rejects the generated config (%v):\n%s\nconfig %s:\n%s", err, out, s.ConfigFile, b.String())
	}
}

func (s *Server) setupRoot(t testing.TB, root string) {
	t.Helper()
	if root == "" {
		root = filepath.Join(s.base, "chroot")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatalf("sshdtest: %v", err)
		}
	} else {
		abs, err := filepath.Abs(root)
		if err != nil {
			t.Fatalf("sshdtest: %v", err)
		}
		root = filepath.Clean(abs)
		// Check what exists before creating anything, so a Root under /tmp
		// leaves nothing behind.
		first := root
		for {
			if _, err := os.Stat(first); err == nil {
				break
			}
			first = filepath.Dir(first)
		}
		if err := checkRootOwnedPath(first); err != nil {
			t.Fatalf("sshdtest: Root %s cannot hold sshd chroots: %v (every component must be a root-owned directory that is not group/world-writable, so not under /tmp)", root, err)
		}
		if first != root {
			// Remember the topmost directory we create, to remove it all.
			top := root
			for filepath.Dir(top) != first {
				top = filepath.Dir(top)
			}
			if err := os.MkdirAll(root, 0o755); err != nil {
				t.Fatalf("sshdtest: %v", err)
			}
			s.mu.Lock()
			s.own.Dirs = append(s.own.Dirs, top)
			s.mu.Unlock()
			s.saveOwner(t)
		}
	}
	if err := checkRootOwnedPath(root); err != nil {
		t.Fatalf("sshdtest: Root %s cannot hold sshd chroots: %v", root, err)
	}
	s.Root = root
}

func (s *Server) setupGroup(t testing.TB, group string) {
	t.Helper()
	if group != "" {
		if _, err := user.LookupGroup(group); err == nil {
			s.Group = group
			return
		}
		if code, out, err := accountTool("groupadd", "--system", group); err != nil {
			t.Fatalf("sshdtest: groupadd %s: %v (exit %d): %s", group, err, code, out)
		}
		s.Group = group
		s.mu.Lock()
		s.own.Group = group
		s.mu.Unlock()
		s.saveOwner(t)
		return
	}
	for i := 0; ; i++ {
		name := "bt" + randomHex(4)
		// Recorded before it exists: if the process dies right after
		// groupadd, the reaper still knows the group is ours.
		s.mu.Lock()
		s.own.Group = name
		s.mu.Unlock()
		s.saveOwner(t)
		code, out, err := accountTool("groupadd", "--system", name)
		if err == nil {
			s.Group = name
			return
		}
		if code != 9 || i == 5 { // 9: name already in use
			s.mu.Lock()
			s.own.Group = ""
			s.mu.Unlock()
			t.Fatalf("sshdtest: groupadd %s: %v (exit %d): %s", name, err, code, out)
		}
	}
}

func (s *Server) makeHostKey(t testing.TB) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	// sshd refuses a private host key that others can read.
	writePrivateKey(t, filepath.Join(s.StateDir, "ssh_host_ed25519_key"), priv, "bento-test-host-key")
	s.HostKey = signer.PublicKey()
}

// addUser creates the host's system user: home = its chroot, primary group =
// the chrooted group, no usable shell, password "*". The password matters:
// useradd's default "!" marks the account locked, and with UsePAM no sshd
// refuses locked accounts even for key logins; "*" just means "no password".
func (s *Server) addUser(t testing.TB, host, home string) string {
	t.Helper()
	shell := "/usr/sbin/nologin"
	if _, err := os.Stat(shell); err != nil {
		shell = "/bin/false"
	}
	for i := 0; ; i++ {
		name := "bt" + randomHex(4) + "-" + strings.ToLower(host)
		if len(name) > maxUserLen {
			name = name[:maxUserLen]
		}
		s.mu.Lock()
		s.own.Users = append(s.own.Users, name)
		s.mu.Unlock()
		s.saveOwner(t)
		code, out, err := accountTool("useradd", "--system", "--no-create-home",
			"--home-dir", home, "--gid", s.Group, "--shell", shell,
			"--password", "*", "--comment", "bento test host "+host, name)
		if err == nil {
			return name
		}
		s.forgetUser(name)
		if code != 9 || i == 5 { // 9: name already in use
			t.Fatalf("sshdtest: useradd %s: %v (exit %d): %s", name, err, code, out)
		}
	}
}

func (s *Server) forgetUser(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, u := range s.own.Users {
		if u == name {
			s.own.Users = append(s.own.Users[:i], s.own.Users[i+1:]...)
			return true
		}
	}
	return false
}

func (s *Server) removeUser(t testing.TB, name string) {
	if !s.forgetUser(name) {
		return // already removed by an earlier cleanup
	}
	if err := deleteUser(name); err != nil {
		t.Errorf("sshdtest: %v", err)
	}
	os.Remove(filepath.Join(s.StateDir, "keys", name))
	s.saveOwner(t)
}

func (s *Server) cleanup(t testing.TB) {
	s.Stop()
	if t.Failed() {
		if b, err := os.ReadFile(s.LogFile); err == nil {
			t.Logf("sshdtest: sshd log (%s):\n%s", s.LogFile, b)
		}
	}
	s.mu.Lock()
	users := append([]string(nil), s.own.Users...)
	s.mu.Unlock()
	for _, u := range users {
		s.removeUser(t, u)
	}
	s.mu.Lock()
	own := s.own
	s.mu.Unlock()
	if err := undo(own); err != nil {
		t.Errorf("sshdtest: cleanup: %v", err)
	}
	if err := os.RemoveAll(s.base); err != nil {
		t.Errorf("sshdtest: cleanup: %v", err)
	}
}

func (s *Server) logSince(off int64) string {
	b, err := os.ReadFile(s.LogFile)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

// owner is what a Server made, saved in its state directory so that the
// reaper can undo it if the test binary dies before its cleanups run.
type owner struct {
	PID     int      `json:"pid"`
	PIDNS   string   `json:"pidns"`
	SSHDPID int      `json:"sshdPid,omitempty"`
	Config  string   `json:"config"`
	Group   string   `json:"group,omitempty"` // only a group this Server created
	Users   []string `json:"users,omitempty"`
	Dirs    []string `json:"dirs,omitempty"` // outside the state directory
}

func (s *Server) saveOwner(t testing.TB) {
	s.mu.Lock()
	b, err := json.Marshal(s.own)
	s.mu.Unlock()
	if err == nil {
		tmp := filepath.Join(s.base, "owner.json.tmp")
		if err = os.WriteFile(tmp, b, 0o644); err == nil {
			err = os.Rename(tmp, filepath.Join(s.base, "owner.json"))
		}
	}
	if err != nil && t != nil {
		t.Fatalf("sshdtest: recording what this server made: %v", err)
	}
}

// undo removes the group and directories recorded in o. Users are removed
// by the caller first, since a group cannot go while it is a user's primary
// group.
func undo(o owner) error {
	var errs []error
	if o.Group != "" {
		code, out, err := accountTool("groupdel", o.Group)
		if err != nil && code != 6 { // 6: no such group
			errs = append(errs, fmt.Errorf("groupdel %s: %v: %s", o.Group, err, out))
		}
	}
	for i := len(o.Dirs) - 1; i >= 0; i-- {
		if err := os.RemoveAll(o.Dirs[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

var reapOnce sync.Once

// reapStale undoes what Servers of dead test binaries left behind. Only
// processes of our own PID namespace are judged, since a PID from another
// namespace says nothing about whether its owner is alive.
func reapStale(t testing.TB) {
	matches, _ := filepath.Glob(filepath.Join(stateParent, statePrefix+"*", "owner.json"))
	ns := pidNamespace()
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		var o owner
		if json.Unmarshal(b, &o) != nil || o.PIDNS != ns || o.PID <= 0 || processAlive(o.PID) {
			continue
		}
		if o.SSHDPID > 0 {
			// The PID may have been reused; only kill an sshd running our config.
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", o.SSHDPID)); err == nil &&
				bytes.Contains(cmdline, []byte(o.Config)) {
				killTree(o.SSHDPID)
			}
		}
		var errs []error
		for _, u := range o.Users {
			errs = append(errs, deleteUser(u))
		}
		errs = append(errs, undo(o), os.RemoveAll(filepath.Dir(m)))
		if err := errors.Join(errs...); err != nil {
			t.Logf("sshdtest: reaping %s left by dead process %d: %v", filepath.Dir(m), o.PID, err)
		} else {
			t.Logf("sshdtest: reaped %s left by dead process %d", filepath.Dir(m), o.PID)
		}
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func pidNamespace() string {
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return ns
}

// deleteUser removes a user; -f because sshd may still be tearing down the
// user's last session, which would make plain userdel refuse.
func deleteUser(name string) error {
	code, out, err := accountTool("userdel", "-f", name)
	if err != nil && code != 6 { // 6: no such user
		return fmt.Errorf("userdel %s: %v: %s", name, err, out)
	}
	return nil
}

// accountMu serialises this process's shadow tools; other processes (other
// test binaries) are handled by retrying, because useradd and friends fail
// at once, rather than wait, when /etc/passwd is locked.
var accountMu sync.Mutex

// accountTool runs useradd/userdel/groupadd/groupdel and returns its exit
// code and output.
func accountTool(name string, args ...string) (int, string, error) {
	accountMu.Lock()
	defer accountMu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err == nil {
			return 0, "", nil
		}
		code := -1
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		}
		if !bytes.Contains(out, []byte("lock")) || time.Now().After(deadline) {
			return code, strings.TrimSpace(string(out)), err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killTree freezes pid and all its descendants with SIGSTOP, rereading
// /proc until no new child appears, then SIGKILLs them all. Freezing first
// means nothing forks a new connection handler between the scan and the kill.
func killTree(pid int) {
	frozen := map[int]bool{}
	pending := []int{pid}
	for len(pending) > 0 {
		for _, p := range pending {
			syscall.Kill(p, syscall.SIGSTOP)
			frozen[p] = true
		}
		pending = pending[:0]
		for child, parent := range processParents() {
			if frozen[parent] && !frozen[child] {
				pending = append(pending, child)
			}
		}
	}
	for p := range frozen {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

// processParents maps every PID to its parent's PID.
func processParents() map[int]int {
	parents := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may contain spaces and parentheses; the fields
		// after the last ")" are "state ppid ...".
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			parents[pid] = ppid
		}
	}
	return parents
}

// checkRootOwnedPath applies sshd's ChrootDirectory rule to dir and every
// directory above it. sshd itself only complains when a user logs in, as a
// "bad ownership or modes" line in its log and a dropped connection; checking
// here turns that into a clear test failure.
func checkRootOwnedPath(dir string) error {
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		switch {
		case !fi.IsDir():
			return fmt.Errorf("%s is not a directory", p)
		case !ok || st.Uid != 0:
			return fmt.Errorf("%s is not owned by root", p)
		case fi.Mode().Perm()&0o022 != 0:
			return fmt.Errorf("%s is group- or world-writable (mode %v)", p, fi.Mode().Perm())
		}
		if p == "/" {
			return nil
		}
	}
}

var (
	sshdOnce sync.Once
	sshdPath string
	sshdErr  error
)

// sshdBinary finds sshd by absolute path: sshd re-executes itself for every
// connection and refuses to start from a relative path.
func sshdBinary(t testing.TB) string {
	t.Helper()
	sshdOnce.Do(func() {
		p, err := exec.LookPath("sshd")
		if err != nil {
			p, err = "/usr/sbin/sshd", nil
			if _, serr := os.Stat(p); serr != nil {
				sshdErr = fmt.Errorf("sshd not found in PATH or /usr/sbin (install openssh-server)")
				return
			}
		}
		sshdPath, sshdErr = filepath.Abs(p)
	})
	if sshdErr != nil {
		t.Fatalf("sshdtest: %v", sshdErr)
	}
	return sshdPath
}

var (
	penaltiesOnce sync.Once
	penalties     bool
)

// sshdPenalizes reports whether sshd is OpenSSH 9.8 or later, which knows
// (and defaults on) PerSourcePenalties; older versions reject the option.
func sshdPenalizes(sshd string) bool {
	penaltiesOnce.Do(func() {
		// Versions without -V still print the version in their usage text.
		out, _ := exec.Command(sshd, "-V").CombinedOutput()
		m := regexp.MustCompile(`OpenSSH_(\d+)\.(\d+)`).FindSubmatch(out)
		if m == nil {
			return
		}
		major, _ := strconv.Atoi(string(m[1]))
		minor, _ := strconv.Atoi(string(m[2]))
		penalties = major > 9 || major == 9 && minor >= 8
	})
	return penalties
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writePrivateKey(t testing.TB, path string, priv ed25519.PrivateKey, comment string) {
	t.Helper()
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
