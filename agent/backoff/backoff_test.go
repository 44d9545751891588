package backoff

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	p := Policy{Initial: time.Second, Max: 10 * time.Second}
	cases := []struct {
		n    int
		want time.Duration
	}{
		{0, time.Second}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second},
		{4, 8 * time.Second}, {5, 10 * time.Second}, {60, 10 * time.Second},
	}
	for _, tc := range cases {
		if got := p.Delay(tc.n); got != tc.want {
			t.Errorf("Delay(%d) = %s, want %s", tc.n, got, tc.want)
		}
	}
	if got := (Policy{}).Delay(3); got != 4*time.Second {
		t.Errorf("zero policy Delay(3) = %s, want 4s (1s initial, no ceiling)", got)
	}
}

func TestJitteredStaysInHalfToFull(t *testing.T) {
	p := Policy{Initial: time.Second, Max: time.Minute}
	rnd := rand.New(rand.NewPCG(1, 2))
	seen := map[time.Duration]bool{}
	for i := 0; i < 1000; i++ {
		d := p.Jittered(3, rnd)
		if d < 2*time.Second || d > 4*time.Second {
			t.Fatalf("Jittered(3) = %s, outside [2s, 4s]", d)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Errorf("Jittered gave only %d distinct delays in 1000 draws: hosts would retry in lockstep", len(seen))
	}
}
