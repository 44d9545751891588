package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Create and CreateIn make a new file, synced, with its mode; they never
// touch a file that exists, and a failed write leaves nothing behind.
func TestCreate(t *testing.T) {
	boom := errors.New("boom")
	writeHalfThenFail := func(f *os.File) error {
		f.WriteString("half")
		return boom
	}
	for _, tc := range []struct {
		name     string
		existing string // content of root/f before, "" for none
		target   string // the name written, "f" unless set
		perm     fs.FileMode
		write    func(*os.File) error // nil: Create or CreateIn with "new"
		wantErr  error                // nil: success
		want     string               // content of root/f afterwards, "" for absent
	}{
		{name: "secret mode", perm: 0o600, want: "new"},
		{name: "public mode", perm: 0o644, want: "new"},
		{name: "target exists", existing: "old", perm: 0o600, wantErr: fs.ErrExist, want: "old"},
		{name: "write fails", perm: 0o600, write: writeHalfThenFail, wantErr: boom},
	} {
		for _, via := range []string{"Create", "CreateIn"} {
			t.Run(tc.name+"/"+via, func(t *testing.T) {
				dir := t.TempDir()
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
				err = createVia(via, root, dir, tc.perm, tc.write)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				checkCreated(t, dir, tc.want, tc.perm, tc.wantErr == nil)
			})
		}
	}
}

// createVia writes "f" in dirPath (root) with Create or CreateIn, or with
// write when it is set.
func createVia(via string, root *os.Root, dirPath string, perm fs.FileMode, write func(*os.File) error) error {
	var d dir = root
	name := "f"
	if via == "Create" {
		d, name = plainDir{}, filepath.Join(dirPath, "f")
	}
	switch {
	case write != nil:
		return create(d, name, perm, write)
	case via == "Create":
		return Create(name, []byte("new"), perm)
	default:
		return CreateIn(root, name, []byte("new"), perm)
	}
}

// checkCreated checks that dir holds only f with want (with mode perm
// when checkMode), or nothing when want is "".
func checkCreated(t *testing.T, dir, want string, perm fs.FileMode, checkMode bool) {
	t.Helper()
	p := filepath.Join(dir, "f")
	got, err := os.ReadFile(p)
	switch {
	case want == "" && !errors.Is(err, fs.ErrNotExist):
		t.Errorf("%s left behind (%q, %v)", p, got, err)
	case want != "" && string(got) != want:
		t.Errorf("content %q, want %q (%v)", got, want, err)
	}
	if checkMode {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != perm {
			t.Errorf("mode %v (%v), want %v", fi.Mode().Perm(), err, perm)
		}
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if n := map[bool]int{false: 0, true: 1}[want != ""]; len(names) != n {
		t.Errorf("%s holds %s, want %d entries", dir, strings.Join(names, ", "), n)
	}
}

// CreateIn cannot leave its root.
func TestCreateInStaysInRoot(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := os.Symlink(parent, filepath.Join(dir, "up")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"../f", "up/f"} {
		if err := CreateIn(root, name, []byte("x"), 0o644); err == nil {
			t.Errorf("CreateIn %s: no error", name)
		}
	}
	if _, err := os.Stat(filepath.Join(parent, "f")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a file was made outside the root: %v", err)
	}
}

// ReplaceIn replaces name, with its mode; when the rename fails
// (name is a non-empty directory) its temporary file is gone and name is
// as it was; an existing temporary file is never overwritten.
func TestReplaceIn(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "busy", "x"), 0o755)
	os.WriteFile(filepath.Join(dir, "taken.tmp"), []byte("other"), 0o600)
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := ReplaceIn(r, "f", "f.tmp", []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ReplaceIn(r, "f", "f.tmp", []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "f")); string(got) != "two" {
		t.Errorf("f holds %q, want two", got)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "f")); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	if err := ReplaceIn(r, "busy", "busy.tmp", []byte("x"), 0o644); err == nil {
		t.Error("renaming over a non-empty directory succeeded")
	}
	if err := ReplaceIn(r, "f", "taken.tmp", []byte("x"), 0o644); !errors.Is(err, fs.ErrExist) {
		t.Errorf("existing temporary file: %v, want ErrExist", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "taken.tmp")); string(got) != "other" {
		t.Errorf("existing temporary file overwritten: %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "busy", "x")); err != nil {
		t.Errorf("busy/ changed: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "busy f taken.tmp" {
		t.Errorf("directory holds %v, want busy f taken.tmp", names)
	}
}
