package sshdtest_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// dial connects with a deadline on the whole connection, so a test that
// gets no answer fails instead of hanging until the package timeout.
func dial(t *testing.T, addr string, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	client := ssh.NewClient(c, chans, reqs)
	t.Cleanup(func() { client.Close() })
	return client, nil
}

// publish writes root-owned files into a chroot, as the deploy step does.
func publish(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestChrootReadAndWrite(t *testing.T) {
	t.Parallel()
	s := sshdtest.Start(t, sshdtest.Options{})
	alpha := s.AddHost(t, "alpha")
	beta := s.AddHost(t, "beta")
	publish(t, filepath.Join(s.Root, alpha.Host), map[string]string{
		"manifest.json":        `{"host":"alpha"}`,
		"config/v1/flake.nix":  "{ }",
		"config/v1/hosts/a.nx": "alpha",
	})
	publish(t, filepath.Join(s.Root, beta.Host), map[string]string{"manifest.json": `{"host":"beta"}`})

	sc := s.SFTP(t, alpha)

	reads := []struct {
		path string
		want string // "" means the read must fail
	}{
		{"/manifest.json", `{"host":"alpha"}`},
		{"manifest.json", `{"host":"alpha"}`},
		{"/config/v1/flake.nix", "{ }"},
		{"/../beta/manifest.json", ""},
		{"/../../../../etc/passwd", ""},
		{"/etc/passwd", ""},
	}
	for _, tc := range reads {
		t.Run("read "+tc.path, func(t *testing.T) {
			f, err := sc.Open(tc.path)
			if err != nil {
				if tc.want != "" {
					t.Fatalf("open: %v", err)
				}
				return
			}
			defer f.Close()
			b, err := io.ReadAll(f)
			if tc.want == "" {
				t.Fatalf("read %q outside the host's own files (err %v)", b, err)
			}
			if err != nil || string(b) != tc.want {
				t.Fatalf("got %q, %v; want %q", b, err, tc.want)
			}
		})
	}

	create := func(p string) error {
		f, err := sc.Create(p)
		if err != nil {
			return err
		}
		if _, err := f.Write([]byte("x")); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	writes := []struct {
		name string
		op   func() error
		ok   bool
	}{
		{"create in reports", func() error { return create("/reports/status.json") }, true},
		{"mkdir in reports", func() error { return sc.Mkdir("/reports/logs") }, true},
		{"create in reports subdir", func() error { return create("/reports/logs/v1.log") }, true},
		// The agent replaces status.json atomically: upload a temp name, rename.
		{"posix-rename in reports", func() error {
			if err := create("/reports/.status.json.tmp"); err != nil {
				return err
			}
			return sc.PosixRename("/reports/.status.json.tmp", "/reports/status.json")
		}, true},
		{"create at chroot root", func() error { return create("/evil") }, false},
		{"mkdir at chroot root", func() error { return sc.Mkdir("/evil-dir") }, false},
		{"overwrite manifest", func() error {
			f, err := sc.OpenFile("/manifest.json", os.O_WRONLY|os.O_TRUNC)
			if err == nil {
				f.Close()
			}
			return err
		}, false},
		{"create in config", func() error { return create("/config/v1/evil") }, false},
		{"remove manifest", func() error { return sc.Remove("/manifest.json") }, false},
		{"chmod manifest", func() error { return sc.Chmod("/manifest.json", 0o666) }, false},
		{"move reports away", func() error { return sc.Rename("/reports", "/stolen") }, false},
		{"rename report to chroot root", func() error { return sc.Rename("/reports/status.json", "/manifest2.json") }, false},
	}
	for _, tc := range writes {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op()
			if tc.ok && err != nil {
				t.Fatalf("want success, got %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatal("want failure, got success")
			}
		})
	}

	// The server side agrees: nothing landed outside reports/, and what
	// landed inside belongs to the host's user.
	home := filepath.Join(s.Root, alpha.Host)
	if b, err := os.ReadFile(filepath.Join(home, "manifest.json")); err != nil || string(b) != `{"host":"alpha"}` {
		t.Errorf("manifest.json changed: %q, %v", b, err)
	}
	for _, p := range []string{"evil", "evil-dir", "stolen", "manifest2.json", "config/v1/evil"} {
		if _, err := os.Lstat(filepath.Join(home, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists in the chroot (err %v)", p, err)
		}
	}
	u, err := user.Lookup(alpha.User)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(home, "reports", "status.json"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; strconv.Itoa(int(uid)) != u.Uid {
		t.Errorf("reports/status.json owned by uid %d, want %s (%s)", uid, u.Uid, alpha.User)
	}
}

func TestKeyIsolation(t *testing.T) {
	t.Parallel()
	s := sshdtest.Start(t, sshdtest.Options{})
	a := s.AddHost(t, "host-a")
	b := s.AddHost(t, "host-b")
	for _, tc := range []struct {
		name   string
		user   string
		signer ssh.Signer
		ok     bool
	}{
		{"A as A", a.User, a.Signer, true},
		{"B as B", b.User, b.Signer, true},
		{"A as B", b.User, a.Signer, false},
		{"B as A", a.User, b.Signer, false},
		{"A as root", "root", a.Signer, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &ssh.ClientConfig{
				User:            tc.user,
				Auth:            []ssh.AuthMethod{ssh.PublicKeys(tc.signer)},
				HostKeyCallback: ssh.FixedHostKey(s.HostKey),
			}
			_, err := dial(t, s.Addr, cfg)
			if tc.ok && err != nil {
				t.Fatalf("login refused: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatal("login accepted")
			}
		})
	}
}

func TestHostKeyVerification(t *testing.T) {
	t.Parallel()
	s := sshdtest.Start(t, sshdtest.Options{})
	c := s.AddHost(t, "verify")

	wantPrefix := fmt.Sprintf("[127.0.0.1]:%d ssh-ed25519 AAAA", s.Port)
	if !strings.HasPrefix(s.KnownHostsLine, wantPrefix) {
		t.Errorf("KnownHostsLine = %q, want prefix %q", s.KnownHostsLine, wantPrefix)
	}

	otherPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ssh.NewPublicKey(otherPub)
	if err != nil {
		t.Fatal(err)
	}
	wrongKnownHosts := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(wrongKnownHosts, []byte(knownhosts.Line([]string{s.Addr}, other)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fromFile := func(path string) ssh.HostKeyCallback {
		cb, err := knownhosts.New(path)
		if err != nil {
			t.Fatal(err)
		}
		return cb
	}

	for _, tc := range []struct {
		name string
		cb   ssh.HostKeyCallback
		ok   bool
	}{
		{"fixed, right key", ssh.FixedHostKey(s.HostKey), true},
		{"fixed, wrong key", ssh.FixedHostKey(other), false},
		{"known_hosts, right key", fromFile(s.KnownHostsFile), true},
		{"known_hosts, wrong key", fromFile(wrongKnownHosts), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := s.ClientConfig(c)
			cfg.HostKeyCallback = tc.cb
			_, err := dial(t, s.Addr, cfg)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatal("connected to a server whose host key does not match")
			}
		})
	}
}

func TestStopRestart(t *testing.T) {
	t.Parallel()
	s := sshdtest.Start(t, sshdtest.Options{})
	c := s.AddHost(t, "flaky")
	port, hostKey, line := s.Port, s.HostKey.Marshal(), s.KnownHostsLine

	sc := s.SFTP(t, c)
	if err := writeFile(sc, "/reports/before"); err != nil {
		t.Fatal(err)
	}

	s.Stop()
	if _, err := dial(t, s.Addr, s.ClientConfig(c)); err == nil {
		t.Fatal("connected while the server is stopped")
	}
	// "Server lost" must also break connections that were already open.
	if _, err := sc.Stat("/reports/before"); err == nil {
		t.Fatal("an open SFTP session survived Stop")
	}
	s.Stop() // idempotent

	s.Restart(t)
	if s.Port != port || string(s.HostKey.Marshal()) != string(hostKey) || s.KnownHostsLine != line {
		t.Fatalf("identity changed across Restart: port %d→%d, known hosts %q→%q", port, s.Port, line, s.KnownHostsLine)
	}
	sc = s.SFTP(t, c)
	if _, err := sc.Stat("/reports/before"); err != nil {
		t.Fatalf("after restart: %v", err)
	}

	s.Restart(t) // also from the running state
	if _, err := dial(t, s.Addr, s.ClientConfig(c)); err != nil {
		t.Fatalf("after second restart: %v", err)
	}
}

func writeFile(sc *sftp.Client, p string) error {
	f, err := sc.Create(p)
	if err != nil {
		return err
	}
	f.Write([]byte("x"))
	return f.Close()
}

func TestNoShellNoForwarding(t *testing.T) {
	t.Parallel()
	s := sshdtest.Start(t, sshdtest.Options{})
	c := s.AddHost(t, "shell")
	conn, err := dial(t, s.Addr, s.ClientConfig(c))
	if err != nil {
		t.Fatal(err)
	}

	for _, cmd := range []string{"cat /etc/passwd", "id", "echo pwned-$((6*7))"} {
		t.Run("exec "+cmd, func(t *testing.T) {
			sess, err := conn.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			// internal-sftp runs instead of the command, sees EOF on
			// stdin and exits; whatever it printed is not the command's.
			out, _ := sess.CombinedOutput(cmd)
			for _, leak := range []string{"root:", "uid=", "pwned-42"} {
				if strings.Contains(string(out), leak) {
					t.Fatalf("command ran: output %q", out)
				}
			}
		})
	}

	t.Run("pty", func(t *testing.T) {
		sess, err := conn.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		if err := sess.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err == nil {
			t.Fatal("pty granted")
		}
	})

	t.Run("tcp forwarding", func(t *testing.T) {
		if fc, err := conn.Dial("tcp", s.Addr); err == nil {
			fc.Close()
			t.Fatal("direct-tcpip channel opened")
		}
	})
}

// TestCleanup checks that nothing outlives the test: users, group, custom
// Root, state directory, sshd and its sessions, even with a connection left
// open.
func TestCleanup(t *testing.T) {
	t.Parallel()
	top := filepath.Join("/var/lib", "bento-sshdtest-cleanup-"+randomHex(4))
	var s *sshdtest.Server
	var c *sshdtest.Client
	t.Run("inner", func(t *testing.T) {
		s = sshdtest.Start(t, sshdtest.Options{Root: filepath.Join(top, "fleet", "chroot")})
		c = s.AddHost(t, "gone")
		if _, err := dial(t, s.Addr, s.ClientConfig(c)); err != nil {
			t.Fatal(err)
		}
		// A connection nobody closes: cleanup has to cope.
		conn, err := ssh.Dial("tcp", s.Addr, s.ClientConfig(c))
		if err != nil {
			t.Fatal(err)
		}
		_ = conn
	})
	if _, err := user.Lookup(c.User); err == nil {
		t.Errorf("user %s still exists", c.User)
	}
	if _, err := user.LookupGroup(s.Group); err == nil {
		t.Errorf("group %s still exists", s.Group)
	}
	for _, p := range []string{top, s.StateDir} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists (err %v)", p, err)
		}
	}
	if pids := processesMentioning(s.ConfigFile); len(pids) > 0 {
		t.Errorf("sshd processes still running: %v", pids)
	}
}

func processesMentioning(s string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// fatalRecorder turns Fatalf into a recorded message, so that a test can
// check that Start refuses something and says why.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *fatalRecorder) Fatal(args ...any) {
	r.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

func TestRootMustBeRootOwned(t *testing.T) {
	t.Parallel()
	sshdtest.RequireRoot(t)
	for _, root := range []string{
		filepath.Join(os.TempDir(), "bento-chroot-"+randomHex(4)),
		t.TempDir(),
	} {
		t.Run(root, func(t *testing.T) {
			r := &fatalRecorder{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				sshdtest.Start(r, sshdtest.Options{Root: root})
			}()
			<-done
			if !strings.Contains(r.msg, "cannot hold sshd chroots") {
				t.Fatalf("Start with Root %s: got %q, want a refusal", root, r.msg)
			}
			t.Log(r.msg)
		})
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
