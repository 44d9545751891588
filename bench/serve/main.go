// Command serve benchmarks bento serve over a generated chroot root of
// 1,000 hosts (by default) in a mix of states: for the fleet page, its
// live fragment, /api/status and /metrics, the server's time per request
// (the handler alone, from the snapshot in memory, as every request is
// served; the chroots are read once per change, by the one watch, and
// that collection is timed too) and the weight of the answer.
//
//	go run ./bench/serve [-hosts 1000] [-requests 50]
//
// Goals (issue 19): ≤ 50 ms per request and ≤ 200 KB for the fleet page
// over 1000 hosts. Each time is the median of -requests requests after
// one warm-up; "cpu" is the process's CPU time per rendering request,
// which a machine loaded by other work does not inflate.
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/serve"
	"github.com/bento-nix/bento/status"
)

func main() {
	hosts := flag.Int("hosts", 1000, "hosts in the chroot root")
	requests := flag.Int("requests", 50, "requests per URL (the median is printed)")
	flag.Parse()
	if err := run(*hosts, *requests); err != nil {
		fmt.Fprintln(os.Stderr, "bench/serve:", err)
		os.Exit(1)
	}
}

func run(n, requests int) error {
	tmp, err := os.MkdirTemp("", "bento-bench-serve-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "chroot")
	if _, err := benchtb.ChrootFleet(root, n, 30, time.Now(), true); err != nil {
		return err
	}
	opts := status.Options{Root: root, Sort: "state"}
	var collects []time.Duration
	for range 5 {
		opts.Now = time.Now()
		start := time.Now()
		if _, err := status.Collect(context.Background(), opts); err != nil {
			return err
		}
		collects = append(collects, time.Since(start))
	}

	s := serve.New(serve.Options{Status: opts, Every: time.Hour, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	h := s.Handler()

	fmt.Printf("bento serve over %d hosts (%d CPUs, load %s)\n", n, runtime.NumCPU(), benchtb.LoadAvg())
	fmt.Printf("  reading the chroots (once per change, shared by every client): %s median of 5\n", benchtb.Median(collects).Round(time.Microsecond))
	fmt.Printf("  %-24s %12s %10s %10s %12s %10s %10s\n", "request", "rendered", "slowest", "cpu", "from cache", "bytes", "gzipped")
	for _, url := range []string{"/", "/live/fleet", "/?state=failing", "/host/host-0002", "/api/status", "/metrics"} {
		// A query of its own makes each request render (the first after a
		// change, for every view); the same URL again comes from the cache.
		cpu0 := cpuTime()
		fresh, _, err := measure(h, url, true, requests)
		if err != nil {
			return err
		}
		// The process's CPU time per rendering request (GC included): what a
		// loaded machine's wall times hide.
		cpu := (cpuTime() - cpu0) / time.Duration(requests+1)
		cached, sizes, err := measure(h, url, false, requests)
		if err != nil {
			return err
		}
		fmt.Printf("  %-24s %12s %10s %10s %12s %10d %10d\n", "GET "+url, benchtb.Median(fresh).Round(time.Microsecond), slowest(fresh).Round(time.Microsecond),
			cpu.Round(time.Microsecond), benchtb.Median(cached).Round(time.Microsecond), sizes[0], sizes[1])
	}
	fmt.Println("  goals: ≤ 50 ms per request, ≤ 200 KB (204800 bytes) for the fleet page (bytes: uncompressed; gzipped: what a browser downloads)")
	return nil
}

// measure requests url requests times (after one warm-up), each with a
// query of its own when fresh; it returns the handler's times and the
// answer's size plain and gzipped.
func measure(h http.Handler, url string, fresh bool, requests int) ([]time.Duration, [2]int, error) {
	var times []time.Duration
	var sizes [2]int
	for i := range requests + 1 {
		u := url
		if fresh {
			sep := "?"
			if strings.Contains(u, "?") {
				sep = "&"
			}
			u += fmt.Sprintf("%sbench=%d", sep, i)
		}
		req := httptest.NewRequest(http.MethodGet, u, nil)
		rec := httptest.NewRecorder()
		start := time.Now()
		h.ServeHTTP(rec, req)
		d := time.Since(start)
		if rec.Code != http.StatusOK {
			return nil, sizes, fmt.Errorf("GET %s: %d %s", u, rec.Code, rec.Body.String())
		}
		if i == 0 {
			// The first waits for the first collection.
			sizes = [2]int{rec.Body.Len(), gzipped(rec.Body.Bytes())}
			continue
		}
		times = append(times, d)
	}
	return times, sizes, nil
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func slowest(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

func gzipped(b []byte) int {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Len()
}
