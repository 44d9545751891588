// Package backoff computes retry delays: exponential growth from an initial
// delay up to a ceiling, optionally spread by jitter so that hundreds of
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

// Jittered is Delay(n) spread uniformly over [Delay/2, Delay] ("equal
// jitter"): never shorter than half the nominal wait, never longer than it.
func (p Policy) Jittered(n int, rnd *rand.Rand) time.Duration {
	d := p.Delay(n)
	half := d / 2
	if half <= 0 {
		return d
	}
	var j int64
	if rnd != nil {
		j = rnd.Int64N(int64(half) + 1)
	} else {
		j = rand.Int64N(int64(half) + 1)
	}
	return half + time.Duration(j)
}
