package mirror_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/mirror"
)

func pullRaw(t *testing.T, e *e2e.Env, m *mirrorServer) mirror.HostResult {
	t.Helper()
	kh, err := mirror.LoadKnownHosts(m.sshd.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	res, err := mirror.PullReports(context.Background(), mirror.Options{Root: e.SSHD.Root, Hosts: []string{"alpha"}, Signer: m.pusher.Signer, KnownHosts: kh}, []mirror.Dest{m.dest(t)})
	if err != nil || len(res) != 1 {
		t.Fatalf("PullReports: %v %v", res, err)
	}
	return res[0]
}

func reportJSON(t *testing.T, host string, finished time.Time, log string) []byte {
	t.Helper()
	data, err := json.Marshal(manifest.Report{Format: manifest.Format, Host: host, Result: manifest.ResultSuccess, Stage: manifest.StageConfirmed,
		AppliedVersion: "0123456789abcdef", StartedAt: finished.Add(-time.Minute), FinishedAt: finished, Log: log, Server: "mirror:22"})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Whatever a mirror holds in a host's reports/ was written by that host:
// pull-reports copies only regular files the host's user owns there,
// within status's limits, parsed as that host's report, and never follows
// a symlink on either side.
func TestPullReportsTreatsTheMirrorAsHostile(t *testing.T) {
	e := e2e.Start(t, oneHostFleet())
	h := e.Host(t, "alpha")
	m := startMirror(t, e, "alpha")
	uid := lookupUID(t, m.users["alpha"].User)
	mrep := filepath.Join(m.sshd.Root, "alpha", manifest.StatusFile)
	mlogs := filepath.Join(m.sshd.Root, "alpha", manifest.LogsDir)
	os.MkdirAll(mlogs, 0o755)
	os.Chown(mlogs, uid, -1)
	secret := filepath.Join(t.TempDir(), "root-only")
	if err := os.WriteFile(secret, reportJSON(t, "alpha", time.Now(), ""), 0o600); err != nil {
		t.Fatal(err)
	}
	prep := filepath.Join(e.Chroot("alpha"), manifest.StatusFile)
	now := time.Now().UTC().Truncate(time.Second)

	// put writes a file on the mirror as the host's user would (owner
	// uid), or as someone else.
	put := func(p string, data []byte, owner int) {
		t.Helper()
		os.Remove(p)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chown(p, owner, -1)
	}
	cases := []struct {
		name  string
		setup func()
		// err is what the host's error says; "" for none.
		err     string
		changed bool
	}{
		{"symlink to root's file", func() { os.Remove(mrep); os.Symlink(secret, mrep) }, "owned by uid 0, not by the host's user", false},
		{"a report root wrote", func() { put(mrep, reportJSON(t, "alpha", now, ""), 0) }, "owned by uid 0", false},
		{"too large", func() { put(mrep, append(reportJSON(t, "alpha", now, ""), make([]byte, 2<<20)...), uid) }, "more than the expected 1048576 bytes", false},
		{"another host's", func() { put(mrep, reportJSON(t, "beta", now, ""), uid) }, `status.json is for host "beta"`, false},
		{"not a report", func() { put(mrep, []byte(`{"format": 1, "host": "alpha"}`), uid) }, "neither finishedAt nor startedAt", false},
		{"a log name that climbs", func() { put(mrep, reportJSON(t, "alpha", now, "../../../etc/x.log.gz"), uid) }, "which is not a log name the agent writes", false},
		{"a log that is root's", func() {
			put(mrep, reportJSON(t, "alpha", now, "v-1.log.gz"), uid)
			os.Remove(filepath.Join(mlogs, "v-1.log.gz"))
			os.Symlink(secret, filepath.Join(mlogs, "v-1.log.gz"))
		}, "the mirror's log v-1.log.gz: read", false},
		{"newer, and the primary's status.json a symlink the host planted", func() {
			put(mrep, reportJSON(t, "alpha", now, "v-2.log.gz"), uid)
			put(filepath.Join(mlogs, "v-2.log.gz"), gz(t, "log of v2"), uid)
			os.Remove(prep)
			os.Symlink(secret, prep)
		}, "", true},
		{"older than the primary's", func() { put(mrep, reportJSON(t, "alpha", now.Add(-time.Hour), ""), uid) }, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := os.ReadFile(secret)
			tc.setup()
			r := pullRaw(t, e, m)
			if tc.err == "" && r.Err != nil || tc.err != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tc.err)) {
				t.Errorf("pull: %v, want error %q", r.Err, tc.err)
			}
			if r.Changed != tc.changed {
				t.Errorf("changed = %v, want %v (%+v)", r.Changed, tc.changed, r)
			}
			if after, _ := os.ReadFile(secret); string(after) != string(before) {
				t.Errorf("root's file was written through a symlink")
			}
		})
	}
	// The last good pull replaced the planted symlink with a file of the
	// host's user, and brought its log.
	fi, err := os.Lstat(prep)
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("the primary's status.json: %v %v", fi, err)
	}
	if r := h.Status(t); r.Log != "v-2.log.gz" || h.Log(t, "v-2.log.gz") != "log of v2" {
		t.Errorf("the primary holds report %+v", r)
	}
}

func gz(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write([]byte(s))
	w.Close()
	return b.Bytes()
}
