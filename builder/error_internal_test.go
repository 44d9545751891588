package builder

import (
	"errors"
	"fmt"
	"testing"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/nix"
)

// A host's error shows Nix's message with the context bento added around
// it, never the command line, and still unwraps to the *nix.Error.
func TestHostErrorMessage(t *testing.T) {
	ne := &nix.Error{Host: "alpha", Command: []string{"nix", "copy", "--to", "file:///c"}, Message: "error: cannot open", Err: errors.New("exit status 1")}
	tests := []struct {
		name       string
		err        *fleet.HostError
		msg, cause string
	}{
		{"nix error", hostError("alpha", "build", ne), "host alpha: build: error: cannot open", "build: error: cannot open"},
		{"prefix kept", hostError("alpha", "copy to file:///c", fmt.Errorf("signing: %w", brief(ne))), "host alpha: copy to file:///c: signing: error: cannot open", "copy to file:///c: signing: error: cannot open"},
		{"suffix kept", hostError("alpha", "build", fmt.Errorf("%w (build again)", brief(ne))), "host alpha: build: error: cannot open (build again)", "build: error: cannot open (build again)"},
		{"no nix", hostError("alpha", "keep result", errors.New("disk full")), "host alpha: keep result: disk full", "keep result: disk full"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.msg {
				t.Errorf("Error() = %q, want %q", got, tt.msg)
			}
			if got := (Result{Err: tt.err}).Reason(); got != tt.cause {
				t.Errorf("Reason() = %q, want %q", got, tt.cause)
			}
			var got *nix.Error
			if errors.As(tt.err, &got) != (tt.name != "no nix") {
				t.Errorf("errors.As(*nix.Error) = %v", got)
			}
		})
	}
}
