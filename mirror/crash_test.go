package mirror_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/mirror"
)

// cutConn is a connection that dies after a budget of bytes written: the
// network (or the pushing process) gone in the middle of a push.
type cutConn struct {
	net.Conn
	left *atomic.Int64
}

func (c *cutConn) Write(p []byte) (int, error) {
	if c.left.Add(-int64(len(p))) < 0 {
		c.Conn.Close()
		return 0, errors.New("cut")
	}
	return c.Conn.Write(p)
}

// A push cut off anywhere leaves the mirror on its old publication, whole;
// the next push completes the new one and removes what the cut one left.
func TestPushCutOffLeavesTheOldPublication(t *testing.T) {
	f := fixture.Fleet{Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}}, Files: map[string]string{}}
	for i := 0; i < 20; i++ {
		f.Files[fmt.Sprintf("modules/m%02d.nix", i)] = fmt.Sprintf("{ m%d = %q; }\n", i, strings.Repeat("x", 8<<10))
	}
	e := e2e.Start(t, f)
	e.Host(t, "alpha")
	e.Publish(t)
	m := startMirror(t, e, "alpha")
	push(t, e, m)
	mirrorChroot := filepath.Join(m.sshd.Root, "alpha")
	old, _ := os.ReadFile(filepath.Join(mirrorChroot, manifest.ManifestFile))

	for i := 0; i < 20; i++ {
		e.Fleet.Files[fmt.Sprintf("modules/m%02d.nix", i)] = fmt.Sprintf("{ m%d = %q; }\n", i, strings.Repeat("y", 8<<10))
	}
	e.WriteFleet(t, e.Fleet)
	e.Publish(t)

	kh, err := mirror.LoadKnownHosts(m.sshd.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	var left atomic.Int64
	left.Store(60 << 10) // past the handshake, well short of 20 × 8 KiB
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &cutConn{Conn: c, left: &left}, nil
	}
	res, err := mirror.Push(context.Background(), mirror.Options{Root: e.SSHD.Root, Signer: m.pusher.Signer, KnownHosts: kh, Dial: dial}, []mirror.Dest{m.dest(t)})
	if err != nil || len(res) != 1 || res[0].Err == nil {
		t.Fatalf("a cut push succeeded: %+v %v", res, err)
	}
	if res[0].Files == 0 {
		t.Fatalf("the cut came before any upload; the test proves nothing: %+v", res[0])
	}
	// The old manifest, and everything it names, as it was.
	now, _ := os.ReadFile(filepath.Join(mirrorChroot, manifest.ManifestFile))
	if !bytes.Equal(now, old) {
		t.Fatal("a cut push replaced the mirror's manifest")
	}
	om, err := manifest.Parse(old)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range om.Files {
		data, err := os.ReadFile(filepath.Join(mirrorChroot, filepath.FromSlash(manifest.ObjectPath(f.SHA256))))
		if err != nil || int64(len(data)) != f.Size {
			t.Errorf("the old publication's %s is damaged on the mirror: %v", f.Path, err)
		}
	}

	push(t, e, m)
	now, _ = os.ReadFile(filepath.Join(mirrorChroot, manifest.ManifestFile))
	want, _ := os.ReadFile(filepath.Join(e.Chroot("alpha"), manifest.ManifestFile))
	if !bytes.Equal(now, want) {
		t.Error("the next push did not complete the publication")
	}
	filepath.WalkDir(mirrorChroot, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".bento-put-") {
			t.Errorf("a temporary file of the cut push is left: %s", p)
		}
		return nil
	})
}
