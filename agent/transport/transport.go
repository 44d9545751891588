// Package transport is the agent's one connection to the server: SSH with a
// pinned server host key (there is no way to skip verification), SFTP on top,
// connect retries with backoff and jitter, keepalives, and a watchdog on
// every operation so that a hung server can never block a tick forever.
package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/bento-nix/bento/agent/backoff"
)

// Options configure a connection.
type Options struct {
	// Addr is host:port of the server.
	Addr string
	User string
	// Signer is the client's private key.
	Signer ssh.Signer
	// HostKeys are the server keys accepted; any other key is refused.
	HostKeys []ssh.PublicKey
	// ConnectTimeout bounds TCP connect plus the SSH and SFTP handshakes
	// of one attempt; 20s when zero.
	ConnectTimeout time.Duration
	// OpTimeout is how long one SFTP operation may go without progress;
	// 60s when zero.
	OpTimeout time.Duration
	// Keepalive is the interval of SSH keepalives; the connection counts as
	// dead after three intervals without a byte from the server. 15s when zero.
	Keepalive time.Duration
	// Attempts is how many times Dial tries to connect; 1 when zero.
	Attempts int
	// Backoff spaces the attempts (with jitter).
	Backoff backoff.Policy
	// Dial opens the TCP connection; a net.Dialer when nil. Benchmarks wrap
	// it to count bytes.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives retry notices; nil discards.
	Logger *slog.Logger
	// PostQuantum offers the hybrid ML-KEM key exchange first. Off, the
	// handshake is curve25519 only: about 2.2 kB less per connection, which
	// is most of an idle tick. On, it protects recorded sessions from a
	// future quantum computer (the publication is public to its host anyway;
	// the secrets it carries are what such an attacker would want).
	PostQuantum bool
}

// algorithms is the handshake offered for o. Every name offered costs
// bytes in the KEXINIT of every connection, so the lists hold what a
// current OpenSSH chooses plus one widely deployed fallback each:
// curve25519 (NIST P-256 for FIPS-restricted servers), the two AEAD
// ciphers (AES-GCM where the CPU has AES instructions, ChaCha20 elsewhere;
// with AEAD no MAC is negotiated) and one CTR+ETM pair for servers without
// AEAD.
func (o *Options) algorithms() ssh.Config {
	kex := []string{ssh.KeyExchangeCurve25519, ssh.KeyExchangeECDHP256}
	if o.PostQuantum {
		kex = append([]string{ssh.KeyExchangeMLKEM768X25519}, kex...)
	}
	ciphers := []string{ssh.CipherAES128GCM, ssh.CipherChaCha20Poly1305, ssh.CipherAES128CTR}
	macs := []string{ssh.HMACSHA256ETM}
	return ssh.Config{KeyExchanges: kex, Ciphers: ciphers, MACs: macs}
}

func (o *Options) defaults() {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 20 * time.Second
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = 60 * time.Second
	}
	if o.Keepalive <= 0 {
		o.Keepalive = 15 * time.Second
	}
	if o.Attempts <= 0 {
		o.Attempts = 1
	}
	if o.Backoff.Initial <= 0 {
		o.Backoff.Initial = 2 * time.Second
	}
	if o.Backoff.Max <= 0 {
		o.Backoff.Max = 30 * time.Second
	}
}

// HostKeyError is returned when the server presents a key that is not the
// configured one. It is never retried.
type HostKeyError struct {
	Addr string
	Got  ssh.PublicKey
	Want []ssh.PublicKey
}

func (e *HostKeyError) Error() string {
	var want []string
	for _, k := range e.Want {
		want = append(want, k.Type()+" "+ssh.FingerprintSHA256(k))
	}
	return fmt.Sprintf("server %s presented host key %s %s, which is not the configured serverHostKey (%s): refusing to connect; if the server's key really changed, update serverHostKey",
		e.Addr, e.Got.Type(), ssh.FingerprintSHA256(e.Got), strings.Join(want, ", "))
}

// ErrAuth is returned (wrapped) when the server refuses the client's key.
var ErrAuth = errors.New("the server refused this host's key")

// ErrTimeout is returned (wrapped) when an operation made no progress for
// OpTimeout; the connection is closed.
var ErrTimeout = errors.New("timed out")

// TooLargeError is returned (wrapped) when a remote file holds more bytes
// than the caller allowed; the read stops there.
type TooLargeError struct{ Max int64 }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("more than the expected %d bytes", e.Max)
}

// Permanent reports whether retrying the connection cannot help.
func Permanent(err error) bool {
	var all *AllFailedError
	if errors.As(err, &all) {
		// Only when no server can help: one that was merely down may
		// answer next time.
		for _, e := range all.Errs {
			if !Permanent(e) {
				return false
			}
		}
		return len(all.Errs) > 0
	}
	var hk *HostKeyError
	return errors.As(err, &hk) || errors.Is(err, ErrAuth)
}

// ParseHostKeys reads the configured server key(s): one per line, each a
// public key ("ssh-ed25519 AAAA… comment") or a known_hosts line
// ("server.example ssh-ed25519 AAAA…"). Only the key is pinned; the host
// patterns of a known_hosts line are not matched against the address, so a
// non-standard port or an IP address needs no second entry.
func ParseHostKeys(text string) ([]ssh.PublicKey, error) {
	var keys []ssh.PublicKey
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err == nil {
			keys = append(keys, k)
			continue
		}
		marker, _, k, _, _, err := ssh.ParseKnownHosts([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("serverHostKey line %d: neither a public key (\"ssh-ed25519 AAAA…\") nor a known_hosts line: %q", i+1, abbreviate(line))
		}
		if marker != "" {
			// %q: the marker is whatever followed "@", control characters and all.
			return nil, fmt.Errorf("serverHostKey line %d: %q entries are not supported; give the server's plain public key", i+1, "@"+abbreviate(marker))
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("serverHostKey is empty: bento never trusts a server key on first use; set it to the server's /etc/ssh/ssh_host_ed25519_key.pub")
	}
	return keys, nil
}

func abbreviate(s string) string {
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

// LoadSigner reads an unencrypted private key (OpenSSH or PEM format).
func LoadSigner(file string) (ssh.Signer, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("identity file: %w", err)
	}
	s, err := ssh.ParsePrivateKey(data)
	var pp *ssh.PassphraseMissingError
	if errors.As(err, &pp) {
		return nil, fmt.Errorf("identity file %s is protected by a passphrase; the agent runs unattended and needs an unencrypted key (such as /etc/ssh/ssh_host_ed25519_key)", file)
	}
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %w", file, err)
	}
	return s, nil
}

// hostKeyAlgorithms asks the server for exactly the key types we can
// verify, so a server holding several keys presents the pinned one.
func hostKeyAlgorithms(keys []ssh.PublicKey) []string {
	var algos []string
	add := func(a ...string) {
		for _, x := range a {
			if !slices.Contains(algos, x) {
				algos = append(algos, x)
			}
		}
	}
	for _, k := range keys {
		if k.Type() == ssh.KeyAlgoRSA {
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		} else {
			add(k.Type())
		}
	}
	return algos
}

// Conn is one SSH connection with an SFTP session.
type Conn struct {
	addr      string
	raw       net.Conn
	ssh       *ssh.Client
	sftp      *sftp.Client
	opTimeout time.Duration
	closeOnce sync.Once
	done      chan struct{}
}

// Dial connects, retrying failed attempts (not a wrong host key or a
// refused client key) with jittered exponential backoff.
func Dial(ctx context.Context, o Options) (*Conn, error) {
	o.defaults()
	if err := o.checkKeys(); err != nil {
		return nil, err
	}
	var last error
	for attempt := 1; ; attempt++ {
		c, err := dialOnce(ctx, o)
		if err == nil {
			return c, nil
		}
		last = err
		if Permanent(err) || ctx.Err() != nil || attempt >= o.Attempts {
			break
		}
		wait := o.Backoff.Jittered(attempt, nil)
		if o.Logger != nil {
			o.Logger.Warn("cannot reach the server, retrying", "server", o.Addr, "attempt", attempt, "of", o.Attempts, "in", wait.Round(time.Millisecond), "err", err)
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("server %s: %w (last error: %w)", o.Addr, err, last)
		}
	}
	return nil, o.dialError(last)
}

// checkKeys refuses options that cannot make a verified, authenticated
// connection.
func (o *Options) checkKeys() error {
	if len(o.HostKeys) == 0 {
		return errors.New("no serverHostKey configured: bento never connects without verifying the server")
	}
	if o.Signer == nil {
		return errors.New("no identity key configured")
	}
	return nil
}

// dialError is Dial's error once it gives up after last.
func (o *Options) dialError(last error) error {
	if o.Attempts > 1 && !Permanent(last) {
		return fmt.Errorf("server %s unreachable after %d attempts: %w", o.Addr, o.Attempts, last)
	}
	return fmt.Errorf("server %s: %w", o.Addr, last)
}

// sleep waits d, or until ctx is done: then it returns ctx's error.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// Endpoint is one server of a list the agent may use (a primary and its
// mirrors): its address, the user to log in as there, its pinned keys.
type Endpoint struct {
	Addr     string
	User     string
	HostKeys []ssh.PublicKey
}

// at is o aimed at e.
func (o Options) at(e Endpoint) Options {
	o.Addr, o.User, o.HostKeys = e.Addr, e.User, e.HostKeys
	return o
}

// DialAny connects to the first endpoint that answers. A round tries each
// endpoint once, in order, so a primary that is down costs one connect
// attempt (or one ConnectTimeout when it is silent), not a whole backoff,
// before its mirror is tried; o.Attempts rounds are spaced by o.Backoff.
// An endpoint whose host key is wrong or that refuses the client's key
// (Permanent) is not tried again this call. It returns the connection and
// the index of the endpoint it reached; o.Addr, o.User and o.HostKeys are
// taken from the endpoints. With one endpoint it is Dial.
func DialAny(ctx context.Context, o Options, eps []Endpoint) (*Conn, int, error) {
	if len(eps) == 0 {
		return nil, -1, errors.New("no server configured")
	}
	if len(eps) == 1 {
		c, err := Dial(ctx, o.at(eps[0]))
		return c, 0, err
	}
	o.defaults()
	d := &anyDialer{o: o, eps: eps, errs: make([]error, len(eps)), dead: make([]bool, len(eps))}
	for round := 1; ; round++ {
		if c, i, err := d.round(ctx, round); c != nil || err != nil {
			return c, i, err
		}
		if round >= o.Attempts || !slices.Contains(d.dead, false) {
			break
		}
		if err := d.pause(ctx, round); err != nil {
			return nil, -1, err
		}
	}
	return nil, -1, &AllFailedError{Errs: d.errs, Rounds: o.Attempts}
}

// anyDialer is one DialAny call: per endpoint, its last error and whether
// it is out of this call (dead).
type anyDialer struct {
	o    Options
	eps  []Endpoint
	errs []error
	dead []bool
}

// round tries each endpoint still in, in order. It returns the first
// connection made and its endpoint's index, or an error that ends the
// call; neither when every endpoint failed.
func (d *anyDialer) round(ctx context.Context, round int) (*Conn, int, error) {
	for i := range d.eps {
		if d.dead[i] {
			continue
		}
		c, err := d.try(ctx, i, round)
		if err != nil {
			return nil, -1, err
		}
		if c != nil {
			return c, i, nil
		}
	}
	return nil, -1, nil
}

// try dials endpoint i once, recording why it failed; the error is one
// that ends the whole call.
func (d *anyDialer) try(ctx context.Context, i, round int) (*Conn, error) {
	e := d.eps[i]
	x := d.o.at(e)
	if len(x.HostKeys) == 0 {
		d.errs[i], d.dead[i] = fmt.Errorf("server %s: no host key configured: bento never connects without verifying the server", e.Addr), true
		return nil, nil
	}
	if x.Signer == nil {
		return nil, errors.New("no identity key configured")
	}
	c, err := dialOnce(ctx, x)
	if err == nil {
		if (round > 1 || i > 0) && d.o.Logger != nil {
			d.o.Logger.Info("connected to a fallback server", "server", e.Addr, "round", round)
		}
		return c, nil
	}
	d.errs[i] = fmt.Errorf("server %s: %w", e.Addr, err)
	d.dead[i] = Permanent(err)
	if ctx.Err() != nil {
		return nil, d.cancelled(ctx.Err())
	}
	if d.o.Logger != nil {
		d.o.Logger.Warn("cannot reach a server, trying the next", "server", e.Addr, "err", err)
	}
	return nil, nil
}

// pause waits the backoff after a round in which no server answered.
func (d *anyDialer) pause(ctx context.Context, round int) error {
	wait := d.o.Backoff.Jittered(round, nil)
	if d.o.Logger != nil {
		d.o.Logger.Warn("no server reachable, retrying", "round", round, "of", d.o.Attempts, "in", wait.Round(time.Millisecond))
	}
	if err := sleep(ctx, wait); err != nil {
		return d.cancelled(err)
	}
	return nil
}

// cancelled is the call's error when ctx ends it (with ctxErr).
func (d *anyDialer) cancelled(ctxErr error) error {
	return fmt.Errorf("%w (%w)", ctxErr, errors.Join(d.errs...))
}

// AllFailedError is DialAny's failure: why each server could not be used.
type AllFailedError struct {
	Errs   []error
	Rounds int
}

func (e *AllFailedError) Error() string {
	var parts []string
	for _, err := range e.Errs {
		parts = append(parts, err.Error())
	}
	return fmt.Sprintf("none of the %d servers reachable (%d rounds): %s", len(e.Errs), e.Rounds, strings.Join(parts, "; "))
}

func (e *AllFailedError) Unwrap() []error { return e.Errs }

func dialOnce(ctx context.Context, o Options) (*Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	dial := o.Dial
	if dial == nil {
		d := &net.Dialer{KeepAlive: -1}
		dial = d.DialContext
	}
	raw, err := dial(dctx, "tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	// The handshakes do not take a context: closing the socket is what
	// interrupts them when the deadline passes or the tick is cancelled.
	var timedOut atomic.Bool
	stop := context.AfterFunc(dctx, func() { timedOut.Store(true); raw.Close() })
	idle := &idleConn{Conn: raw, idle: 3 * o.Keepalive}
	cfg := &ssh.ClientConfig{
		Config:            o.algorithms(),
		User:              o.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(o.Signer)},
		HostKeyCallback:   hostKeyCallback(o.Addr, o.HostKeys),
		HostKeyAlgorithms: hostKeyAlgorithms(o.HostKeys),
		ClientVersion:     "SSH-2.0-bento",
	}
	sc, chans, reqs, err := ssh.NewClientConn(idle, o.Addr, cfg)
	if err != nil {
		stop()
		raw.Close()
		return nil, handshakeError(err, timedOut.Load(), ctx, o)
	}
	client := ssh.NewClient(sc, chans, reqs)
	sc2, err := newSFTP(client)
	if err != nil {
		stop()
		client.Close()
		if timedOut.Load() {
			return nil, fmt.Errorf("sftp: %w", deadlineErr(ctx, o.ConnectTimeout))
		}
		return nil, fmt.Errorf("sftp session (is the server's ForceCommand internal-sftp?): %w", err)
	}
	if !stop() {
		client.Close()
		return nil, deadlineErr(ctx, o.ConnectTimeout)
	}
	c := &Conn{addr: o.Addr, raw: raw, ssh: client, sftp: sc2, opTimeout: o.OpTimeout, done: make(chan struct{})}
	go c.keepalive(o.Keepalive)
	return c, nil
}

// newSFTP opens the SFTP session. Packets of 32 KiB (the SFTP default and
// OpenSSH's limit) with up to 16 in flight per file keep a long-latency
// link busy.
func newSFTP(client *ssh.Client) (*sftp.Client, error) {
	return sftp.NewClient(client, sftp.MaxPacket(32<<10), sftp.MaxConcurrentRequestsPerFile(16))
}

func deadlineErr(ctx context.Context, d time.Duration) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("no answer within %s: %w", d, ErrTimeout)
}

func handshakeError(err error, timedOut bool, ctx context.Context, o Options) error {
	var hk *HostKeyError
	switch {
	case errors.As(err, &hk):
		return hk
	case timedOut:
		return fmt.Errorf("ssh handshake: %w", deadlineErr(ctx, o.ConnectTimeout))
	case strings.Contains(err.Error(), "unable to authenticate"):
		return fmt.Errorf("%w as user %q with key %s %s: check that the server lists this key for that user: put this host's public key in services.bento.hostPublicKey (which bento.lib.hostsFromNixosConfigurations gives the server), or in services.bento-server.hosts.<host>.publicKeys on the server, and redeploy the server: %w",
			ErrAuth, o.User, o.Signer.PublicKey().Type(), ssh.FingerprintSHA256(o.Signer.PublicKey()), err)
	}
	return fmt.Errorf("ssh handshake: %w", err)
}

func hostKeyCallback(addr string, keys []ssh.PublicKey) ssh.HostKeyCallback {
	return func(_ string, _ net.Addr, key ssh.PublicKey) error {
		for _, k := range keys {
			if bytes.Equal(k.Marshal(), key.Marshal()) {
				return nil
			}
		}
		return &HostKeyError{Addr: addr, Got: key, Want: keys}
	}
}

// keepalive asks the server for an answer every interval; idleConn turns
// three silent intervals into a read error that tears the connection down.
func (c *Conn) keepalive(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			if _, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil); err != nil {
				return
			}
		}
	}
}

// idleConn fails a read when the server has been silent for idle.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	if c.idle > 0 {
		c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	}
	return c.Conn.Read(p)
}

// Addr is the "host:port" this connection reached.
func (c *Conn) Addr() string { return c.addr }

// SFTP is the session itself, for readers that stream many files at once
// (the binary cache Nix substitutes from). Its calls are not under the
// per-operation watchdog; keepalives still close a dead connection.
func (c *Conn) SFTP() *sftp.Client { return c.sftp }

// Close ends the connection. It is safe to call more than once.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.done)
		// SSH first: closing the SFTP client waits for its reader, which
		// only ends once the connection underneath is gone (a silent
		// server would otherwise hang Close forever).
		err = c.ssh.Close()
		c.sftp.Close()
	})
	return err
}

// guard runs one operation under a watchdog: when the operation makes no
// progress for OpTimeout, or ctx ends, the connection is closed, which
// unblocks whatever the SFTP client waits for. f calls kick on progress.
func (c *Conn) guard(ctx context.Context, what string, f func(kick func()) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	var fired atomic.Bool
	t := time.AfterFunc(c.opTimeout, func() { fired.Store(true); c.Close() })
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err := f(func() { t.Reset(c.opTimeout) })
	t.Stop()
	stop()
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", what, ctx.Err())
	case fired.Load():
		return fmt.Errorf("%s: no answer from the server for %s, connection closed: %w", what, c.opTimeout, ErrTimeout)
	case err != nil:
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// Stat returns the attributes of a remote file.
func (c *Conn) Stat(ctx context.Context, p string) (os.FileInfo, error) {
	var fi os.FileInfo
	err := c.guard(ctx, "stat "+p, func(func()) error {
		var err error
		fi, err = c.sftp.Stat(p)
		return err
	})
	return fi, err
}

// ReadFile reads a whole remote file, refusing one larger than max bytes.
func (c *Conn) ReadFile(ctx context.Context, p string, max int64) ([]byte, error) {
	var buf bytes.Buffer
	err := c.guard(ctx, "read "+p, func(kick func()) error {
		f, err := c.sftp.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = copyLimited(&buf, f, max, kick)
		return err
	})
	if err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ReadHead reads a remote file in chunks of chunk bytes until more says it
// has enough (it sees everything read so far) or the file ends. It lets
// the agent learn the version at the top of a large manifest with one
// small request.
func (c *Conn) ReadHead(ctx context.Context, p string, chunk int, max int64, more func(head []byte) bool) (data []byte, complete bool, err error) {
	var buf bytes.Buffer
	err = c.guard(ctx, "read "+p, func(kick func()) error {
		f, err := c.sftp.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		b := make([]byte, chunk)
		for {
			n, rerr := f.Read(b)
			buf.Write(b[:n])
			kick()
			if int64(buf.Len()) > max {
				return &TooLargeError{Max: max}
			}
			if rerr == io.EOF {
				complete = true
				return nil
			}
			if rerr != nil {
				return rerr
			}
			if !more(buf.Bytes()) {
				return nil
			}
			// Big reads from here on: the caller needs the whole file.
			if len(b) < 256<<10 {
				b = make([]byte, 256<<10)
			}
		}
	})
	return buf.Bytes(), complete, err
}

// Download copies a remote file to w, refusing more than max bytes.
func (c *Conn) Download(ctx context.Context, p string, w io.Writer, max int64) (int64, error) {
	var n int64
	err := c.guard(ctx, "download "+p, func(kick func()) error {
		f, err := c.sftp.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err = copyLimited(w, f, max, kick)
		return err
	})
	return n, err
}

// copyLimited copies with large reads (the SFTP client splits them into
// concurrent requests) and fails once more than max bytes arrive.
func copyLimited(w io.Writer, r io.Reader, max int64, kick func()) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			n += int64(k)
			kick()
			if n > max {
				return n, &TooLargeError{Max: max}
			}
			if _, werr := w.Write(buf[:k]); werr != nil {
				return n, werr
			}
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// WriteFile replaces a remote file atomically: the content goes to a
// temporary name in the same directory, which is then renamed over p
// (posix-rename@openssh.com), so a reader sees the old file or the new one,
// never a part.
func (c *Conn) WriteFile(ctx context.Context, p string, data []byte) error {
	return c.writeFile(ctx, p, data, true)
}

// WriteFileNoSync replaces a remote file atomically like WriteFile, without
// asking the server to fsync it first: for a file that is stale within
// seconds anyway (live progress), where a crash of the server leaving the
// old content or none is harmless, and one request fewer counts.
func (c *Conn) WriteFileNoSync(ctx context.Context, p string, data []byte) error {
	return c.writeFile(ctx, p, data, false)
}

func (c *Conn) writeFile(ctx context.Context, p string, data []byte, sync bool) error {
	dir, base := path.Split(p)
	tmp := fmt.Sprintf("%s.%s.tmp-%08x", dir, base, rand.Uint32())
	err := c.guard(ctx, "write "+p, func(kick func()) error {
		f, err := c.sftp.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_TRUNC)
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			c.sftp.Remove(tmp)
			return err
		}
		kick()
		if sync {
			if err := c.syncFile(f); err != nil {
				f.Close()
				c.sftp.Remove(tmp)
				return err
			}
		}
		if err := f.Close(); err != nil {
			c.sftp.Remove(tmp)
			return err
		}
		kick()
		return c.renameInto(tmp, p)
	})
	return err
}

// syncFile flushes f to the server's disk where the server can
// (fsync@openssh.com); without the extension the rename still keeps a
// reader from a half file, only a crash of the server may lose it.
func (c *Conn) syncFile(f *sftp.File) error {
	if _, ok := c.sftp.HasExtension("fsync@openssh.com"); ok {
		return f.Sync()
	}
	return nil
}

// renameInto moves the finished temporary file tmp over p, and removes
// tmp when that fails.
func (c *Conn) renameInto(tmp, p string) error {
	var err error
	if _, ok := c.sftp.HasExtension("posix-rename@openssh.com"); ok {
		err = c.sftp.PosixRename(tmp, p)
	} else {
		// Plain SFTP rename refuses to replace: the old file goes
		// first, a reader may briefly find none (never a half one).
		c.sftp.Remove(p)
		err = c.sftp.Rename(tmp, p)
	}
	if err != nil {
		c.sftp.Remove(tmp)
	}
	return err
}

// ReadDir lists a remote directory.
func (c *Conn) ReadDir(ctx context.Context, p string) ([]os.FileInfo, error) {
	var out []os.FileInfo
	err := c.guard(ctx, "list "+p, func(func()) error {
		var err error
		out, err = c.sftp.ReadDir(p)
		return err
	})
	return out, err
}

// Remove deletes a remote file.
func (c *Conn) Remove(ctx context.Context, p string) error {
	return c.guard(ctx, "remove "+p, func(func()) error { return c.sftp.Remove(p) })
}

// Mkdir creates a remote directory; an existing one is not an error.
func (c *Conn) Mkdir(ctx context.Context, p string) error {
	return c.guard(ctx, "mkdir "+p, func(func()) error {
		err := c.sftp.Mkdir(p)
		if err != nil {
			if fi, serr := c.sftp.Stat(p); serr == nil && fi.IsDir() {
				return nil
			}
		}
		return err
	})
}

// Touch sets a remote file's modification time: the agent's heartbeat on a
// tick that has nothing new to report.
func (c *Conn) Touch(ctx context.Context, p string, t time.Time) error {
	return c.guard(ctx, "touch "+p, func(func()) error { return c.sftp.Chtimes(p, t, t) })
}

// IsNotExist reports whether err says a remote file does not exist.
func IsNotExist(err error) bool {
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	var se *sftp.StatusError
	return errors.As(err, &se) && se.FxCode() == sftp.ErrSSHFxNoSuchFile
}

// WriteAt writes data into a remote file at offset off, creating the file
// (truncated, when off is 0): the agent appends its live log this way, a
// chunk at a time. Unlike WriteFile it is not atomic; readers of the file
// know it grows.
func (c *Conn) WriteAt(ctx context.Context, p string, data []byte, off int64) error {
	flags := os.O_WRONLY | os.O_CREATE
	if off == 0 {
		flags |= os.O_TRUNC
	}
	return c.guard(ctx, "write "+p, func(kick func()) error {
		f, err := c.sftp.OpenFile(p, flags)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(data, off); err != nil {
			f.Close()
			return err
		}
		kick()
		return f.Close()
	})
}
