package activate

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// ErrUnconfirmed is returned (wrapped) by Confirm when the probe never
// succeeded within the timeout: the trigger for a rollback.
var ErrUnconfirmed = errors.New("server not reachable after the switch")

// Confirm checks, after a switch, that the machine can still reach its
// server: it calls probe until one call succeeds or timeout passes. A
// failed probe is retried with growing, jittered pauses, so a network that
// restarts for a few seconds during activation is not a loss; a probe
// that hangs is cut off at the deadline.
//
// The error wraps ErrUnconfirmed (roll back) when the deadline passed, or
// ctx's error when the caller cancelled (the agent is stopping: that says
// nothing about the new system).
func Confirm(ctx context.Context, timeout time.Duration, probe func(context.Context) error) error {
	if timeout <= 0 {
		return fmt.Errorf("confirm: the confirmation timeout must be positive, not %s", timeout)
	}
	if probe == nil {
		return errors.New("confirm: no probe given")
	}
	deadline, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// Pauses scale with the timeout so a short timeout still gets several
	// tries and a long one does not hammer the server.
	pause := max(time.Millisecond, min(500*time.Millisecond, timeout/20))
	maxPause := max(pause, min(10*time.Second, timeout/4))
	var (
		attempts int
		lastErr  error
	)
	for {
		attempts++
		lastErr = probe(deadline)
		if lastErr == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("confirm: %w (last probe: %v)", ctx.Err(), lastErr)
		}
		wait := pause/2 + rand.N(pause)
		pause = min(2*pause, maxPause)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
			continue
		case <-deadline.Done():
			t.Stop()
		}
		if ctx.Err() != nil {
			return fmt.Errorf("confirm: %w (last probe: %v)", ctx.Err(), lastErr)
		}
		return fmt.Errorf("confirm: %w within %s (%d attempts; last: %v)", ErrUnconfirmed, timeout, attempts, lastErr)
	}
}
