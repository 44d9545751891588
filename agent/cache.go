package agent

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"

	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/sftpcache"
)

// serverCache serves, for one realisation, the binary cache the manifest
// announces in the host's chroot (see docs/cache.md): an HTTP cache on
// 127.0.0.1 read through the tick's SFTP session. It returns the
// configuration to realise with (the cache added to the substituters, its
// key to the trusted keys) and done, to call with the realisation's error:
// done stops the cache and returns the bytes read from the server and the
// error, naming any file Nix refused. Without a cache, or when it cannot be
// served, the configuration is the host's own.
func (t *tick) serverCache(ctx context.Context, m *manifest.Manifest, log *logBuffer) (cfg *Config, done func(error) (int64, error)) {
	own := t.cfg
	none := func(err error) (int64, error) { return 0, err }
	if m.Cache == nil || t.getConn() == nil {
		return &own, none
	}
	if t.local != nil {
		return t.bundleCache(m, log)
	}
	conn, ok := t.getConn().(*transport.Conn)
	if !ok {
		return &own, none
	}
	srv, err := sftpcache.ServeManifest(ctx, conn.SFTP(), m.Cache, t.log)
	if err != nil {
		log.Printf("warning: not using the server's binary cache: %v", err)
		return &own, none
	}
	c := t.cfg
	c.Substituters = append(slices.Clip(c.Substituters), srv.URL)
	if m.Cache.PublicKey != "" {
		c.TrustedPublicKeys = append(slices.Clip(c.TrustedPublicKeys), m.Cache.PublicKey)
	}
	log.Printf("substituting from this host's binary cache on the server (%s/ in the chroot, key %s)", m.Cache.Dir, keyName(m.Cache.PublicKey))
	return &c, func(err error) (int64, error) {
		srv.Close()
		st := srv.Stats()
		log.Printf("binary cache: %d bytes from the server (%d NARs, %d narinfos)", st.Bytes, st.NARs, st.Narinfos)
		return st.Bytes, srv.Explain(err)
	}
}

func keyName(k string) string {
	for i := range k {
		if k[i] == ':' {
			return k[:i]
		}
	}
	return "none"
}

// maxBundleCacheFiles bounds the walk over a bundle's cache.
const maxBundleCacheFiles = 1 << 20

// bundleCache substitutes from an offline bundle's cache directory, a
// file:// binary cache, after checking that it holds only directories and
// regular files: Nix follows symlinks and would open a FIFO, and the
// bundle is as hostile as any server. What Nix takes from it is checked
// against the cache key the (verified) manifest names.
func (t *tick) bundleCache(m *manifest.Manifest, log *logBuffer) (*Config, func(error) (int64, error)) {
	own := t.cfg
	none := func(err error) (int64, error) { return 0, err }
	if err := manifest.ValidatePath(m.Cache.Dir); err != nil {
		log.Printf("warning: not using the bundle's binary cache: %v", err)
		return &own, none
	}
	dir := filepath.Join(t.local.Dir(), filepath.FromSlash(m.Cache.Dir))
	var size int64
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n++; n > maxBundleCacheFiles {
			return fmt.Errorf("over %d files", maxBundleCacheFiles)
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file (%s)", p, d.Type())
		}
		if fi, err := d.Info(); err == nil {
			size += fi.Size()
		}
		return nil
	})
	if err != nil {
		log.Printf("warning: not using the bundle's binary cache: %v", err)
		return &own, none
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return &own, none
	}
	c := t.cfg
	c.Substituters = append(slices.Clip(c.Substituters), "file://"+abs)
	if m.Cache.PublicKey != "" {
		c.TrustedPublicKeys = append(slices.Clip(c.TrustedPublicKeys), m.Cache.PublicKey)
	}
	log.Printf("substituting from the bundle's binary cache (%s, %d bytes, key %s)", abs, size, keyName(m.Cache.PublicKey))
	return &c, none
}
