package activate_test

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/activate"
	"github.com/bento-nix/bento/internal/statefile"
)

func TestNeedsReboot(t *testing.T) {
	// Hand-made systems whose boot parts are plain files, not links.
	plain := func(kernel string) string {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, "kernel"), []byte(kernel), 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	plain1, plain1again, plain2 := plain("vmlinuz 1"), plain("vmlinuz 1"), plain("vmlinuz 2")

	tests := []struct {
		name         string
		booted, next string
		want         []string
		wantNote     string
	}{
		{name: "same boot parts", booted: "a", next: "b"},
		{name: "same system", booted: "a", next: "a"},
		{name: "kernel", booted: "a", next: "kernel", want: []string{"kernel"}},
		{name: "initrd", booted: "a", next: "initrd", want: []string{"initrd"}},
		{name: "modules", booted: "a", next: "modules", want: []string{"kernel-modules"}},
		{name: "params", booted: "a", next: "params", want: []string{"kernel-params"}},
		{name: "kernel and initrd", booted: "a", next: "kernelinitrd", want: []string{"kernel", "initrd"}},
		{name: "back to the booted kernel", booted: "kernel", next: "a", want: []string{"kernel"}},
		{name: "booted unknown", booted: "", next: "kernel", wantNote: "fresh installation"},
		{name: "booted missing", booted: "/nix/store/00000000000000000000000000000000-gone", next: "kernel", wantNote: "does not exist"},
		{name: "plain files equal", booted: plain1, next: plain1again},
		{name: "plain files differ", booted: plain1, next: plain2, want: []string{"kernel"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, err := activate.NeedsReboot(sys(tt.booted), sys(tt.next))
			if err != nil {
				t.Fatal(err)
			}
			if rc.Required != (len(tt.want) > 0) || !slices.Equal(rc.Changed, tt.want) {
				t.Errorf("got required=%v changed=%q, want changed=%q", rc.Required, rc.Changed, tt.want)
			}
			if tt.wantNote != "" && !strings.Contains(rc.Note, tt.wantNote) {
				t.Errorf("note %q, want it to say %q", rc.Note, tt.wantNote)
			}
		})
	}
	if _, err := activate.NeedsReboot(systems["a"], "/nix/store/00000000000000000000000000000000-gone"); err == nil {
		t.Error("a missing new system is not an error")
	}
}

// sys maps a fixture name to its store path and leaves other paths alone.
func sys(name string) string {
	if p, ok := systems[name]; ok {
		return p
	}
	return name
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		mode, window string
		wantMode     string
		wantErr      string
	}{
		{mode: "", wantMode: "never"},
		{mode: "never", wantMode: "never"},
		{mode: "now", wantMode: "now"},
		{mode: "window", window: "01:00-05:00", wantMode: "window"},
		{mode: "window", window: "23:30-02:00", wantMode: "window"},
		{mode: "window", window: "22:00-24:00", wantMode: "window"},
		{mode: "window", window: "4:00-5:00", wantMode: "window"},
		{mode: "never", window: "01:00-05:00", wantMode: "never"},
		{mode: "sometimes", wantErr: `reboot policy "sometimes" is not supported: use never, now or window`},
		{mode: "window", wantErr: "needs a window"},
		{mode: "window", window: "01:00", wantErr: `write it as "HH:MM-HH:MM"`},
		{mode: "window", window: "25:00-03:00", wantErr: `start: "25:00" is not a time of day`},
		{mode: "window", window: "01:00-03:60", wantErr: `end: "03:60" is not a time of day`},
		{mode: "window", window: "24:00-03:00", wantErr: `start: "24:00" is not a time of day`},
		{mode: "window", window: "1am-3am", wantErr: "is not a time of day"},
		{mode: "window", window: "03:00-03:00", wantErr: "is empty"},
		{mode: "now", window: "x", wantErr: `reboot window "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.mode+" "+tt.window, func(t *testing.T) {
			p, err := activate.ParsePolicy(tt.mode, tt.window)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error spans several lines: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Mode != tt.wantMode {
				t.Errorf("mode %q, want %q", p.Mode, tt.wantMode)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	loc := time.FixedZone("test", 2*3600)
	at := func(day, h, m int) time.Time { return time.Date(2025, 3, day, h, m, 0, 0, loc) }
	tests := []struct {
		name         string
		mode, window string
		now          time.Time
		// The planned reboot must lie in [from, to).
		from, to time.Time
		none     bool
	}{
		{name: "never", mode: "never", now: at(10, 12, 0), none: true},
		{name: "now", mode: "now", now: at(10, 12, 0), from: at(10, 12, 0), to: at(10, 12, 0)},
		{name: "before the window", mode: "window", window: "01:00-05:00", now: at(10, 0, 30), from: at(10, 1, 0), to: at(10, 5, 0)},
		{name: "inside the window", mode: "window", window: "01:00-05:00", now: at(10, 3, 0), from: at(10, 3, 0), to: at(10, 5, 0)},
		{name: "after the window", mode: "window", window: "01:00-05:00", now: at(10, 6, 0), from: at(11, 1, 0), to: at(11, 5, 0)},
		{name: "at the window's end", mode: "window", window: "01:00-05:00", now: at(10, 5, 0), from: at(11, 1, 0), to: at(11, 5, 0)},
		{name: "wrapping, before", mode: "window", window: "23:00-02:00", now: at(10, 12, 0), from: at(10, 23, 0), to: at(11, 2, 0)},
		{name: "wrapping, inside before midnight", mode: "window", window: "23:00-02:00", now: at(10, 23, 30), from: at(10, 23, 30), to: at(11, 2, 0)},
		{name: "wrapping, inside after midnight", mode: "window", window: "23:00-02:00", now: at(11, 1, 0), from: at(11, 1, 0), to: at(11, 2, 0)},
		{name: "wrapping, after", mode: "window", window: "23:00-02:00", now: at(11, 2, 30), from: at(11, 23, 0), to: at(12, 2, 0)},
		{name: "until midnight", mode: "window", window: "22:00-24:00", now: at(10, 23, 0), from: at(10, 23, 0), to: at(11, 0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := activate.ParsePolicy(tt.mode, tt.window)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[time.Time]bool{}
			for seed := range uint64(20) {
				got, ok := p.Plan(tt.now, rand.New(rand.NewPCG(seed, 1)))
				if tt.none {
					if ok || !got.IsZero() {
						t.Fatalf("planned %v, want no reboot", got)
					}
					return
				}
				if !ok {
					t.Fatal("no reboot planned")
				}
				if got.Before(tt.from) || (got.After(tt.to) || got.Equal(tt.to) && !tt.from.Equal(tt.to)) {
					t.Fatalf("seed %d: planned %v, want within [%v, %v)", seed, got, tt.from, tt.to)
				}
				seen[got] = true
			}
			// A window spreads a fleet's reboots over it.
			if tt.mode == "window" && len(seen) < 10 {
				t.Errorf("20 seeds planned only %d distinct moments", len(seen))
			}
		})
	}
}

func TestPendingReboot(t *testing.T) {
	dir := t.TempDir()
	if p, err := activate.LoadPending(dir); err != nil || p != nil {
		t.Fatalf("nothing saved yet: got %v, %v", p, err)
	}
	want := activate.PendingReboot{At: time.Date(2025, 3, 10, 3, 17, 0, 0, time.UTC), System: systems["kernel"]}
	if err := activate.SavePending(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := activate.LoadPending(dir)
	if err != nil || got == nil || !got.At.Equal(want.At) || got.System != want.System {
		t.Fatalf("loaded %+v, %v; want %+v", got, err, want)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != activate.PendingFile {
		t.Errorf("state dir holds %v, want only %s (no temporary files left)", entries, activate.PendingFile)
	}
	if err := activate.ClearPending(dir); err != nil {
		t.Fatal(err)
	}
	if p, err := activate.LoadPending(dir); err != nil || p != nil {
		t.Errorf("after clearing: %v, %v", p, err)
	}
	if err := activate.ClearPending(dir); err != nil {
		t.Errorf("clearing twice: %v", err)
	}

	if err := os.WriteFile(filepath.Join(dir, activate.PendingFile), []byte(`{"at": "soon"`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := activate.LoadPending(dir); !errors.Is(err, statefile.ErrUnusable) || !strings.Contains(err.Error(), "moved aside to ") {
		t.Errorf("corrupt record: error %v, want one saying it was moved aside", err)
	}
	if aside, _ := filepath.Glob(filepath.Join(dir, activate.PendingFile+".corrupt-*")); len(aside) != 1 {
		t.Errorf("corrupt record not moved aside: %q", aside)
	}
	// Reported once: the next read finds no record.
	if p, err := activate.LoadPending(dir); err != nil || p != nil {
		t.Errorf("after moving aside: %v, %v", p, err)
	}
}

func TestPendingStillNeeded(t *testing.T) {
	tests := []struct {
		name                    string
		pending, booted, newest string
		want                    bool
	}{
		{name: "nothing changed since planning", pending: "kernel", booted: "a", newest: "kernel", want: true},
		{name: "booted into it", pending: "kernel", booted: "kernel", newest: "kernel", want: false},
		{name: "newer generation still needs it", pending: "kernel", booted: "a", newest: "kernelinitrd", want: true},
		{name: "newer generation back on the booted kernel", pending: "kernel", booted: "a", newest: "b", want: false},
		{name: "newest is the booted system", pending: "kernel", booted: "a", newest: "a", want: false},
		{name: "booted unknown", pending: "kernel", booted: "", newest: "kernel", want: false},
		{name: "newest unreadable keeps it", pending: "kernel", booted: "a", newest: "/nix/store/00000000000000000000000000000000-gone", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := activate.PendingReboot{At: time.Now(), System: sys(tt.pending)}
			if got := p.StillNeeded(sys(tt.booted), sys(tt.newest)); got != tt.want {
				t.Errorf("StillNeeded = %v, want %v", got, tt.want)
			}
		})
	}
}
