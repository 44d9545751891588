// Package backoff computes retry delays: exponential growth from an initial
// delay up to a ceiling, optionally spread by full jitter so that hundreds of
// hosts that lost the server at the same moment do not come back together.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy is an exponential backoff.
type Policy struct {
	Initial time.Duration
	Max     time.Duration
}

// Delay is the wait before retry number n (n = 1 for the first retry):
// Initial·2^(n-1), capped at Max.
func (p Policy) Delay(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	d := p.Initial
	if d <= 0 {
		d = time.Second
	}
	for i := 1; i < n; i++ {
		if p.Max > 0 && d >= p.Max {
			break
		}
		d *= 2
	}
	if p.Max > 0 && d > p.Max {
		d = p.Max
	}
	return d
}

// Jittered is Delay(n) spread uniformly over [0, Delay] ("full jitter"):
// when a server comes back, hosts that lost it at the same moment spread
// over the whole window instead of half of it, which halves the peak of
// connections the server's sshd must take at once (MaxStartups) for the
// same mean wait. A retry may come at once; the next one waits longer.
func (p Policy) Jittered(n int, rnd *rand.Rand) time.Duration {
	d := p.Delay(n)
	if rnd != nil {
		return time.Duration(rnd.Int64N(int64(d) + 1))
	}
	return time.Duration(rand.Int64N(int64(d) + 1))
}
