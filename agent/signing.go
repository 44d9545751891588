package agent

import (
	"fmt"
	"time"

	"github.com/bento-nix/bento/internal/timespan"
	"github.com/bento-nix/bento/manifest"
)

// maxRotationKeys bounds the keys a host pins through rotation: each
// announcement adds one, the oldest go first.
const maxRotationKeys = 4

// pinnedKeys are the keys a manifest may be signed by: the configured
// ones and those announced by manifests this host accepted (rotation).
// None: nothing is verified.
func pinnedKeys(cfg []manifest.PublicationKey, st State) []manifest.PublicationKey {
	if len(cfg) == 0 {
		return nil
	}
	keys := append([]manifest.PublicationKey(nil), cfg...)
	for _, s := range st.RotationKeys {
		if k, err := manifest.ParsePublicationKey(s); err == nil {
			keys = append(keys, k)
		}
	}
	return keys
}

// checkFresh refuses a verified manifest older than what this host
// already accepted (a replay, by a mirror or anyone between), and one
// published longer ago than maxAge (a host whose state was wiped has no
// sequence to compare with; the age bounds how old a publication it can
// be fed).
func checkFresh(st State, m *manifest.Manifest, verified bool, maxAge time.Duration, now time.Time) error {
	if err := checkSequence(st.Publication, m, verified); err != nil {
		return err
	}
	if maxAge > 0 && now.Sub(m.PublishedAt) > maxAge {
		return fmt.Errorf("stale publication: refusing the published %s: version %s was published %s, more than maxPublicationAge (%s) ago: the server (or a mirror) serves an old publication; publish anew on the server (bento deploy)", manifest.ManifestFile, m.Version, m.PublishedAt.UTC().Format(time.RFC3339), timespan.Format(maxAge))
	}
	return nil
}

// checkSequence refuses m when its sequence goes back on last, the
// publication this host accepted last.
func checkSequence(last Publication, m *manifest.Manifest, verified bool) error {
	switch {
	case m.Sequence == 0 && verified && last.Sequence > 0:
		return fmt.Errorf("refusing the published %s: it has no sequence, and this host already accepted sequence %d (version %s): only a publisher older than the one that signed before writes none", manifest.ManifestFile, last.Sequence, last.Version)
	case m.Sequence > 0 && m.Sequence < last.Sequence:
		return fmt.Errorf("refusing the published %s: its sequence %d (version %s, published %s) is older than sequence %d (version %s) this host already accepted: the server or a mirror replays an old publication; publish anew (bento deploy) or repair the mirror", manifest.ManifestFile, m.Sequence, m.Version, m.PublishedAt.UTC().Format(time.RFC3339), last.Sequence, last.Version)
	case m.Sequence > 0 && m.Sequence == last.Sequence && m.Version != last.Version:
		return fmt.Errorf("refusing the published %s: its sequence %d was already accepted for version %s, not %s: a publisher never numbers two publications alike", manifest.ManifestFile, m.Sequence, last.Version, m.Version)
	}
	return nil
}

// accept records a verified manifest about to be applied: its sequence
// (nothing older is accepted after it) and the key it announces for a
// rotation. A manifest signed by a configured key that announces none
// ends a rotation: the keys it pinned go.
func (st *State) accept(m *manifest.Manifest, cfg []manifest.PublicationKey) {
	if m.Sequence > st.Publication.Sequence {
		st.Publication = Publication{Sequence: m.Sequence, Version: m.Version}
	}
	if len(cfg) == 0 || m.Signature == nil {
		return
	}
	if next := m.NextPublicationKey; next != "" {
		for _, k := range st.RotationKeys {
			if k == next {
				return
			}
		}
		st.RotationKeys = append(st.RotationKeys, next)
		if len(st.RotationKeys) > maxRotationKeys {
			st.RotationKeys = st.RotationKeys[len(st.RotationKeys)-maxRotationKeys:]
		}
		return
	}
	for _, k := range cfg {
		if k.String() == m.Signature.Key {
			st.RotationKeys = nil
			return
		}
	}
}
