package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

// A manifest over the size limit is refused, reported in status.json, and
// not read again on every tick (only when its retry is due).
func TestOversizedManifestIsRefusedAndReported(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"format": 1, "host": "alpha", "version": "huge0000huge0000", "expectedToplevel": %q, "files": [`, v1.Built)
	b.WriteString(strings.Repeat(" ", manifest.MaxSize))
	b.WriteString("]}")
	p := filepath.Join(e.Chroot("alpha"), manifest.ManifestFile)
	if err := os.WriteFile(p+".tmp", b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}

	res := h.Run(t)
	if res.ExitCode != 1 || !strings.Contains(res.Output(), "over the") {
		t.Errorf("exit %d; the output must say the manifest is over the limit", res.ExitCode)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultFailure || st.SeenVersion != "huge0000huge0000" || !strings.Contains(st.Error, "byte limit") ||
		st.AppliedVersion != v1.Version || h.ProfileTarget(t) != v1.Built {
		t.Errorf("status after an oversized manifest: %+v", st)
	}
	logs := len(h.Logs(t))
	res = h.Run(t)
	if res.ExitCode != 1 || !strings.Contains(res.Output(), "next retry after") || len(h.Logs(t)) != logs {
		t.Errorf("second tick: exit %d, logs %d → %d; want the refusal waiting for its retry", res.ExitCode, logs, len(h.Logs(t)))
	}
}
