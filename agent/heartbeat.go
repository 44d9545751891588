package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"time"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/statefile"
	"github.com/bento-nix/bento/manifest"
)

// reportKey fingerprints a report but for its times (also the health
// checks' time): two heartbeats with
// the same key say the same thing at different moments.
func reportKey(r manifest.Report) string {
	r.StartedAt, r.FinishedAt = time.Time{}, time.Time{}
	if r.Health != nil {
		h := *r.Health
		h.CheckedAt = time.Time{}
		r.Health = &h
	}
	data, err := json.Marshal(r)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// delivered is the key of the report last written to the server ("" when
// unknown: the next report is then uploaded whole).
func (t *tick) delivered() string {
	data, err := statefile.Read(filepath.Join(t.cfg.StateDir, deliveredFile), 128)
	if err != nil || len(data) != sha256.Size*2 {
		return ""
	}
	return string(data)
}

// setDelivered records what the server now holds. Losing it (a crash, a
// full disk) costs one whole upload next time, nothing else.
func (t *tick) setDelivered(key string) {
	if key == "" {
		return
	}
	atomicfile.WriteFile(filepath.Join(t.cfg.StateDir, deliveredFile), []byte(key), 0o644)
}
