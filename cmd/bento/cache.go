package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/cache"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
)

// cachePoolDir is the pool's default place: inside the chroot root, so on
// its filesystem (host caches are hard links), but in no host's chroot (a
// host name cannot start with a dot).
const cachePoolDir = ".bento-cache-pool"

// cacheFlags are deploy's flags for the per-host binary caches.
func cacheFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "cache-key", Value: defaultCacheKey, EnvVars: []string{"BENTO_CACHE_KEY"},
			Usage: "the fleet's signing key (bento keygen); when it exists, each host's chroot gets a binary cache of its own closure"},
		&cli.StringFlag{Name: "cache-pool", EnvVars: []string{"BENTO_CACHE_POOL"},
			Usage: "where the fleet's signed NARs are kept once, on the chroot root's filesystem (default: <chroot-root>/" + cachePoolDir + ")"},
		&cli.BoolFlag{Name: "no-cache", Usage: "do not fill the hosts' binary caches"},
	}
}

// cachePool returns the pool deploy fills, or nil when the caches are off:
// --no-cache, a dry run, no build, or no key at the default place.
func cachePool(c *cli.Context, root string) (*cache.Pool, error) {
	if c.Bool("no-cache") || c.Bool("dry-run") || c.Bool("no-build") {
		return nil, nil
	}
	key := c.String("cache-key")
	if _, err := os.Stat(key); err != nil {
		if errors.Is(err, fs.ErrNotExist) && !c.IsSet("cache-key") {
			return nil, nil
		}
		return nil, usageError("--cache-key: %w (create it with bento keygen, or pass --no-cache)", err)
	}
	dir := c.String("cache-pool")
	if dir == "" {
		dir = filepath.Join(root, cachePoolDir)
	}
	return &cache.Pool{Dir: dir, Nix: nixRunner(c), SecretKeyFile: key, Log: logger(c)}, nil
}

// fillCaches links each target's cache (one nix copy for the fleet, then
// hard links per host) and announces it in the target's manifest. A host
// whose cache fails is not published: its live manifest and cache stay as
// they were, and its row says why. It returns the targets to publish.
func fillCaches(c *cli.Context, pool *cache.Pool, root string, targets []publish.Target, targetRow []int, rows []deployRow) ([]publish.Target, []int) {
	if pool == nil {
		return targets, targetRow
	}
	mc, err := pool.Manifest()
	var ct []cache.Target
	for _, t := range targets {
		if t.ExpectedToplevel != "" {
			ct = append(ct, cache.Target{Host: t.Host.Name, Dir: filepath.Join(root, t.Host.Name), Toplevel: t.ExpectedToplevel})
		}
	}
	errs := map[string]error{}
	if err != nil {
		for _, t := range ct {
			errs[t.Host] = err
		}
	} else if len(ct) > 0 {
		_, errs = pool.LinkFleet(c.Context, ct)
	}
	var keep []publish.Target
	var keepRow []int
	for j, t := range targets {
		if err := errs[t.Host.Name]; err != nil {
			rows[targetRow[j]].Result = publish.Result{Host: t.Host.Name, Status: publish.StatusFailed, Err: fmt.Errorf("binary cache: %w", err)}
			continue
		}
		if t.ExpectedToplevel != "" {
			t.Cache = &manifest.Cache{Dir: mc.Dir, PublicKey: mc.PublicKey}
		}
		keep = append(keep, t)
		keepRow = append(keepRow, targetRow[j])
	}
	return keep, keepRow
}

// pruneCache frees the pool entries no host cache links any more, once
// the new manifests are live. A failure only wastes disk: a warning.
func pruneCache(c *cli.Context, pool *cache.Pool) []string {
	if pool == nil {
		return nil
	}
	if _, err := pool.Prune(c.Context, nil); err != nil {
		return []string{fmt.Sprintf("binary cache: pruning the pool: %v", err)}
	}
	return nil
}
