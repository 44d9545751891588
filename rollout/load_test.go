package rollout

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The record is read back as hostile input: whatever sits in its place
// gives an error naming it, never a panic, a hang or a path outside the
// snapshot directory.
func TestLoadRefusesDamagedRecords(t *testing.T) {
	good := func() *State {
		return &State{Format: stateFormat, ID: "r", Phase: PhaseRunning, SnapshotDir: "/var/lib/bento/rollout",
			Waves: []Wave{{Number: 0, Hosts: []string{"a"}}}, Sources: []string{"r/source-0"},
			Hosts: []Host{{Name: "a", Source: 0}, {Name: "b", Source: 0}}}
	}
	for _, c := range []struct {
		name   string
		damage func(s *State)
		raw    string
		want   string
	}{
		{name: "garbage", raw: "{not json", want: "invalid character"},
		{name: "format", damage: func(s *State) { s.Format = 9 }, want: "format 9"},
		{name: "current out of range", damage: func(s *State) { s.Current = 3 }, want: "current wave 3 of 1"},
		{name: "no waves", damage: func(s *State) { s.Waves = nil }, want: "current wave"},
		{name: "source escapes", damage: func(s *State) { s.Sources[0] = "../../etc" }, want: "not a plain relative name"},
		{name: "absolute source", damage: func(s *State) { s.Sources[0] = "/etc" }, want: "not a plain relative name"},
		{name: "relative snapshot dir", damage: func(s *State) { s.SnapshotDir = "state" }, want: "not absolute"},
		{name: "bad host name", damage: func(s *State) { s.Hosts[0].Name = "../x" }, want: "invalid host name"},
		{name: "unsorted hosts", damage: func(s *State) { s.Hosts[0].Name = "c" }, want: "not sorted"},
		{name: "source index", damage: func(s *State) { s.Hosts[1].Source = 5 }, want: "source 5 of 1"},
		{name: "previous index", damage: func(s *State) { s.Hosts[1].Previous = &Previous{Source: 2} }, want: "previous source 2 of 0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			if c.raw != "" {
				os.MkdirAll(dir(root), 0o700)
				os.WriteFile(filepath.Join(dir(root), stateFile), []byte(c.raw), 0o600)
			} else {
				s := good()
				c.damage(s)
				if err := s.save(root, time.Now()); err != nil {
					t.Fatal(err)
				}
			}
			st, err := Load(root)
			if err == nil || !strings.Contains(err.Error(), c.want) || st != nil {
				t.Fatalf("Load: %v, want an error containing %q", err, c.want)
			}
		})
	}
	t.Run("fifo", func(t *testing.T) {
		root := t.TempDir()
		os.MkdirAll(dir(root), 0o700)
		if err := syscall.Mkfifo(filepath.Join(dir(root), stateFile), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(root); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("Load of a FIFO: %v", err)
		}
	})
	t.Run("none", func(t *testing.T) {
		if st, err := Load(t.TempDir()); st != nil || err != nil {
			t.Fatalf("Load without a record: %v %v", st, err)
		}
	})
	t.Run("good", func(t *testing.T) {
		root := t.TempDir()
		if err := good().save(root, time.Now()); err != nil {
			t.Fatal(err)
		}
		if st, err := Load(root); err != nil || st.ID != "r" {
			t.Fatalf("Load: %v %v", st, err)
		}
	})
}

// A host's report is what the host wrote: a symlink out of its chroot, a
// FIFO, a huge file or another host's report is refused, and judged as
// silent (it never blocks a step, never halts one).
func TestReadReportHostile(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret.json")
	os.WriteFile(secret, []byte(`{"host":"a","appliedVersion":"1111111111111111"}`), 0o600)
	for _, c := range []struct {
		name  string
		plant func(p string) error
		want  string
	}{
		{"symlink out of the chroot", func(p string) error { return os.Symlink(secret, p) }, "escapes"},
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "not a regular file"},
		{"huge", func(p string) error { return os.WriteFile(p, make([]byte, 2<<20), 0o644) }, "over"},
		{"another host's", func(p string) error { return os.WriteFile(p, []byte(`{"host":"b"}`), 0o644) }, `for host "b"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			reports := filepath.Join(root, "a", "reports")
			os.MkdirAll(reports, 0o755)
			if err := c.plant(filepath.Join(reports, "status.json")); err != nil {
				t.Fatal(err)
			}
			rep, err := ReadReport(root, "a")
			if err == nil || rep != nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ReadReport: %+v %v, want an error containing %q", rep, err, c.want)
			}
			if st, _ := JudgeHost("1111111111111111", rep, err); st != HostSilent {
				t.Errorf("judged %s, want silent", st)
			}
		})
	}
}
