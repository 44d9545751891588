package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/atomicfile"
)

// The host cache lets shell completion offer the fleet's host names and
// @tags without evaluating anything: commands that evaluate the fleet
// (hosts, deploy) leave the names in
// $XDG_CACHE_HOME/bento/hosts-<hash of the flake>.json, and completion
// only reads that file. It is a convenience: a missing, stale or broken
// cache means fewer candidates, never an error.

// hostCacheMax bounds what completion reads: a fleet of 10 000 hosts with
// long names and tags fits; anything bigger is not a cache bento wrote.
const hostCacheMax = 4 << 20

// tagRE is what completion accepts as a tag: words the shell inserts as
// they are (no spaces, quotes, globs or control characters).
var tagRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:+-]*$`)

type hostCache struct {
	Flake string   `json:"flake"`
	Hosts []string `json:"hosts"`
	Tags  []string `json:"tags"`
}

// hostCacheDir is where the cache files live: $XDG_CACHE_HOME/bento, or
// ~/.cache/bento.
func hostCacheDir() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "bento"), nil
}

// cacheFlakeKey names a flake the same way from any directory: a local
// path becomes absolute ("." in the fleet's checkout and its absolute
// path share a cache); a reference with a scheme (github:o/r, git+https://…)
// stays as written.
func cacheFlakeKey(ref string) string {
	if ref == "" {
		ref = "."
	}
	if i := strings.IndexAny(ref, ":/"); i >= 0 && ref[i] == ':' {
		return ref
	}
	if abs, err := filepath.Abs(ref); err == nil {
		return abs
	}
	return ref
}

func hostCachePath(dir, ref string) string {
	sum := sha256.Sum256([]byte(cacheFlakeKey(ref)))
	return filepath.Join(dir, "hosts-"+hex.EncodeToString(sum[:8])+".json")
}

// writeHostCache records f's host names and tags for completion. A
// failure (read-only home, full disk) is logged and otherwise ignored: the
// command's own work must not fail for it. The file is replaced
// atomically (temp, fsync, rename), so kill -9 leaves the old cache or the
// new one, never half of one.
func writeHostCache(c *cli.Context, f *fleet.Fleet) {
	if f == nil {
		return
	}
	dir, err := hostCacheDir()
	if err == nil {
		ref, _ := flakeRef(c)
		err = saveHostCache(dir, ref, f)
	}
	if err != nil {
		logger(c).Debug("completion cache not written", "err", err)
	}
}

func saveHostCache(dir, ref string, f *fleet.Fleet) error {
	hc := hostCache{Flake: cacheFlakeKey(ref), Hosts: []string{}, Tags: []string{}}
	for _, h := range f.Hosts {
		if fleet.ValidateName(h.Name) == nil {
			hc.Hosts = append(hc.Hosts, h.Name)
		}
		for _, t := range h.Options.Tags {
			if tagRE.MatchString(t) && !slices.Contains(hc.Tags, t) {
				hc.Tags = append(hc.Tags, t)
			}
		}
	}
	slices.Sort(hc.Hosts)
	slices.Sort(hc.Tags)
	data, err := json.Marshal(hc)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("completion cache: %w", err)
	}
	path := hostCachePath(dir, ref)
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("completion cache %s: %w", path, err)
	}
	return nil
}

// loadHostCache reads the cache of ref, or returns an empty one. It never
// blocks: the file is opened non-blocking and must be a regular file (a
// FIFO put in its place would otherwise hang the shell), and at most
// hostCacheMax bytes are read. Every name is checked again, since the
// shell inserts them as typed words.
func loadHostCache(dir, ref string) hostCache {
	var hc hostCache
	fd, err := os.OpenFile(hostCachePath(dir, ref), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return hc
	}
	defer fd.Close()
	if st, err := fd.Stat(); err != nil || !st.Mode().IsRegular() || st.Size() > hostCacheMax {
		return hostCache{}
	}
	data, err := io.ReadAll(io.LimitReader(fd, hostCacheMax+1))
	if err != nil || len(data) > hostCacheMax || json.Unmarshal(data, &hc) != nil || hc.Flake != cacheFlakeKey(ref) {
		return hostCache{}
	}
	hc.Hosts = slices.DeleteFunc(hc.Hosts, func(n string) bool { return fleet.ValidateName(n) != nil })
	hc.Tags = slices.DeleteFunc(hc.Tags, func(t string) bool { return !tagRE.MatchString(t) })
	return hc
}
