package deploy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/cache"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/secrets"
)

// Plan is what a deploy publishes: a row for every host, and a target for
// each host that is still to publish (targetRow maps each target to its
// row). A host whose build failed (unless Force) or whose tree or secrets
// cannot be read has its failed row already.
type Plan struct {
	Rows      []Row
	Targets   []publish.Target
	targetRow []int
	// Warnings are about secrets the hosts declare but the secrets
	// directory lacks, or that are exposed.
	Warnings []string
}

// NewPlan turns the hosts and their builds (none: no build ran) into
// publish targets of the fleet in dir.
func NewPlan(hosts []fleet.Host, builds []builder.Result, dir string, opts Options) *Plan {
	byHost := map[string]builder.Result{}
	for _, b := range builds {
		byHost[b.Host] = b
	}
	p := &Plan{Rows: make([]Row, len(hosts))}
	for i, h := range hosts {
		t, err := p.target(&p.Rows[i], h, byHost, dir, opts)
		if err != nil {
			p.Rows[i].Result = failedResult(h.Name, err)
			continue
		}
		p.Targets = append(p.Targets, t)
		p.targetRow = append(p.targetRow, i)
	}
	return p
}

func (p *Plan) target(row *Row, h fleet.Host, builds map[string]builder.Result, dir string, opts Options) (publish.Target, error) {
	row.Host = h.Name
	b, built := builds[h.Name]
	if built {
		if err := row.noteBuild(b, opts.Force); err != nil {
			return publish.Target{}, err
		}
	}
	src, err := opts.sourceFor(h, dir)
	if err != nil {
		return publish.Target{}, err
	}
	t := publish.Target{Host: h, Source: src}
	if built && !row.BuildFailed {
		t.ExpectedToplevel = b.OutPath
	}
	if opts.SecretsDir != "" {
		extra, ws, err := secretsExtra(opts.SecretsDir, h, opts.secretsOwner(h))
		p.Warnings = append(p.Warnings, ws...)
		if err != nil {
			return publish.Target{}, err
		}
		t.Extra = extra
	}
	return t, nil
}

// noteBuild puts the host's build b in its row; its error: the build
// failed and, without force, the host is not published.
func (row *Row) noteBuild(b builder.Result, force bool) error {
	row.Build = &b
	switch {
	case b.Status == builder.StatusBuilt && b.CopyErr != nil:
		// Built, so published; but the cache the host may rely on
		// lacks it, which the exit status reports.
		row.CopyError = b.Reason()
	case !b.OK():
		row.BuildFailed = true
		if !force {
			return errors.New(b.Reason())
		}
	}
	return nil
}

// sourceFor is the source of host h (Options.Source, or the fleet's local
// directory dir).
func (opts Options) sourceFor(h fleet.Host, dir string) (publish.Source, error) {
	if opts.Source != nil {
		return opts.Source(h)
	}
	return publish.SourceFor(h, dir)
}

// secretsOwner is the account host h's published secrets belong to, ""
// for nobody.
func (opts Options) secretsOwner(h fleet.Host) string {
	switch {
	case opts.SecretsOwner != nil:
		return opts.SecretsOwner(h)
	case opts.Users:
		return h.Options.User
	}
	return ""
}

// fail replaces target j by a failed row.
func (p *Plan) fail(j int, err error) {
	p.Rows[p.targetRow[j]].Result = failedResult(p.Targets[j].Host.Name, err)
}

func (p *Plan) publish(ctx context.Context, pub *publish.Publisher) {
	for j, r := range pub.Publish(ctx, p.Targets) {
		p.Rows[p.targetRow[j]].Result = r
	}
}

// secretsExtra is what publish needs to ship host h's secrets from dir,
// nil when it has none, and warnings about secrets the host declares
// (services.bento.secrets) but dir lacks. The published files belong to
// the account owner ("" for nobody).
func secretsExtra(dir string, h fleet.Host, owner string) (*publish.Extra, []string, error) {
	files, err := secrets.Collect(dir, h.Name)
	if err != nil {
		return nil, nil, fmt.Errorf("secrets: %w", err)
	}
	warnings := secrets.Exposed(dir, h.Name, files)
	for _, name := range h.Options.Secrets {
		if !slices.ContainsFunc(files, func(f manifest.File) bool { return secrets.Name(f.Path) == name }) {
			warnings = append(warnings, fmt.Sprintf("host %s declares services.bento.secrets.%s, but %s/%s/%s does not exist: the host will not get it", h.Name, name, dir, h.Name, name))
		}
	}
	if len(files) == 0 {
		return nil, warnings, nil
	}
	own := secrets.NoOwner
	if owner != "" {
		if own, err = secrets.LookupOwner(owner); err != nil {
			return nil, warnings, fmt.Errorf("secrets: %w", err)
		}
	}
	return &publish.Extra{Files: files, Write: func(ctx context.Context, d string) error {
		return secrets.Write(ctx, d, dir, h.Name, files, own)
	}}, warnings, nil
}

// PoolDir is the binary-cache pool's default place: inside the chroot
// root, so on its filesystem (host caches are hard links), but in no
// host's chroot (a host name cannot start with a dot).
const PoolDir = ".bento-cache-pool"

// CacheOptions are the per-host binary caches'.
type CacheOptions struct {
	// Key is the fleet's signing key file. When it does not exist, the
	// caches stay off, unless KeyRequired (it was named explicitly).
	Key         string
	KeyRequired bool
	// Pool is where the fleet's signed NARs are kept once, on the chroot
	// root's filesystem; "" is <root>/PoolDir.
	Pool string
}

// cachePool is the pool a deploy fills; nil fills none.
type cachePool struct{ *cache.Pool }

func openPool(o CacheOptions, root string, r *nix.Runner, log *slog.Logger) (*cachePool, error) {
	if _, err := os.Stat(o.Key); err != nil {
		if errors.Is(err, fs.ErrNotExist) && !o.KeyRequired {
			return nil, nil
		}
		return nil, fmt.Errorf("--cache-key: %w (create it with bento keygen, or pass --no-cache)", err)
	}
	dir := o.Pool
	if dir == "" {
		dir = filepath.Join(root, PoolDir)
	}
	return &cachePool{&cache.Pool{Dir: dir, Nix: r, SecretKeyFile: o.Key, Log: log}}, nil
}

// fillCaches links each target's cache (one nix copy for the fleet, then
// hard links per host) and announces it in the target's manifest. A host
// whose cache fails is not published: its live manifest and cache stay as
// they were, and its row says why.
func (p *Plan) fillCaches(ctx context.Context, pool *cachePool, root string) {
	if pool == nil {
		return
	}
	mc, err := pool.Manifest()
	var ct []cache.Target
	for _, t := range p.Targets {
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
		_, errs = pool.LinkFleet(ctx, ct)
	}
	var keep []publish.Target
	var keepRow []int
	for j, t := range p.Targets {
		if err := errs[t.Host.Name]; err != nil {
			p.fail(j, fmt.Errorf("binary cache: %w", err))
			continue
		}
		if t.ExpectedToplevel != "" {
			t.Cache = &manifest.Cache{Dir: mc.Dir, PublicKey: mc.PublicKey}
		}
		keep = append(keep, t)
		keepRow = append(keepRow, p.targetRow[j])
	}
	p.Targets, p.targetRow = keep, keepRow
}

// prune frees the pool entries no host cache links any more, once the
// new manifests are live. A failure only wastes disk: a warning.
func (pool *cachePool) prune(ctx context.Context) []string {
	if pool == nil {
		return nil
	}
	if _, err := pool.Prune(ctx, nil); err != nil {
		return []string{fmt.Sprintf("binary cache: pruning the pool: %v", err)}
	}
	return nil
}
