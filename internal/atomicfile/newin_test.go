package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteNewIn(t *testing.T) {
	boom := errors.New("boom")
	writeHalfThenFail := func(f *os.File) error {
		f.WriteString("half")
		return boom
	}
	for _, tc := range []struct {
		name     string
		existing string // content of the target before, "" for none
		target   string // the name written, "f" unless set
		perm     fs.FileMode
		write    func(*os.File) error // nil: WriteNewIn with "new"
		wantErr  error                // nil: success
		want     string               // content of f afterwards, "" for absent
	}{
		{name: "secret mode", perm: 0o600, want: "new"},
		{name: "public mode", perm: 0o644, want: "new"},
		{name: "target exists", existing: "old", perm: 0o600, wantErr: fs.ErrExist, want: "old"},
		{name: "write fails", perm: 0o600, write: writeHalfThenFail, wantErr: boom},
		{name: "outside the root", target: "../f", perm: 0o600, wantErr: errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "root")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "f")
			if tc.existing != "" {
				if err := os.WriteFile(p, []byte(tc.existing), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			root, err := os.OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			target := tc.target
			if target == "" {
				target = "f"
			}
			if tc.write == nil {
				err = WriteNewIn(root, target, []byte("new"), tc.perm)
			} else {
				err = createIn(root, target, tc.perm, tc.write)
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("error %v", err)
			case tc.wantErr == errAny && err == nil, tc.wantErr != nil && tc.wantErr != errAny && !errors.Is(err, tc.wantErr):
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			got, rerr := os.ReadFile(p)
			switch {
			case tc.want == "" && !errors.Is(rerr, fs.ErrNotExist):
				t.Errorf("%s left behind (%q, %v)", p, got, rerr)
			case tc.want != "" && string(got) != tc.want:
				t.Errorf("content %q, want %q (%v)", got, tc.want, rerr)
			}
			if tc.wantErr == nil {
				if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != tc.perm {
					t.Errorf("mode %v (%v), want %v", fi.Mode().Perm(), err, tc.perm)
				}
			}
			assertEntries(t, dir, tc.want != "")
			assertEntries(t, parent, true) // only root/: nothing escaped
		})
	}
}

// errAny stands for "some error" in a test table.
var errAny = errors.New("any error")

// assertEntries checks that dir holds one entry (want) or none.
func assertEntries(t *testing.T, dir string, want bool) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if n := map[bool]int{false: 0, true: 1}[want]; len(names) != n {
		t.Errorf("%s holds %s, want %d entries", dir, strings.Join(names, ", "), n)
	}
}
