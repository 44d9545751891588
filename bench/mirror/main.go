// Command mirror measures bento's mirrors against two real sshd servers on
// loopback: the bytes of a mirror push (a full first push, then one after a
// one-file change, then one with nothing to do), and the time an agent takes
// to fail over from a primary that is down to the mirror — a stopped
// primary (the connection is refused) and a hung one (it accepts and never
// answers, so the connect timeout decides) — and the whole tick that then
// applies the next publication from the mirror.
//
// Bytes are counted on the TCP connections (both directions, SSH handshake
// and SFTP included).
//
//	go run ./bench/mirror -files 100 -size 2048 -rounds 10
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/bento-nix/bento/mirror"
	"github.com/bento-nix/bento/nix"
)

func main() {
	files := flag.Int("files", 100, "extra files in the flake")
	size := flag.Int("size", 2048, "bytes of each extra file")
	rounds := flag.Int("rounds", 10, "failover measurements")
	timeout := flag.Duration("connect-timeout", 2*time.Second, "the agent's connectTimeout, which a hung primary costs")
	flag.Parse()
	os.Exit(benchtb.Run("bench/mirror", io.Discard, func(tb *benchtb.TB) error {
		return run(tb, *files, *size, *rounds, *timeout)
	}))
}

func fileContent(i, gen, size int) string {
	line := fmt.Sprintf("# file %d generation %d\n", i, gen)
	return line + strings.Repeat("x", max(0, size-len(line)-1)) + "\n"
}

func run(tb *benchtb.TB, nFiles, size, rounds int, connectTimeout time.Duration) error {
	b := setUp(tb, nFiles, size)
	if err := b.setUpMirror(); err != nil {
		return err
	}
	fmt.Printf("fleet: 1 host, %d files (%d extra of %d bytes)\n\n", len(b.env.Manifest(tb, "alpha").Files), nFiles, size)
	if err := b.measurePushes(); err != nil {
		return err
	}
	fmt.Println()
	if err := b.measureFailovers(rounds, connectTimeout); err != nil {
		return err
	}
	if err := b.measureTick(); err != nil {
		return err
	}
	fmt.Printf("load average: %s\n", benchtb.LoadAvg())
	return nil
}

// bench is the state the phases share: the fleet with its primary and
// host, and the mirror with the host's account there and the pusher.
type bench struct {
	tb   *benchtb.TB
	ctx  context.Context
	env  *e2e.Env
	h    *e2e.Host
	size int

	ms     *sshdtest.Server
	mu     *sshdtest.Client // the host's account on the mirror
	pusher *sshdtest.Client
	kh     *mirror.KnownHosts
	dest   mirror.Dest
}

// setUp starts a one-host fleet of nFiles extra files and publishes it.
func setUp(tb *benchtb.TB, nFiles, size int) *bench {
	os.Setenv("NIX_CONFIG", fixture.NixConfig)
	f := fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}},
		Files: map[string]string{},
	}
	for i := 0; i < nFiles; i++ {
		f.Files[fmt.Sprintf("modules/m%03d.nix", i)] = fileContent(i, 0, size)
	}
	env := e2e.Start(tb, f)
	h := env.Host(tb, "alpha")
	env.Publish(tb)
	return &bench{tb: tb, ctx: context.Background(), env: env, h: h, size: size}
}

// setUpMirror starts the mirror: its own sshd and chroot root, alpha's
// key accepted for its user there, root allowed to push over SFTP.
func (b *bench) setUpMirror() error {
	b.ms = sshdtest.Start(b.tb, sshdtest.Options{})
	b.mu = b.ms.AddHost(b.tb, "alpha")
	if err := os.WriteFile(filepath.Join(b.ms.StateDir, "keys", b.mu.User), ssh.MarshalAuthorizedKey(b.h.SSH.Signer.PublicKey()), 0o644); err != nil {
		return err
	}
	b.pusher = b.ms.AllowPusher(b.tb)
	kh, err := mirror.LoadKnownHosts(b.ms.KnownHostsFile)
	if err != nil {
		return err
	}
	b.kh = kh
	b.dest, err = mirror.ParseDest("ssh://root@" + b.ms.Addr + b.ms.Root)
	return err
}

// push pushes the primary's root to the mirror and prints what it cost.
func (b *bench) push(what string) error {
	var c benchtb.Counter
	start := time.Now()
	res, err := mirror.Push(b.ctx, mirror.Options{Root: b.env.SSHD.Root, Signer: b.pusher.Signer, KnownHosts: b.kh, Dial: c.Dial}, []mirror.Dest{b.dest})
	if err != nil {
		return err
	}
	if res[0].Err != nil {
		return res[0].Err
	}
	fmt.Printf("push, %-18s %4d files uploaded (%s of content), %4d skipped: %s in, %s out on the wire, %s\n",
		what+":", res[0].Files, bytesize.Format(res[0].Bytes), res[0].Skipped,
		bytesize.Format(c.In.Load()), bytesize.Format(c.Out.Load()), time.Since(start).Round(time.Millisecond))
	return nil
}

// change changes one file of the flake (to its generation gen) and
// publishes the fleet.
func (b *bench) change(gen int) {
	b.env.Fleet.Files["modules/m000.nix"] = fileContent(0, gen, b.size)
	b.env.WriteFleet(b.tb, b.env.Fleet)
	b.env.Publish(b.tb)
}

func (b *bench) measurePushes() error {
	if err := b.push("full first push"); err != nil {
		return err
	}
	b.change(1)
	if err := b.push("one file changed"); err != nil {
		return err
	}
	return b.push("nothing changed")
}

// measureFailovers measures failover where the agent makes it:
// transport.DialAny over the primary then the mirror, as a tick does.
// It leaves the primary stopped.
func (b *bench) measureFailovers(rounds int, connectTimeout time.Duration) error {
	eps := []transport.Endpoint{
		{Addr: b.env.SSHD.Addr, User: b.h.SSH.User, HostKeys: []ssh.PublicKey{b.env.SSHD.HostKey}},
		{Addr: b.ms.Addr, User: b.mu.User, HostKeys: []ssh.PublicKey{b.ms.HostKey}},
	}
	o := transport.Options{Signer: b.h.SSH.Signer, ConnectTimeout: connectTimeout, Attempts: 4}
	b.env.SSHD.Stop()
	if err := b.measureFailover(o, rounds, "none (the mirror alone)", eps[1:]); err != nil {
		return err
	}
	if err := b.measureFailover(o, rounds, "primary stopped", eps); err != nil {
		return err
	}
	hung, err := hungServer(b.tb)
	if err != nil {
		return err
	}
	hungEps := append([]transport.Endpoint{{Addr: hung, User: b.h.SSH.User, HostKeys: eps[0].HostKeys}}, eps[1])
	return b.measureFailover(o, rounds, fmt.Sprintf("primary hung (connectTimeout %s)", connectTimeout), hungEps)
}

// measureFailover dials eps rounds times, wants each dial to reach the
// mirror, and prints the median time.
func (b *bench) measureFailover(o transport.Options, rounds int, what string, eps []transport.Endpoint) error {
	var ds []time.Duration
	for i := 0; i < rounds; i++ {
		start := time.Now()
		c, _, err := transport.DialAny(b.ctx, o, eps)
		d := time.Since(start)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		c.Close()
		if c.Addr() != b.ms.Addr {
			return fmt.Errorf("%s: reached %s, not the mirror", what, c.Addr())
		}
		ds = append(ds, d)
	}
	fmt.Printf("failover, %-40s median %s (%s)\n", what+":", benchtb.Median(ds).Round(100*time.Microsecond), benchtb.Rounds(ds))
	return nil
}

// measureTick measures the whole tick: the primary is down, the next
// publication is on the mirror; from the start of the tick to the new
// system applied.
func (b *bench) measureTick() error {
	cfg, err := b.agentConfig()
	if err != nil {
		return err
	}
	if out, err := agent.Run(b.ctx, cfg, agent.Options{Nix: &nix.Runner{}, AgentVersion: "bench"}); err != nil || out.Action != agent.ActionApplied {
		return fmt.Errorf("first tick: %s %v", out.Action, err)
	}
	b.change(2)
	if err := b.push("next publication"); err != nil {
		return err
	}
	b.env.SSHD.Stop()
	start := time.Now()
	out, err := agent.Run(b.ctx, cfg, agent.Options{Nix: &nix.Runner{}, AgentVersion: "bench"})
	if err != nil || out.Action != agent.ActionApplied || out.Report.Server != b.ms.Addr {
		return fmt.Errorf("tick with the primary stopped: %s %v", out.Action, err)
	}
	fmt.Printf("tick, primary stopped:   applied the next publication from the mirror in %s (%d objects fetched)\n", time.Since(start).Round(time.Millisecond), out.Fetched)
	return nil
}

// agentConfig restarts the primary and loads the host's agent
// configuration, the primary then the mirror as its servers, into this
// process's environment.
func (b *bench) agentConfig() (agent.Config, error) {
	b.env.SSHD.Restart(b.tb)
	b.h.Settings["server"], b.h.Settings["serverHostKey"] = "", ""
	b.h.Settings["serverOrder"] = "ordered"
	b.h.Settings["servers"] = []map[string]any{
		{"address": "127.0.0.1", "port": b.env.SSHD.Port, "hostKey": b.env.SSHD.KnownHostsLine},
		{"address": "127.0.0.1", "port": b.ms.Port, "hostKey": b.ms.KnownHostsLine, "user": b.mu.User},
	}
	for _, kv := range b.h.Environ()[len(os.Environ()):] {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	cfg := agent.Defaults()
	_, err := cfg.LoadFile(b.h.ConfigFile(b.tb))
	return cfg, err
}

// hungServer is a TCP server that accepts and never says a word: a primary
// whose sshd hangs (or a firewall that lets the handshake start).
func hungServer(tb *benchtb.TB) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	tb.Cleanup(func() {
		l.Close()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String(), nil
}
