package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

// TestStatusInterrupted: Ctrl-C while status reads the chroots exits 130,
// as documented for every command, not 1 (status failed).
func TestStatusInterrupted(t *testing.T) {
	s := statusRoot{t, filepath.Join(t.TempDir(), "chroot")}
	s.publish("web", "v1", statusSysA)
	s.report("web", "v1", "v1", manifest.ResultSuccess, statusSysA, "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errOut bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.RunContext(ctx, append([]string{"bento"}, statusArgs(s.root, "--no-eval")...))
	if code := exitCode(&errOut, err); code != 130 || !strings.Contains(errOut.String(), "status interrupted") {
		t.Errorf("exit %d, stderr %q; want 130, status interrupted", code, errOut.String())
	}
}
