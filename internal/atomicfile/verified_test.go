package atomicfile_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bento-nix/bento/internal/atomicfile"
)

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func TestCopyVerified(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		want    atomicfile.Content
		write   string
		fillErr error
		secret  bool
		errHas  string // "" means success
		noHash  bool   // the message must not show the written bytes' hash
	}{
		{name: "right content", want: atomicfile.Content{Size: 5, SHA256: sum("hello")}, write: "hello"},
		{name: "upper-case hex", want: atomicfile.Content{Size: 5, SHA256: strings.ToUpper(sum("hello"))}, write: "hello"},
		{name: "short", want: atomicfile.Content{Size: 6, SHA256: sum("hello!")}, write: "hello", errHas: "size 5, but the manifest says 6"},
		{name: "other bytes", want: atomicfile.Content{Size: 5, SHA256: sum("world")}, write: "hello", errHas: "sha256 " + sum("hello") + ", but the manifest says " + sum("world")},
		{name: "other secret bytes", want: atomicfile.Content{Size: 5, SHA256: sum("world")}, write: "hello", secret: true, errHas: "sha256 differs", noHash: true},
		{name: "fill fails", want: atomicfile.Content{Size: 5, SHA256: sum("hello")}, write: "hel", fillErr: boom, errHas: "boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			dst := filepath.Join(dir, "obj")
			finished := false
			n, err := atomicfile.CopyVerified(dst, atomicfile.Verified{
				Content: tc.want, Perm: 0o600, Secret: tc.secret,
				Finish: func(f *os.File) error { finished = true; return f.Chmod(0o444) },
			}, func(w io.Writer) (int64, error) {
				k, err := io.WriteString(w, tc.write)
				if err == nil {
					err = tc.fillErr
				}
				return int64(k), err
			})
			if n != int64(len(tc.write)) {
				t.Errorf("wrote %d bytes, want %d", n, len(tc.write))
			}
			if tc.errHas == "" {
				got, rerr := os.ReadFile(dst)
				fi, _ := os.Stat(dst)
				if err != nil || rerr != nil || string(got) != tc.write || fi.Mode().Perm() != 0o444 || !finished {
					t.Fatalf("err %v; file %q (%v), mode %v, finished %v", err, got, rerr, fi.Mode().Perm(), finished)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("error %v, want one saying %q", err, tc.errHas)
			}
			if tc.noHash && strings.Contains(err.Error(), sum(tc.write)) {
				t.Errorf("error %v shows the secret's hash", err)
			}
			var mismatch *atomicfile.MismatchError
			if errors.As(err, &mismatch) == (tc.fillErr != nil) {
				t.Errorf("error %v: a *MismatchError exactly for a mismatch", err)
			}
			if finished {
				t.Error("Finish ran on a refused file")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("refused file left behind: %v", entries)
			}
		})
	}
}

// Whatever is at dst already, a file or a link, is neither followed nor
// replaced.
func TestCopyVerifiedNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{target, link} {
		_, err := atomicfile.CopyVerified(dst, atomicfile.Verified{Content: atomicfile.Content{Size: 5, SHA256: sum("hello")}, Perm: 0o644},
			func(w io.Writer) (int64, error) { k, err := io.WriteString(w, "hello"); return int64(k), err })
		if !errors.Is(err, fs.ErrExist) {
			t.Errorf("%s: error %v, want ErrExist", dst, err)
		}
	}
	if got, _ := os.ReadFile(target); string(got) != "keep" {
		t.Errorf("target now holds %q", got)
	}
}

// Of writers racing to create one file, exactly one wins and the file is
// whole; the others fail with ErrExist.
func TestWriteNewOneWinner(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = atomicfile.WriteNew(p, []byte(strings.Repeat(string(rune('a'+i)), 4096)), 0o600)
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), p):
			t.Errorf("error %v: want ErrExist naming %s", err, p)
		}
	}
	got, _ := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if won != 1 || len(got) != 4096 || strings.Count(string(got), string(got[0])) != 4096 || fi.Mode().Perm() != 0o600 {
		t.Errorf("%d winners; file of %d bytes, mode %v", won, len(got), fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}
