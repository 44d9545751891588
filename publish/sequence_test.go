package publish_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
)

func signingKey(t *testing.T, name string) *manifest.SigningKey {
	t.Helper()
	k, err := manifest.GenerateSigningKey(name)
	if err != nil {
		t.Fatal(err)
	}
	return &k
}

func withKey(k *manifest.SigningKey) func(*publish.Options) {
	return func(o *publish.Options) { o.SigningKey = k }
}

func readSigned(t *testing.T, root, host string, k *manifest.SigningKey) *manifest.Manifest {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, host, manifest.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.ParseVerified(data, []manifest.PublicationKey{k.Public()})
	if err != nil {
		t.Fatalf("host %s: %v", host, err)
	}
	return m
}

func TestSequencesRiseAndSignaturesFollowTheKey(t *testing.T) {
	dir := newFleet(t, map[string]string{"a.nix": "1\n"}, false)
	root := filepath.Join(t.TempDir(), "chroot")
	c := newClock()
	k1, k2 := signingKey(t, "fleet-1"), signingKey(t, "fleet-2")

	mustOK(t, deploy(t, root, targets(dir, "alpha", "beta"), c.opt), publish.StatusPublished)
	first := readManifest(t, root, "alpha")
	if first.Sequence == 0 || first.Signature != nil {
		t.Fatalf("unsigned deploy: sequence %d, signature %v", first.Sequence, first.Signature)
	}
	steps := []struct {
		name   string
		mod    func(*publish.Options)
		change bool
		want   publish.Status
		key    *manifest.SigningKey
	}{
		{"nothing changed", nil, false, publish.StatusUnchanged, nil},
		{"a key added: the same version, signed", withKey(k1), false, publish.StatusUpdated, k1},
		{"nothing changed, signed", withKey(k1), false, publish.StatusUnchanged, k1},
		{"new content", withKey(k1), true, publish.StatusPublished, k1},
		{"the next key announced", func(o *publish.Options) { o.SigningKey = k1; o.NextPublicationKey = k2.Public().String() }, false, publish.StatusUpdated, k1},
		{"rotated", withKey(k2), false, publish.StatusUpdated, k2},
		{"the key removed", nil, false, publish.StatusUpdated, nil},
	}
	prev := first.Sequence
	for i, s := range steps {
		c.Advance(time.Minute)
		if s.change {
			writeFleet(t, dir, map[string]string{"a.nix": fmt.Sprint(i) + "\n"}, false)
		}
		mods := []func(*publish.Options){c.opt}
		if s.mod != nil {
			mods = append(mods, s.mod)
		}
		mustOK(t, deploy(t, root, targets(dir, "alpha", "beta"), mods...), s.want)
		for _, host := range []string{"alpha", "beta"} {
			var m *manifest.Manifest
			if s.key != nil {
				m = readSigned(t, root, host, s.key)
			} else {
				m = readManifest(t, root, host)
				if m.Signature != nil {
					t.Fatalf("%s: %s is signed by %s with no key given", s.name, host, m.Signature.Key)
				}
			}
			if host != "alpha" {
				continue
			}
			if s.want == publish.StatusUnchanged && m.Sequence != prev || s.want != publish.StatusUnchanged && m.Sequence <= prev {
				t.Fatalf("%s: sequence %d after %d", s.name, m.Sequence, prev)
			}
			prev = m.Sequence
		}
	}
}

// The clock going back (or standing still) does not make a sequence
// repeat: the record keeps the highest one given.
func TestSequenceOutlivesAClockGoingBack(t *testing.T) {
	dir := newFleet(t, map[string]string{"a.nix": "1\n"}, false)
	root := filepath.Join(t.TempDir(), "chroot")
	c := newClock()
	mustOK(t, deploy(t, root, targets(dir, "alpha"), c.opt), publish.StatusPublished)
	s1 := readManifest(t, root, "alpha").Sequence
	c.Advance(-time.Hour)
	writeFleet(t, dir, map[string]string{"a.nix": "2\n"}, false)
	mustOK(t, deploy(t, root, targets(dir, "alpha"), c.opt), publish.StatusPublished)
	if s2 := readManifest(t, root, "alpha").Sequence; s2 <= s1 {
		t.Fatalf("sequence %d after %d", s2, s1)
	}
}

// A deploy killed after writing the new manifest aside but before it
// went live reserved a sequence; the next deploy, with other content and
// the same clock, must not give that number to its manifest.
func TestKilledDeployNeverReusesItsSequence(t *testing.T) {
	if spec := os.Getenv("BENTO_TEST_SEQKILL"); spec != "" {
		seqKillChild(t, spec)
		return
	}
	dir := newFleet(t, map[string]string{"a.nix": "1\n"}, false)
	root := filepath.Join(t.TempDir(), "chroot")
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(o *publish.Options) { o.Now = func() time.Time { return t0 } }
	mustOK(t, deploy(t, root, targets(dir, "alpha"), at), publish.StatusPublished)
	live := readManifest(t, root, "alpha")

	writeFleet(t, dir, map[string]string{"a.nix": "2\n"}, false)
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledDeployNeverReusesItsSequence$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("BENTO_TEST_SEQKILL=%d|%s|%s", t0.UnixNano(), dir, root))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !asExit(err, &exit) || !exit.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("the child was not killed: %v\n%s", err, out)
	}
	temps, _ := filepath.Glob(filepath.Join(root, "alpha", "."+manifest.ManifestFile+".tmp-*"))
	if len(temps) != 1 {
		t.Fatalf("the killed deploy left %d manifests aside, want 1", len(temps))
	}
	data, err := os.ReadFile(temps[0])
	if err != nil {
		t.Fatal(err)
	}
	aside, err := manifest.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if got := readManifest(t, root, "alpha"); got.Sequence != live.Sequence || aside.Sequence <= live.Sequence {
		t.Fatalf("after the kill: live %d (was %d), aside %d", got.Sequence, live.Sequence, aside.Sequence)
	}

	writeFleet(t, dir, map[string]string{"a.nix": "3\n"}, false)
	mustOK(t, deploy(t, root, targets(dir, "alpha"), at), publish.StatusPublished)
	m := readManifest(t, root, "alpha")
	if m.Version == aside.Version {
		t.Fatal("the test publishes the same content twice")
	}
	if m.Sequence <= aside.Sequence {
		t.Fatalf("the manifest after the kill has sequence %d; the killed deploy had reserved %d for other content", m.Sequence, aside.Sequence)
	}
	if last, err := publish.LastSequence(root, "alpha"); err != nil || last != m.Sequence {
		t.Fatalf("LastSequence = %d, %v; want %d", last, err, m.Sequence)
	}
}

func seqKillChild(t *testing.T, spec string) {
	parts := strings.SplitN(spec, "|", 3)
	nanos, _ := strconv.ParseInt(parts[0], 10, 64)
	dir, root := parts[1], parts[2]
	p, err := publish.Open(context.Background(), publish.Options{
		Root: root, Jobs: 1,
		Now: func() time.Time { return time.Unix(0, nanos) },
		Hook: func(step publish.Step, host string) {
			if step == publish.StepManifestWritten {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Publish(context.Background(), targets(dir, "alpha"))
	t.Fatal("not killed")
}
