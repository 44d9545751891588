package sshdtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
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

// Start runs a fresh sshd on a free loopback port. t.Cleanup stops it (and
// every session it serves) and removes the users, group and directories it
// made.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	RequireRoot(t)
	sshd := sshdBinary(t)
	reapOnce.Do(func() { reapStale(t) })

	base := makeBase(t)
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

	s.launchOnFreePort(t)
	return s
}

// makeBase makes a server's own state directory under stateParent, which
// must be fit for sshd (root-owned all the way up).
func makeBase(t testing.TB) string {
	t.Helper()
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
	return base
}

// launchOnFreePort starts sshd on a free port. Picking a port by listening
// on :0 and closing races with every other process doing the same, so a
// lost race is retried on a new port.
func (s *Server) launchOnFreePort(t testing.TB) {
	t.Helper()
	const attempts = 5
	for i := 1; ; i++ {
		s.setPort(t, freePort(t))
		s.writeConfig(t)
		err := s.launch()
		if err == nil {
			return
		}
		if !errors.Is(err, errPortTaken) || i == attempts {
			t.Fatalf("sshdtest: starting sshd: %v", err)
		}
		t.Logf("sshdtest: port %d was taken, retrying: %v", s.Port, err)
	}
}

// errPortTaken means another process holds the port sshd was given.
var errPortTaken = errors.New("port already in use")

var (
	errForeignServer = errors.New("another ssh server answers on this port")
	errProbeOK       = errors.New("sshdtest probe: host key matched")
)

var (
	sshdOnce sync.Once
	sshdPath string
	sshdErr  error
)

var (
	penaltiesOnce sync.Once
	penalties     bool
)

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
