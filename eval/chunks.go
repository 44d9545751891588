package eval

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// PriorPerHost is what one host is assumed to cost in a nix eval process
// before any chunk has been measured. It is on the high side of a NixOS
// evaluation (the first host of a process loads nixpkgs, a few hundred MB;
// the next ones share most of it), so that the first chunks cannot exhaust
// a small server; the first measured chunk replaces it.
const PriorPerHost int64 = 512 << 20

// DefaultMemoryShare is the part of the machine's available memory that
// discovery's nix processes may use together when no budget is given: the
// rest is left to whatever else runs (builds, sshd, the publisher).
const DefaultMemoryShare = 0.75

// fallbackBudget is the budget when /proc/meminfo cannot be read.
const fallbackBudget int64 = 4 << 30

// Chunker hands out the hosts to evaluate, one chunk per call of Next,
// sized so that jobs nix processes running at once stay within a memory
// budget: fewer, larger processes are faster (each one loads the flake
// and nixpkgs again), larger processes hold more memory. The first jobs
// chunks are sized from PriorPerHost; each chunk's measured peak memory
// (Observe) then gives the per-host cost that sizes the rest, never more
// than an even share of what is left per job so that workers end together.
//
// A Chunker is safe for concurrent use by the workers that evaluate.
type Chunker struct {
	mu     sync.Mutex
	names  []string
	next   int
	jobs   int
	budget int64
	fixed  int
	// perHost is the largest measured bytes per host, 0 before the first
	// measurement.
	perHost int64
	// even is the even share per job of the hosts left when the first
	// measurement came in.
	even    int
	stopped bool
}

// NewChunker splits names for jobs workers. With fixed > 0 every chunk has
// fixed hosts (--eval-chunk) and the budget is not used; otherwise budget
// bytes (at least one host's worth per chunk) bound jobs processes together.
func NewChunker(names []string, jobs int, budget int64, fixed int) *Chunker {
	return &Chunker{names: names, jobs: max(jobs, 1), budget: budget, fixed: fixed}
}

// Next returns the next chunk, nil when every host has been handed out or
// Stop was called.
func (c *Chunker) Next() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	left := len(c.names) - c.next
	if left <= 0 || c.stopped {
		return nil
	}
	size := c.sizeLocked(left)
	chunk := c.names[c.next : c.next+size]
	c.next += size
	return chunk
}

func (c *Chunker) sizeLocked(left int) int {
	if c.fixed > 0 {
		return min(c.fixed, left)
	}
	perProc := c.budget / int64(c.jobs)
	var size int
	if c.perHost == 0 {
		// The first round: jobs chunks start together, each at most an
		// even share of the whole fleet.
		even := (len(c.names) + c.jobs - 1) / c.jobs
		size = int(min(int64(even), perProc/PriorPerHost))
	} else {
		size = int(min(int64(c.even), perProc/c.perHost))
	}
	return max(1, min(size, left))
}

// Observe records that a chunk of hosts peaked at maxRSS bytes. Unknown
// (0) measurements are ignored.
func (c *Chunker) Observe(hosts int, maxRSS int64) {
	if hosts <= 0 || maxRSS <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	per := (maxRSS + int64(hosts) - 1) / int64(hosts)
	if c.perHost == 0 {
		left := len(c.names) - c.next
		c.even = max(1, (left+c.jobs-1)/c.jobs)
	}
	c.perHost = max(c.perHost, per)
}

// Stop makes Next return nil from now on.
func (c *Chunker) Stop() {
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
}

// DefaultBudget is the memory budget of discovery when none is given:
// DefaultMemoryShare of MemAvailable in meminfo (the contents of
// /proc/meminfo), or 4 GiB when that cannot be read.
func DefaultBudget(meminfo []byte) int64 {
	avail, ok := memAvailable(meminfo)
	if !ok {
		return fallbackBudget
	}
	return int64(float64(avail) * DefaultMemoryShare)
}

// SystemBudget is DefaultBudget of this machine's /proc/meminfo.
func SystemBudget() int64 {
	data, _ := os.ReadFile("/proc/meminfo")
	return DefaultBudget(data)
}

func memAvailable(meminfo []byte) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, false
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb <= 0 {
			return 0, false
		}
		return kb << 10, true
	}
	return 0, false
}

// ParseSize reads a memory size: bytes, or a number with a K, M, G or T
// suffix (powers of 1024; an optional trailing B or iB is accepted).
func ParseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || v*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("memory size %q: want a positive number of bytes or one with a K, M, G or T suffix (8G, 512M)", s)
	}
	return int64(v * float64(mult)), nil
}
