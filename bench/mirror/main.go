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

	// The mirror: its own sshd and chroot root, alpha's key accepted for
	// its user there, root allowed to push over SFTP.
	ms := sshdtest.Start(tb, sshdtest.Options{})
	mu := ms.AddHost(tb, "alpha")
	if err := os.WriteFile(filepath.Join(ms.StateDir, "keys", mu.User), ssh.MarshalAuthorizedKey(h.SSH.Signer.PublicKey()), 0o644); err != nil {
		return err
	}
	pusher := ms.AllowPusher(tb)
	kh, err := mirror.LoadKnownHosts(ms.KnownHostsFile)
	if err != nil {
		return err
	}
	dest, err := mirror.ParseDest("ssh://root@" + ms.Addr + ms.Root)
	if err != nil {
		return err
	}
	ctx := context.Background()
	push := func(what string) error {
		var c benchtb.Counter
		start := time.Now()
		res, err := mirror.Push(ctx, mirror.Options{Root: env.SSHD.Root, Signer: pusher.Signer, KnownHosts: kh, Dial: c.Dial}, []mirror.Dest{dest})
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
	fmt.Printf("fleet: 1 host, %d files (%d extra of %d bytes)\n\n", len(env.Manifest(tb, "alpha").Files), nFiles, size)
	if err := push("full first push"); err != nil {
		return err
	}
	change := func(gen int) {
		env.Fleet.Files["modules/m000.nix"] = fileContent(0, gen, size)
		env.WriteFleet(tb, env.Fleet)
		env.Publish(tb)
	}
	change(1)
	if err := push("one file changed"); err != nil {
		return err
	}
	if err := push("nothing changed"); err != nil {
		return err
	}

	// Failover, measured where the agent makes it: transport.DialAny over
	// the primary then the mirror, as a tick does.
	eps := []transport.Endpoint{
		{Addr: env.SSHD.Addr, User: h.SSH.User, HostKeys: []ssh.PublicKey{env.SSHD.HostKey}},
		{Addr: ms.Addr, User: mu.User, HostKeys: []ssh.PublicKey{ms.HostKey}},
	}
	o := transport.Options{Signer: h.SSH.Signer, ConnectTimeout: connectTimeout, Attempts: 4}
	measure := func(what string, eps []transport.Endpoint) error {
		var ds []time.Duration
		for i := 0; i < rounds; i++ {
			start := time.Now()
			c, _, err := transport.DialAny(ctx, o, eps)
			d := time.Since(start)
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			c.Close()
			if c.Addr() != ms.Addr {
				return fmt.Errorf("%s: reached %s, not the mirror", what, c.Addr())
			}
			ds = append(ds, d)
		}
		fmt.Printf("failover, %-40s median %s (%s)\n", what+":", benchtb.Median(ds).Round(100*time.Microsecond), benchtb.Rounds(ds))
		return nil
	}
	fmt.Println()
	env.SSHD.Stop()
	if err := measure("none (the mirror alone)", eps[1:]); err != nil {
		return err
	}
	if err := measure("primary stopped", eps); err != nil {
		return err
	}
	hung, err := hungServer(tb)
	if err != nil {
		return err
	}
	hungEps := append([]transport.Endpoint{{Addr: hung, User: h.SSH.User, HostKeys: eps[0].HostKeys}}, eps[1])
	if err := measure(fmt.Sprintf("primary hung (connectTimeout %s)", connectTimeout), hungEps); err != nil {
		return err
	}

	// The whole tick: the primary is down, the next publication is on the
	// mirror; from the start of the tick to the new system applied.
	env.SSHD.Restart(tb)
	h.Settings["server"], h.Settings["serverHostKey"] = "", ""
	h.Settings["serverOrder"] = "ordered"
	h.Settings["servers"] = []map[string]any{
		{"address": "127.0.0.1", "port": env.SSHD.Port, "hostKey": env.SSHD.KnownHostsLine},
		{"address": "127.0.0.1", "port": ms.Port, "hostKey": ms.KnownHostsLine, "user": mu.User},
	}
	for _, kv := range h.Environ()[len(os.Environ()):] {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	cfg := agent.Defaults()
	if _, err := cfg.LoadFile(h.ConfigFile(tb)); err != nil {
		return err
	}
	if out, err := agent.Run(ctx, cfg, agent.Options{Nix: &nix.Runner{}, AgentVersion: "bench"}); err != nil || out.Action != agent.ActionApplied {
		return fmt.Errorf("first tick: %s %v", out.Action, err)
	}
	change(2)
	if err := push("next publication"); err != nil {
		return err
	}
	env.SSHD.Stop()
	start := time.Now()
	out, err := agent.Run(ctx, cfg, agent.Options{Nix: &nix.Runner{}, AgentVersion: "bench"})
	if err != nil || out.Action != agent.ActionApplied || out.Report.Server != ms.Addr {
		return fmt.Errorf("tick with the primary stopped: %s %v", out.Action, err)
	}
	fmt.Printf("tick, primary stopped:   applied the next publication from the mirror in %s (%d objects fetched)\n", time.Since(start).Round(time.Millisecond), out.Fetched)
	fmt.Printf("load average: %s\n", benchtb.LoadAvg())
	return nil
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
