package statefile

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestReadRegular(t *testing.T) {
	for _, tc := range []struct {
		name    string
		make    func(p string) error
		want    string // the content returned
		wantErr string
	}{
		{"within the limit", func(p string) error { return os.WriteFile(p, []byte("1234"), 0o600) }, "1234", ""},
		// Over the limit the bytes read come back with the error: a caller
		// that drops it sees more than the limit, not a cut file.
		{"over the limit", func(p string) error { return os.WriteFile(p, []byte("123456"), 0o600) }, "12345", "is over 4 bytes"},
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "", "is not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f")
			if err := tc.make(p); err != nil {
				t.Fatal(err)
			}
			// O_NONBLOCK: the FIFO must be refused, not waited on.
			f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			data, err := ReadRegular(f, p, 4)
			if string(data) != tc.want {
				t.Errorf("content %q, want %q", data, tc.want)
			}
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), p+" "+tc.wantErr)) {
				t.Errorf("error %v, want one naming %s and saying %q", err, p, tc.wantErr)
			}
		})
	}
}
