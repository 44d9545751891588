package agent

import (
	"context"
	"slices"

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
	conn := t.getConn()
	if m.Cache == nil || conn == nil {
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
