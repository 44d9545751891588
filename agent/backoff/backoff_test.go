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

func TestJitteredSpreadsOverTheWholeWindow(t *testing.T) {
	p := Policy{Initial: time.Second, Max: time.Minute}
	rnd := rand.New(rand.NewPCG(1, 2))
	seen := map[time.Duration]bool{}
	low := 0
	for i := 0; i < 1000; i++ {
		d := p.Jittered(3, rnd)
		if d < 0 || d > 4*time.Second {
			t.Fatalf("Jittered(3) = %s, outside [0, 4s]", d)
		}
		seen[d] = true
		if d < time.Second {
			low++
		}
	}
	// Full jitter: a quarter of the draws fall in the first quarter of the
	// window (equal jitter would put none there).
	if low < 150 || low > 350 {
		t.Errorf("%d of 1000 draws below 1s, want about 250", low)
	}
	if len(seen) < 100 {
		t.Errorf("Jittered gave only %d distinct delays in 1000 draws: hosts would retry in lockstep", len(seen))
	}
}
