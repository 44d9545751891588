// Command agent benchmarks what one client tick costs on the wire and in
// time, against a real sshd on loopback: an idle tick (nothing published
// since the last one) and an update in which one file of the flake
// changed. Bytes are counted on the agent's TCP connections (a wrapping
// net.Conn), both directions, everything included (SSH handshake, SFTP,
// the report upload).
//
// The baseline is measured in the same run: the original bento's client,
// OpenSSH's sftp in batch mode, through a counting TCP proxy, doing what
// its update.sh did: "ls -l last_change_date" on every poll, and fetching
// the whole config directory on a change. The original's author measured
// about 5.1 kB in and 5.1 kB out per idle poll.
//
//	go run ./bench/agent -files 100 -size 2048 -idle 20 -updates 5
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

func main() {
	files := flag.Int("files", 100, "extra files in the flake")
	size := flag.Int("size", 2048, "bytes of each extra file")
	idle := flag.Int("idle", 20, "idle ticks measured")
	updates := flag.Int("updates", 5, "one-file updates measured")
	flag.Parse()
	os.Exit(benchtb.Run("bench/agent", io.Discard, func(tb *benchtb.TB) error {
		return run(tb, *files, *size, *idle, *updates)
	}))
}

type sample struct {
	in, out int64
	dur     time.Duration
}

func run(tb *benchtb.TB, nFiles, size, nIdle, nUpdates int) error {
	b, err := setUp(tb, nFiles, size)
	if err != nil {
		return err
	}
	if err := b.measureBento(nIdle, nUpdates); err != nil {
		return err
	}
	if err := b.measureOriginal(nIdle, nUpdates); err != nil {
		return err
	}
	b.report()
	return nil
}

// bench is the state the phases share: the fleet and its host, the
// agent's configuration, and the samples each phase measured.
type bench struct {
	tb   *benchtb.TB
	ctx  context.Context
	env  *e2e.Env
	h    *e2e.Host
	cfg  agent.Config
	size int

	first                sample   // bento's first tick
	idles, hands, ups    []sample // bento's idle ticks, handshakes alone, one-file updates
	origIdle, origUpdate []sample // the original client's polls and downloads
}

// setUp starts a one-host fleet of nFiles extra files, publishes it, and
// loads the host's agent configuration into this process's environment.
func setUp(tb *benchtb.TB, nFiles, size int) (*bench, error) {
	os.Setenv("NIX_CONFIG", fixture.NixConfig)
	f := fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}},
		Files: map[string]string{},
	}
	for i := 0; i < nFiles; i++ {
		f.Files[fmt.Sprintf("modules/m%03d.nix", i)] = fileContent(i, 0, size)
	}
	env := e2e.Start(tb, f)
	pub := env.Publish(tb)["alpha"]
	h := env.Host(tb, "alpha")
	for _, kv := range h.Environ()[len(os.Environ()):] {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	cfg := agent.Defaults()
	if _, err := cfg.LoadFile(h.ConfigFile(tb)); err != nil {
		return nil, err
	}
	fmt.Printf("fleet: 1 host, %d files (%d extra of %d bytes), version %s\n\n", len(env.Manifest(tb, "alpha").Files), nFiles, size, pub.Version)
	return &bench{tb: tb, ctx: context.Background(), env: env, h: h, cfg: cfg, size: size}, nil
}

// tick runs one agent tick, counting its bytes, and wants it to do want.
func (b *bench) tick(want string) (sample, error) {
	var c benchtb.Counter
	start := time.Now()
	out, err := agent.Run(b.ctx, b.cfg, agent.Options{Nix: &nix.Runner{}, Dial: c.Dial, AgentVersion: "bench"})
	s := sample{in: c.In.Load(), out: c.Out.Load(), dur: time.Since(start)}
	if err != nil {
		return s, err
	}
	if out.Action != want {
		return s, fmt.Errorf("tick did %s, want %s", out.Action, want)
	}
	return s, nil
}

// measureBento measures bento's first tick, its idle ticks, the
// handshake alone and one-file updates.
func (b *bench) measureBento(nIdle, nUpdates int) error {
	first, err := b.tick(agent.ActionApplied)
	if err != nil {
		return fmt.Errorf("first tick: %w", err)
	}
	b.first = first
	for i := 0; i < nIdle; i++ {
		s, err := b.tick(agent.ActionUpToDate)
		if err != nil {
			return fmt.Errorf("idle tick: %w", err)
		}
		b.idles = append(b.idles, s)
	}
	if err := b.measureHandshakes(nIdle); err != nil {
		return err
	}
	for i := 1; i <= nUpdates; i++ {
		b.env.Fleet.Files["modules/m000.nix"] = fileContent(0, i, b.size)
		b.env.WriteFleet(b.tb, b.env.Fleet)
		b.env.Publish(b.tb)
		s, err := b.tick(agent.ActionApplied)
		if err != nil {
			return fmt.Errorf("update tick: %w", err)
		}
		b.ups = append(b.ups, s)
	}
	return nil
}

// measureHandshakes measures the handshake alone (TCP, SSH, SFTP session,
// then closed), to split an idle tick's cost between connecting and the
// SFTP work.
func (b *bench) measureHandshakes(n int) error {
	keys, err := transport.ParseHostKeys(b.cfg.ServerHostKey)
	if err != nil {
		return err
	}
	signer, err := transport.LoadSigner(b.cfg.IdentityFile)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		var c benchtb.Counter
		o := transport.Options{
			Addr: net.JoinHostPort(b.cfg.Server, strconv.Itoa(b.cfg.Port)), User: b.cfg.User,
			HostKeys: keys, Signer: signer, Dial: c.Dial,
		}
		start := time.Now()
		conn, err := transport.Dial(b.ctx, o)
		if err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
		conn.Close()
		b.hands = append(b.hands, sample{in: c.In.Load(), out: c.Out.Load(), dur: time.Since(start)})
	}
	return nil
}

// origTree is where, in the chroot, the original's plain tree is laid out.
const origTree = "original-config"

// measureOriginal measures the original client, through a counting proxy:
// idle polls, then downloads of the whole tree.
func (b *bench) measureOriginal(nIdle, nUpdates int) error {
	if err := b.layOutOriginalTree(); err != nil {
		return err
	}
	for i := 0; i < nIdle; i++ {
		s, err := originalSFTP(b.tb, b.env, b.h, "ls -l last_change_date\n")
		if err != nil {
			return fmt.Errorf("original idle poll: %w", err)
		}
		b.origIdle = append(b.origIdle, s)
	}
	for i := 0; i < nUpdates; i++ {
		dst := b.tb.TempDir()
		s, err := originalSFTP(b.tb, b.env, b.h, fmt.Sprintf("ls -l last_change_date\nget -R %s %s\n", origTree, dst))
		if err != nil {
			return fmt.Errorf("original download: %w", err)
		}
		b.origUpdate = append(b.origUpdate, s)
	}
	return nil
}

// layOutOriginalTree writes the original's last_change_date and its
// tree into the host's chroot.
func (b *bench) layOutOriginalTree() error {
	chroot := b.env.Chroot("alpha")
	if err := os.WriteFile(filepath.Join(chroot, "last_change_date"), []byte(time.Now().String()+"\n"), 0o644); err != nil {
		return err
	}
	// The original served the flake as a plain directory tree: lay the
	// published files out as one (from this chroot's objects) for it.
	m := b.env.Manifest(b.tb, "alpha")
	for _, f := range m.Files {
		data, err := os.ReadFile(filepath.Join(chroot, filepath.FromSlash(m.RemotePath(f))))
		if err != nil {
			return err
		}
		dst := filepath.Join(chroot, origTree, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) report() {
	bi, bu, oi, ou := median(b.idles), median(b.ups), median(b.origIdle), median(b.origUpdate)
	fmt.Printf("%-38s %10s %10s %10s\n", "", "bytes in", "bytes out", "wall time")
	row := func(name string, s sample) {
		fmt.Printf("%-38s %10d %10d %10s\n", name, s.in, s.out, s.dur.Round(100*time.Microsecond))
	}
	row("bento first tick (whole tree)", b.first)
	row(fmt.Sprintf("bento idle tick (median of %d)", len(b.idles)), bi)
	hs := median(b.hands)
	row("  of which handshake (SSH + SFTP init)", hs)
	row("  of which SFTP (head read + heartbeat)", sample{in: bi.in - hs.in, out: bi.out - hs.out, dur: bi.dur - hs.dur})
	row("original idle poll (sftp ls -l)", oi)
	row("original idle poll (author's figure)", sample{in: 5100, out: 5100})
	row(fmt.Sprintf("bento one-file update (median of %d)", len(b.ups)), bu)
	row("original update (sftp get -R of the tree)", ou)
	fmt.Println()
	fmt.Printf("idle tick, bento / original measured: in %.2fx, out %.2fx, both %.2fx, time %.2fx\n", ratio(bi.in, oi.in), ratio(bi.out, oi.out), ratio(bi.in+bi.out, oi.in+oi.out), ratio(int64(bi.dur), int64(oi.dur)))
	fmt.Printf("idle tick, bento / original 5.1 kB:   in %.2fx, out %.2fx\n", ratio(bi.in, 5100), ratio(bi.out, 5100))
	fmt.Printf("one-file update, bento / original:    in %.2fx, out %.2fx (bento's time includes nix build and switch)\n", ratio(bu.in, ou.in), ratio(bu.out, ou.out))
	fmt.Printf("table: idle tick on the wire\tthe original's sftp poll %d B + %d B\t%d B + %d B = %.2fx\t<= 0.6x\n",
		oi.in, oi.out, bi.in, bi.out, ratio(bi.in+bi.out, oi.in+oi.out))
	fmt.Println("bytes are TCP payload in each direction (headers not counted, for both sides alike);")
	fmt.Println("bento's idle tick includes its heartbeat (status.json's mtime moved; the whole report when it changed);")
	fmt.Println("its update includes the report and the gzipped build log.")
}

// fileContent is size bytes that differ with i and rev but keep their length.
func fileContent(i, rev, size int) string {
	head := fmt.Sprintf("# module %03d revision %06d\n{ }\n", i, rev)
	if len(head) >= size {
		return head
	}
	return head + "#" + strings.Repeat("x", size-len(head)-2) + "\n"
}

// originalSFTP runs OpenSSH's sftp in batch mode with the host's key, as
// the original update.sh did, through a proxy that counts bytes.
func originalSFTP(tb *benchtb.TB, env *e2e.Env, h *e2e.Host, batch string) (sample, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return sample{}, err
	}
	defer ln.Close()
	var in, out atomic.Int64
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", env.SSHD.Addr)
			if err != nil {
				c.Close()
				return
			}
			wg.Add(2)
			go func() { defer wg.Done(); n, _ := io.Copy(s, c); out.Add(n); s.(*net.TCPConn).CloseWrite() }()
			go func() { defer wg.Done(); n, _ := io.Copy(c, s); in.Add(n); c.(*net.TCPConn).CloseWrite() }()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	known := filepath.Join(tb.TempDir(), "known_hosts")
	line := strings.Replace(env.SSHD.KnownHostsLine, "]:"+strconv.Itoa(env.SSHD.Port), "]:"+strconv.Itoa(port), 1)
	if err := os.WriteFile(known, []byte(line+"\n"), 0o644); err != nil {
		return sample{}, err
	}
	cmd := exec.Command("sftp", "-q", "-b", "-", "-i", h.SSH.KeyFile, "-P", strconv.Itoa(port),
		"-o", "UserKnownHostsFile="+known, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		h.SSH.User+"@127.0.0.1")
	cmd.Stdin = strings.NewReader(batch)
	start := time.Now()
	o, err := cmd.CombinedOutput()
	dur := time.Since(start)
	if err != nil {
		return sample{}, fmt.Errorf("sftp: %v: %s", err, o)
	}
	wg.Wait()
	return sample{in: in.Load(), out: out.Load(), dur: dur}, nil
}

func median(s []sample) sample {
	if len(s) == 0 {
		return sample{}
	}
	ins, outs, durs := make([]int64, len(s)), make([]int64, len(s)), make([]int64, len(s))
	for i, x := range s {
		ins[i], outs[i], durs[i] = x.in, x.out, int64(x.dur)
	}
	med := func(v []int64) int64 {
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
		return v[len(v)/2]
	}
	return sample{in: med(ins), out: med(outs), dur: time.Duration(med(durs))}
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
