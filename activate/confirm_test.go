package activate_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/activate"
)

func TestConfirm(t *testing.T) {
	errDown := errors.New("dial tcp 127.0.0.1:22: connection refused")
	tests := []struct {
		name string
		// failures is how many calls fail before the probe succeeds; -1 never.
		failures int
		hang     bool
		timeout  time.Duration
		// wantErr is "" for success.
		wantErr      error
		wantContains string
		minCalls     int
	}{
		{name: "reachable at once", failures: 0, timeout: 5 * time.Second, minCalls: 1},
		{name: "short network restart", failures: 3, timeout: 3 * time.Second, minCalls: 4},
		{name: "never reachable", failures: -1, timeout: 300 * time.Millisecond, wantErr: activate.ErrUnconfirmed, wantContains: "connection refused", minCalls: 2},
		{name: "probe hangs", hang: true, timeout: 200 * time.Millisecond, wantErr: activate.ErrUnconfirmed, minCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			probe := func(ctx context.Context) error {
				calls++
				if tt.hang {
					<-ctx.Done()
					return ctx.Err()
				}
				if tt.failures < 0 || calls <= tt.failures {
					return errDown
				}
				return nil
			}
			err := activate.Confirm(context.Background(), tt.timeout, probe)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("confirm: %v", err)
				}
				if calls != tt.failures+1 {
					t.Errorf("probe called %d times, want %d (stop at the first success)", calls, tt.failures+1)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantContains) {
				t.Errorf("error %q does not quote the last failure %q", err, tt.wantContains)
			}
			if calls < tt.minCalls {
				t.Errorf("probe called %d times, want at least %d (retries)", calls, tt.minCalls)
			}
		})
	}
}

// The agent being stopped is not the server being unreachable: the error
// must let the caller tell the two apart and not roll back.
func TestConfirmCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := activate.Confirm(ctx, time.Hour, func(context.Context) error {
		calls++
		if calls == 2 {
			cancel()
		}
		return errors.New("unreachable")
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, activate.ErrUnconfirmed) {
		t.Fatalf("error %v, want context.Canceled and not ErrUnconfirmed", err)
	}
}

func TestConfirmBadInput(t *testing.T) {
	ok := func(context.Context) error { return nil }
	if err := activate.Confirm(context.Background(), 0, ok); err == nil || !strings.Contains(err.Error(), "must be positive") {
		t.Errorf("zero timeout: %v", err)
	}
	if err := activate.Confirm(context.Background(), time.Second, nil); err == nil {
		t.Error("nil probe accepted")
	}
}
