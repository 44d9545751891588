// Command burst releases many agent ticks at the same moment against one
// real sshd on loopback, as happens when a server comes back after an
// outage and every host's timer has fired: how many ticks get through on
// their first connection, how many only after retries (full jitter), how
// many fail, and how long they take (p50, p99).
//
// Each tick is a real agent.Run with its own state directory: it connects,
// authenticates, opens SFTP and reads the manifest's head. No manifest is
// published, so no tick builds or uploads a report: the connection burst is
// what sshd's MaxStartups governs, and it is the same for every tick. Rounds
// compare OpenSSH's default MaxStartups (the baseline), the server module's
// default, and the module's value sized for the host count.
//
//	go run ./bench/burst -ticks 1000
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/internal/sshdtest"
)

func main() {
	ticks := flag.Int("ticks", 1000, "agent ticks released at once")
	users := flag.Int("users", 50, "SFTP users the ticks are spread over")
	rounds := flag.String("max-startups", "10:30:100,100:30:1000,sized", "MaxStartups of each round (comma-separated; \"sized\" is the module's rule for -ticks hosts)")
	flag.Parse()
	os.Exit(benchtb.Run("bench/burst", io.Discard, func(tb *benchtb.TB) error {
		fmt.Printf("%d agent ticks released at once against one sshd (OpenSSH, loopback), %d SFTP users\n\n", *ticks, *users)
		fmt.Printf("%-16s %10s %13s %8s %9s %9s %9s\n", "MaxStartups", "first try", "after retry", "failed", "p50", "p99", "all done")
		var results []roundResult
		for _, ms := range strings.Split(*rounds, ",") {
			if ms == "sized" {
				ms = Sized(*ticks)
			}
			r, err := round(tb, ms, *ticks, *users)
			if err != nil {
				return err
			}
			results = append(results, r)
		}
		if len(results) > 1 {
			b, s := results[0], results[len(results)-1]
			// One line for bench/table: figure, anchor, bento, goal.
			fmt.Printf("table: %d ticks at once on one sshd\tMaxStartups %s: %d first try, %d failed\t%s: %d first try, %d after retries, %d failed, all done in %s, p99 %s\t100%% within 60s\n",
				*ticks, b.maxStartups, b.first, b.failed, s.maxStartups, s.first, s.retried, s.failed, s.all.Round(100*time.Millisecond), s.p99)
		}
		fmt.Println("\n10:30:100 is OpenSSH's default; 100:30:1000 the server module's default before it was sized by host count.")
		return nil
	}))
}

// Sized is the server module's MaxStartups for n hosts (modules/server.nix
// computes the same): every host may be mid-handshake at once after an
// outage, so random early drop starts only above n, and refusals only at 2n.
func Sized(n int) string {
	start := max(100, n)
	return fmt.Sprintf("%d:30:%d", start, 2*start)
}

// roundResult is what one round measured.
type roundResult struct {
	maxStartups            string
	first, retried, failed int
	all, p99               time.Duration
}

func round(tb *benchtb.TB, maxStartups string, nTicks, nUsers int) (roundResult, error) {
	srv := sshdtest.Start(tb, sshdtest.Options{MaxStartups: maxStartups})
	var clients []*sshdtest.Client
	for i := 0; i < nUsers; i++ {
		clients = append(clients, srv.AddHost(tb, fmt.Sprintf("b%03d", i)))
	}
	type result struct {
		dials int32
		err   error
		dur   time.Duration
	}
	results := make([]result, nTicks)
	release := make(chan struct{})
	var ready, wg sync.WaitGroup
	for i := 0; i < nTicks; i++ {
		c := clients[i%nUsers]
		cfg := agent.Defaults()
		cfg.Host, cfg.User, cfg.Server, cfg.Port = c.Host, c.User, "127.0.0.1", srv.Port
		cfg.IdentityFile, cfg.ServerHostKey = c.KeyFile, srv.KnownHostsLine
		cfg.StateDir = filepath.Join(tb.TempDir(), "state")
		ready.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var dials atomic.Int32
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}
			ready.Done()
			<-release
			start := time.Now()
			out, err := agent.Run(context.Background(), cfg, agent.Options{Dial: dial, AgentVersion: "bench"})
			if err == nil && out.Action != agent.ActionUnpublished {
				err = fmt.Errorf("tick did %s", out.Action)
			}
			results[i] = result{dials: dials.Load(), err: err, dur: time.Since(start)}
		}()
	}
	ready.Wait()
	start := time.Now()
	close(release)
	wg.Wait()
	all := time.Since(start)

	var first, retried, failed int
	var durs []time.Duration
	var firstErr error
	for _, r := range results {
		switch {
		case r.err != nil:
			failed++
			if firstErr == nil {
				firstErr = r.err
			}
		case r.dials <= 1:
			first++
		default:
			retried++
		}
		durs = append(durs, r.dur)
	}
	sort.Slice(durs, func(a, b int) bool { return durs[a] < durs[b] })
	fmt.Printf("%-16s %10d %13d %8d %9s %9s %9s\n", maxStartups, first, retried, failed,
		pct(durs, 50), pct(durs, 99), all.Round(10*time.Millisecond))
	if firstErr != nil {
		fmt.Printf("  first failure: %v\n", firstErr)
	}
	srv.Stop()
	return roundResult{maxStartups: maxStartups, first: first, retried: retried, failed: failed, all: all, p99: pct(durs, 99)}, nil
}

func pct(d []time.Duration, p int) time.Duration {
	i := (len(d)*p+99)/100 - 1
	i = max(0, min(i, len(d)-1))
	return d[i].Round(10 * time.Millisecond)
}
