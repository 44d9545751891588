package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

func TestCheckFresh(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	st := State{Publication: Publication{Sequence: 10, Version: "aaaaaaaaaaaaaaaa"}}
	m := func(seq uint64, version string, age time.Duration) *manifest.Manifest {
		return &manifest.Manifest{Sequence: seq, Version: version, PublishedAt: now.Add(-age)}
	}
	for _, tc := range []struct {
		name     string
		st       State
		m        *manifest.Manifest
		verified bool
		maxAge   time.Duration
		want     string
	}{
		{"newer", st, m(11, "bbbbbbbbbbbbbbbb", 0), true, 0, ""},
		{"the same publication again", st, m(10, "aaaaaaaaaaaaaaaa", 0), true, 0, ""},
		{"older: a replay", st, m(9, "cccccccccccccccc", 0), true, 0, "older than sequence 10"},
		{"older, unverified too", st, m(9, "cccccccccccccccc", 0), false, 0, "replays an old publication"},
		{"same number, other content", st, m(10, "bbbbbbbbbbbbbbbb", 0), true, 0, "never numbers two publications alike"},
		{"no sequence after signed ones", st, m(0, "bbbbbbbbbbbbbbbb", 0), true, 0, "has no sequence"},
		{"no sequence, nothing pinned", st, m(0, "bbbbbbbbbbbbbbbb", 0), false, 0, ""},
		{"first publication ever", State{}, m(3, "bbbbbbbbbbbbbbbb", 0), true, 0, ""},
		{"old but no age limit", st, m(11, "bbbbbbbbbbbbbbbb", 30*24*time.Hour), true, 0, ""},
		{"within the age limit", st, m(11, "bbbbbbbbbbbbbbbb", 59*time.Minute), true, time.Hour, ""},
		{"stale", st, m(11, "bbbbbbbbbbbbbbbb", 61*time.Minute), true, time.Hour, "stale publication"},
		{"stale on a wiped host", State{}, m(11, "bbbbbbbbbbbbbbbb", 2*time.Hour), true, time.Hour, "maxPublicationAge (1h)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkFresh(tc.st, tc.m, tc.verified, tc.maxAge, now)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestAcceptPinsTheNextKeyAndEndsTheRotation(t *testing.T) {
	gen := func(name string) manifest.PublicationKey {
		k, err := manifest.GenerateSigningKey(name)
		if err != nil {
			t.Fatal(err)
		}
		return k.Public()
	}
	k1, k2 := gen("fleet-1"), gen("fleet-2")
	cfg := []manifest.PublicationKey{k1}
	var st State
	signedBy := func(k manifest.PublicationKey, seq uint64, next string) *manifest.Manifest {
		return &manifest.Manifest{Sequence: seq, Version: "aaaaaaaaaaaaaaaa", NextPublicationKey: next, Signature: &manifest.Signature{Key: k.String()}}
	}
	st.accept(signedBy(k1, 5, k2.String()), cfg)
	if st.Publication.Sequence != 5 || len(st.RotationKeys) != 1 || st.RotationKeys[0] != k2.String() {
		t.Fatalf("after the announcement: %+v", st)
	}
	if keys := pinnedKeys(cfg, st); len(keys) != 2 || keys[1].Name != "fleet-2" {
		t.Fatalf("pinned %v", keys)
	}
	// Signed by the next key, the configuration not yet changed: kept.
	st.accept(signedBy(k2, 6, ""), cfg)
	if len(st.RotationKeys) != 1 {
		t.Fatalf("the rotation key went before the configuration pins it: %+v", st)
	}
	// The configuration pins the new key, and a manifest it signed
	// announces nothing: the rotation is over.
	st.accept(signedBy(k2, 7, ""), []manifest.PublicationKey{k2})
	if len(st.RotationKeys) != 0 || st.Publication.Sequence != 7 {
		t.Fatalf("after the rotation: %+v", st)
	}
	// Nothing pinned: nothing verified, so nothing pinned through it.
	var open State
	open.accept(signedBy(k1, 1, k2.String()), nil)
	if len(open.RotationKeys) != 0 || pinnedKeys(nil, open) != nil {
		t.Fatalf("an unverified manifest pinned a key: %+v", open)
	}
	for i := 0; i < 10; i++ {
		st.accept(signedBy(k1, uint64(10+i), gen("k").String()+string(rune('a'+i))), cfg)
	}
	if len(st.RotationKeys) > maxRotationKeys {
		t.Fatalf("%d rotation keys kept", len(st.RotationKeys))
	}
}
