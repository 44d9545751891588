package main

import (
	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/deploy"
)

// cacheFlags are deploy's flags for the per-host binary caches.
func cacheFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "cache-key", Value: defaultCacheKey, EnvVars: []string{"BENTO_CACHE_KEY"},
			Usage: "the fleet's signing key (bento keygen); when it exists, each host's chroot gets a binary cache of its own closure"},
		&cli.StringFlag{Name: "cache-pool", EnvVars: []string{"BENTO_CACHE_POOL"},
			Usage: "where the fleet's signed NARs are kept once, on the chroot root's filesystem (default: <chroot-root>/" + deploy.PoolDir + ")"},
		&cli.BoolFlag{Name: "no-cache", Usage: "do not fill the hosts' binary caches"},
	}
}
