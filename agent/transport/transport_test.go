package transport

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bento-nix/bento/agent/backoff"
	"github.com/bento-nix/bento/internal/sshdtest"
)

// meter counts dials and bytes, and can make the network go silent.
type meter struct {
	dials    atomic.Int32
	in, out  atomic.Int64
	silent   atomic.Bool
	mu       sync.Mutex
	lastConn net.Conn
}

func (m *meter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	m.dials.Add(1)
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	mc := &meteredConn{Conn: c, m: m}
	m.mu.Lock()
	m.lastConn = mc
	m.mu.Unlock()
	return mc, nil
}

type meteredConn struct {
	net.Conn
	m *meter
}

func (c *meteredConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		c.m.in.Add(int64(n))
		// A silent network: bytes are lost, reads wait for the deadline.
		if c.m.silent.Load() && err == nil {
			continue
		}
		return n, err
	}
}

func (c *meteredConn) Write(p []byte) (int, error) {
	if c.m.silent.Load() {
		return len(p), nil
	}
	n, err := c.Conn.Write(p)
	c.m.out.Add(int64(n))
	return n, err
}

type server struct {
	sshd   *sshdtest.Server
	client *sshdtest.Client
	chroot string
}

func startServer(t *testing.T) *server {
	t.Helper()
	s := sshdtest.Start(t, sshdtest.Options{})
	c := s.AddHost(t, "alpha")
	chroot := filepath.Join(s.Root, "alpha")
	if err := os.WriteFile(filepath.Join(chroot, "manifest.json"), []byte(`{"format":1,"host":"alpha","version":"v1","files":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return &server{sshd: s, client: c, chroot: chroot}
}

func (s *server) options(m *meter) Options {
	return Options{
		Addr:     s.sshd.Addr,
		User:     s.client.User,
		Signer:   s.client.Signer,
		HostKeys: []ssh.PublicKey{s.sshd.HostKey},
		Dial:     m.dial,
		Attempts: 3,
		Backoff:  backoff.Policy{Initial: time.Millisecond, Max: time.Millisecond},
	}
}

func TestReadWriteOverRealSSHD(t *testing.T) {
	s := startServer(t)
	m := &meter{}
	ctx := context.Background()
	keys, err := ParseHostKeys(s.sshd.KnownHostsLine)
	if err != nil {
		t.Fatal(err)
	}
	o := s.options(m)
	o.HostKeys = keys
	c, err := Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	data, err := c.ReadFile(ctx, "manifest.json", 1<<20)
	if err != nil || !strings.Contains(string(data), `"version":"v1"`) {
		t.Fatalf("ReadFile: %q, %v", data, err)
	}
	if _, err := c.ReadFile(ctx, "manifest.json", 10); err == nil || !strings.Contains(err.Error(), "more than the expected 10 bytes") {
		t.Errorf("ReadFile over the limit: %v", err)
	}
	if _, err := c.ReadFile(ctx, "nope.json", 100); !IsNotExist(err) {
		t.Errorf("missing file: %v, want IsNotExist", err)
	}

	// ReadHead stops after the first chunk when that is enough.
	before := m.in.Load()
	head, complete, err := c.ReadHead(ctx, "manifest.json", 16, 1<<20, func([]byte) bool { return false })
	if err != nil || string(head) != `{"format":1,"hos` || complete {
		t.Errorf("ReadHead: %q complete=%v %v", head, complete, err)
	}
	if got := m.in.Load() - before; got > 300 {
		t.Errorf("a 16-byte head cost %d bytes in", got)
	}
	head, complete, err = c.ReadHead(ctx, "manifest.json", 16, 1<<20, func([]byte) bool { return true })
	if err != nil || !complete || !strings.HasSuffix(string(head), `"files":[]}`) {
		t.Errorf("ReadHead to the end: %q complete=%v %v", head, complete, err)
	}

	// Reports: replaced atomically, nothing left behind, only in reports/.
	for _, body := range []string{"first", "second"} {
		if err := c.WriteFile(ctx, "reports/status.json", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(filepath.Join(s.chroot, "reports", "status.json"))
	if string(got) != "second" {
		t.Errorf("status.json = %q", got)
	}
	entries, _ := os.ReadDir(filepath.Join(s.chroot, "reports"))
	if len(entries) != 1 {
		t.Errorf("reports/ holds %d entries, want only status.json", len(entries))
	}
	if err := c.WriteFile(ctx, "manifest.json", []byte("{}")); err == nil {
		t.Error("the host could replace its manifest")
	}
	if err := c.Mkdir(ctx, "reports/logs"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mkdir(ctx, "reports/logs"); err != nil {
		t.Errorf("Mkdir of an existing directory: %v", err)
	}
	if err := c.Touch(ctx, "reports/status.json", time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(s.chroot, "reports", "status.json"))
	if fi.ModTime().Unix() != 1700000000 {
		t.Errorf("Touch: mtime %v", fi.ModTime())
	}
	if m.dials.Load() != 1 {
		t.Errorf("%d connections for one Dial", m.dials.Load())
	}
}

func TestWrongHostKeyIsRefusedAtOnce(t *testing.T) {
	s := startServer(t)
	m := &meter{}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	other, _ := ssh.NewPublicKey(pub)
	o := s.options(m)
	o.HostKeys = []ssh.PublicKey{other}
	_, err := Dial(context.Background(), o)
	var hk *HostKeyError
	if !errors.As(err, &hk) || !Permanent(err) {
		t.Fatalf("Dial with the wrong key: %v, want a HostKeyError", err)
	}
	if !strings.Contains(err.Error(), ssh.FingerprintSHA256(s.sshd.HostKey)) || !strings.Contains(err.Error(), ssh.FingerprintSHA256(other)) {
		t.Errorf("the error must name both fingerprints: %v", err)
	}
	if m.dials.Load() != 1 {
		t.Errorf("a wrong host key was retried (%d dials)", m.dials.Load())
	}
}

func TestRefusedClientKeyIsNotRetried(t *testing.T) {
	s := startServer(t)
	m := &meter{}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	stranger, _ := ssh.NewSignerFromKey(priv)
	o := s.options(m)
	o.Signer = stranger
	_, err := Dial(context.Background(), o)
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), s.client.User) {
		t.Fatalf("Dial with an unknown client key: %v", err)
	}
	if m.dials.Load() != 1 {
		t.Errorf("a refused key was retried (%d dials)", m.dials.Load())
	}
}

func TestUnreachableServerIsRetriedThenGivenUp(t *testing.T) {
	s := startServer(t)
	s.sshd.Stop()
	m := &meter{}
	_, err := Dial(context.Background(), s.options(m))
	if err == nil || !strings.Contains(err.Error(), "unreachable after 3 attempts") {
		t.Fatalf("Dial to a stopped server: %v", err)
	}
	if m.dials.Load() != 3 {
		t.Errorf("%d dials, want 3 attempts", m.dials.Load())
	}
	// Back again: the next Dial works.
	s.sshd.Restart(t)
	c, err := Dial(context.Background(), s.options(m))
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	c.Close()
}

func TestSilentServerTimesOut(t *testing.T) {
	s := startServer(t)
	cases := []struct {
		name string
		opts func(*Options)
	}{
		// An operation without progress: the watchdog closes the connection.
		{"operation timeout", func(o *Options) { o.OpTimeout = 200 * time.Millisecond; o.Keepalive = time.Hour }},
		// A dead link: keepalives go unanswered, reads hit their deadline.
		{"keepalive", func(o *Options) { o.OpTimeout = time.Hour; o.Keepalive = 50 * time.Millisecond }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := &meter{}
			o := s.options(m)
			tc.opts(&o)
			c, err := Dial(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			m.silent.Store(true)
			done := make(chan error, 1)
			go func() {
				_, err := c.ReadFile(context.Background(), "manifest.json", 1<<20)
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("a read over a silent network succeeded")
				}
			case <-time.After(time.Minute):
				t.Fatal("a read over a silent network hung")
			}
		})
	}
}

func TestCancelInterruptsAnOperation(t *testing.T) {
	s := startServer(t)
	m := &meter{}
	o := s.options(m)
	o.OpTimeout, o.Keepalive = time.Hour, time.Hour
	c, err := Dial(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m.silent.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := c.ReadFile(ctx, "manifest.json", 1<<20); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled read: %v", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	// A server that accepts TCP and never speaks.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	_, err = Dial(context.Background(), Options{Addr: ln.Addr().String(), User: "x", Signer: signer, HostKeys: []ssh.PublicKey{signer.PublicKey()}, ConnectTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrTimeout) {
		t.Errorf("Dial to a mute server: %v, want ErrTimeout", err)
	}
}

func TestParseHostKeys(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	k, _ := ssh.NewPublicKey(pub)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	cases := []struct {
		name, in string
		n        int
		err      string
	}{
		{"public key", line + " root@server", 1, ""},
		{"known_hosts line", "[bento.example]:2222 " + line, 1, ""},
		{"hashed known_hosts line", "|1|c2FsdHNhbHRzYWx0c2FsdA==|aGFzaGhhc2hoYXNoaGFzaGhhc2g= " + line, 1, ""},
		{"two keys and a comment", "# server\n" + line + "\nbento.example " + line + "\n", 2, ""},
		{"empty", "  \n", 0, "never trusts a server key on first use"},
		{"garbage", "not a key", 0, "neither a public key"},
		{"cert authority", "@cert-authority *.example " + line, 0, "not supported"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := ParseHostKeys(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || len(keys) != tc.n {
				t.Errorf("got %d keys, %v; want %d", len(keys), err, tc.n)
			}
		})
	}
}

func TestLoadSigner(t *testing.T) {
	s := startServer(t)
	if _, err := LoadSigner(s.client.KeyFile); err != nil {
		t.Errorf("the host's key: %v", err)
	}
	if _, err := LoadSigner(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "identity file") {
		t.Errorf("missing key: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	if _, err := LoadSigner(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("garbage key: %v", err)
	}
}

// The handshake offers short algorithm lists (an idle tick is mostly
// handshake) and still agrees with a stock OpenSSH.
func TestHandshakeIsSmallAndAgreesWithOpenSSH(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	dial := func(o Options) (ssh.NegotiatedAlgorithms, int64) {
		t.Helper()
		m := &meter{}
		o.Dial = m.dial
		c, err := Dial(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		algs := c.ssh.Conn.(ssh.AlgorithmsConnMetadata).Algorithms()
		return algs, m.out.Load()
	}
	classic, classicOut := dial(s.options(&meter{}))
	if classic.KeyExchange != ssh.KeyExchangeCurve25519 || classic.Write.Cipher != ssh.CipherAES128GCM {
		t.Errorf("negotiated %+v, want curve25519-sha256 with aes128-gcm", classic)
	}
	pq := s.options(&meter{})
	pq.PostQuantum = true
	pqAlgs, _ := dial(pq)
	// This machine's OpenSSH may predate ML-KEM (9.9); either way the
	// connection must succeed on one of the offered exchanges.
	if pqAlgs.KeyExchange != ssh.KeyExchangeMLKEM768X25519 && pqAlgs.KeyExchange != ssh.KeyExchangeCurve25519 {
		t.Errorf("post-quantum offer negotiated %s", pqAlgs.KeyExchange)
	}

	// What x/crypto would send with its default lists, for comparison.
	m := &meter{}
	raw, err := m.dial(ctx, "tcp", s.sshd.Addr)
	if err != nil {
		t.Fatal(err)
	}
	sc, chans, reqs, err := ssh.NewClientConn(raw, s.sshd.Addr, &ssh.ClientConfig{
		User: s.client.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(s.client.Signer)},
		HostKeyCallback: ssh.FixedHostKey(s.sshd.HostKey), HostKeyAlgorithms: hostKeyAlgorithms([]ssh.PublicKey{s.sshd.HostKey}),
	})
	if err != nil {
		t.Fatal(err)
	}
	client := ssh.NewClient(sc, chans, reqs)
	if _, err := newSFTP(client); err != nil {
		t.Fatal(err)
	}
	client.Close()
	if def := m.out.Load(); classicOut >= def {
		t.Errorf("bento's handshake sent %d bytes, x/crypto's defaults %d: the short lists should cost less", classicOut, def)
	} else {
		t.Logf("bytes out to a ready SFTP session: %d (x/crypto defaults: %d)", classicOut, def)
	}
}
