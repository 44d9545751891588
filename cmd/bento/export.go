package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/secrets"
	"github.com/bento-nix/bento/status"
)

// An offline bundle is a copy of one host's chroot as the host reads it:
// manifest.json (signed, byte for byte the live one), the objects and
// secrets it names, and its binary cache; the agent applies it with
// "bento agent apply-bundle" exactly as a tick over SFTP, and writes its
// report into the bundle's reports/, which "bento import-reports" brings
// to the server.

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write an offline bundle per host (for a USB stick): its signed publication, objects, secrets and binary cache",
		ArgsUsage: "HOST...",
		Description: "Copies each host's live publication from its chroot into DIR/<host>/, the layout\n" +
			"the agent reads over SFTP: manifest.json (as published, signed), the objects it\n" +
			"names (each checked against its sha256), its secrets and the binary cache of its\n" +
			"closure. On the host, \"bento agent apply-bundle DIR/<host>\" applies it like a\n" +
			"tick and writes its report into the bundle; \"bento import-reports\" on the server\n" +
			"records it. Secrets are copied as published: age-encrypted ones are ciphertext, plain\n" +
			"ones are refused unless --include-plain-secrets. An unsigned publication is refused\n" +
			"unless --allow-unsigned (hosts that pin a publication key would refuse it anyway).\n" +
			"Exits 1 when any host could not be exported.",
		Flags: []cli.Flag{
			chrootRootFlag(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "the directory that receives one bundle directory per host"},
			&cli.BoolFlag{Name: "include-plain-secrets", Usage: "copy secrets that are not age-encrypted too (they are then in clear text on the medium)"},
			&cli.BoolFlag{Name: "allow-unsigned", Usage: "export a publication that is not signed (bento deploy --publication-key)"},
		},
		Action: func(c *cli.Context) error {
			if !c.Args().Present() {
				return usageError("export needs the hosts to export (bento export alpha beta --output /media/usb)")
			}
			out := c.String("output")
			if err := os.MkdirAll(out, 0o755); err != nil {
				return usageError("--output: %w", err)
			}
			opts := exportOptions{plainSecrets: c.Bool("include-plain-secrets"), unsigned: c.Bool("allow-unsigned")}
			var errs []error
			for _, host := range c.Args().Slice() {
				sum, err := exportHost(c.Context, c.String("chroot-root"), host, out, opts)
				if err != nil {
					errs = append(errs, fmt.Errorf("host %s: export: %w", host, err))
					continue
				}
				fmt.Fprintf(c.App.Writer, "bento: %s: bundle %s (version %s, sequence %d, %d objects, %d secrets, %d cache files, %d bytes)\n",
					host, sum.dir, sum.version, sum.sequence, sum.objects, sum.secrets, sum.cacheFiles, sum.bytes)
			}
			if len(errs) > 0 {
				return failed(errors.Join(errs...))
			}
			return nil
		},
	}
}

type exportOptions struct {
	plainSecrets, unsigned bool
}

type exportSummary struct {
	dir, version                 string
	sequence                     uint64
	objects, secrets, cacheFiles int
	bytes                        int64
}

// maxCacheFiles bounds what one bundle's cache copy walks.
const maxCacheFiles = 1 << 20

// exportHost writes root/host's publication into out/host: into a
// temporary directory beside it first, synced, then renamed, so that an
// interrupted export leaves the previous bundle (or none), never half
// of one.
func exportHost(ctx context.Context, root, host, out string, opts exportOptions) (exportSummary, error) {
	sum := exportSummary{dir: filepath.Join(out, host)}
	if err := fleet.ValidateName(host); err != nil {
		return sum, err
	}
	chroot, err := os.OpenRoot(filepath.Join(root, host))
	if err != nil {
		return sum, fmt.Errorf("no chroot: %w (bento status lists the hosts; --chroot-root sets the root)", err)
	}
	defer chroot.Close()
	data, m, err := readExportManifest(chroot, host, opts)
	if err != nil {
		return sum, err
	}
	sum.version, sum.sequence = m.Version, m.Sequence
	tmp, err := makeBundleTemp(out, host)
	if err != nil {
		return sum, err
	}
	defer os.RemoveAll(tmp)
	if err := copyPublication(ctx, chroot, m, tmp, &sum); err != nil {
		return sum, err
	}
	// The manifest last, byte for byte: its signature covers it.
	if err := os.WriteFile(filepath.Join(tmp, manifest.ManifestFile), data, 0o644); err != nil {
		return sum, err
	}
	sum.bytes += int64(len(data))
	if err := syncDir(tmp); err != nil {
		return sum, err
	}
	if err := replaceDir(tmp, sum.dir); err != nil {
		return sum, err
	}
	return sum, nil
}

// readExportManifest reads the chroot's manifest and refuses what the
// bundle must not carry: another host's, an unsigned one, plain secrets
// (each unless opts allows it).
func readExportManifest(chroot *os.Root, host string, opts exportOptions) ([]byte, *manifest.Manifest, error) {
	data, err := readRootFile(chroot, manifest.ManifestFile, manifest.MaxSize)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w (deploy the host first)", manifest.ManifestFile, err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return nil, nil, err
	}
	if m.Host != host {
		return nil, nil, fmt.Errorf("its %s names host %q", manifest.ManifestFile, m.Host)
	}
	if m.Signature == nil && !opts.unsigned {
		return nil, nil, errors.New("its publication is not signed: deploy with --publication-key (bento keygen --publication), or pass --allow-unsigned for hosts that pin no publication key")
	}
	if plain := plainSecrets(m); len(plain) > 0 && !opts.plainSecrets {
		return nil, nil, fmt.Errorf("secrets %s are not age-encrypted: the bundle would carry them in clear text; encrypt them (docs/secrets.md) or pass --include-plain-secrets", strings.Join(plain, ", "))
	}
	return data, m, nil
}

// plainSecrets lists the paths of m's secrets that are not age-encrypted.
func plainSecrets(m *manifest.Manifest) []string {
	var plain []string
	for _, f := range m.Secrets {
		if !secrets.Encrypted(f.Path) {
			plain = append(plain, f.Path)
		}
	}
	return plain
}

// makeBundleTemp makes the temporary directory beside out/host that the
// bundle is written into.
func makeBundleTemp(out, host string) (string, error) {
	// What an export killed earlier left (its temporary directory, or
	// the previous bundle moved aside) goes first.
	stale, _ := filepath.Glob(filepath.Join(out, "."+host+".tmp-*"))
	for _, d := range stale {
		os.RemoveAll(d)
	}
	tmp, err := os.MkdirTemp(out, "."+host+".tmp-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	return tmp, nil
}

// copyPublication copies m's objects, secrets and binary cache from the
// chroot to tmp, counting them into sum.
func copyPublication(ctx context.Context, chroot *os.Root, m *manifest.Manifest, tmp string, sum *exportSummary) error {
	copied := map[string]bool{}
	for _, f := range m.Files {
		p := m.RemotePath(f)
		if copied[p] {
			continue
		}
		copied[p] = true
		if err := copyChecked(ctx, chroot, p, tmp, f); err != nil {
			return err
		}
		sum.objects++
		sum.bytes += f.Size
	}
	for _, f := range m.Secrets {
		if err := copyChecked(ctx, chroot, secrets.RemotePath(m.Version, f.Path), tmp, f); err != nil {
			return fmt.Errorf("secret %s: %w", f.Path, err)
		}
		sum.secrets++
		sum.bytes += f.Size
	}
	if m.Cache != nil {
		n, size, err := copyTree(ctx, chroot, m.Cache.Dir, tmp)
		if err != nil {
			return fmt.Errorf("binary cache: %w", err)
		}
		sum.cacheFiles, sum.bytes = n, sum.bytes+size
	}
	return nil
}

func readRootFile(r *os.Root, name string, max int64) ([]byte, error) {
	f, err := openRootRegular(r, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(data)) > max {
		err = fmt.Errorf("%s is over %d bytes", name, max)
	}
	return data, err
}

// openRootRegular opens name below r for reading, refusing anything but
// a regular file (O_NONBLOCK: a FIFO put there does not block the open).
func openRootRegular(r *os.Root, name string) (*os.File, error) {
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	return f, nil
}

// copyChecked copies the chroot file p to dst/p, checking the size and
// sha256 the manifest gives: a bundle never carries what the host would
// refuse.
func copyChecked(ctx context.Context, src *os.Root, p, dst string, f manifest.File) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	in, err := openRootRegular(src, p)
	if err != nil {
		return err
	}
	defer in.Close()
	target := filepath.Join(dst, filepath.FromSlash(p))
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	n, sum, err := copyToNewFile(target, io.LimitReader(in, f.Size+1))
	if err != nil {
		return err
	}
	if n != f.Size || sum != f.SHA256 {
		return fmt.Errorf("%s does not have the content its manifest names (%d bytes, want %d, or another sha256): the chroot is damaged; deploy again", p, n, f.Size)
	}
	return nil
}

// copyToNewFile copies in to target, which must not exist yet, and
// returns the bytes copied and their sha256 in hex.
func copyToNewFile(target string, in io.Reader) (int64, string, error) {
	outf, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return 0, "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(outf, h), in)
	if cerr := outf.Close(); err == nil {
		err = cerr
	}
	return n, hex.EncodeToString(h.Sum(nil)), err
}

// copyTree copies the chroot directory dir (its directories and regular
// files; anything else is refused) to dst/dir.
func copyTree(ctx context.Context, src *os.Root, dir, dst string) (files int, size int64, err error) {
	if err := manifest.ValidatePath(dir); err != nil {
		return 0, 0, err
	}
	err = fs.WalkDir(src.FS(), dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		target := filepath.Join(dst, filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file (%s)", p, d.Type())
		}
		if files++; files > maxCacheFiles {
			return fmt.Errorf("over %d files", maxCacheFiles)
		}
		in, err := src.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		outf, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
		if err != nil {
			return err
		}
		n, err := io.Copy(outf, in)
		if cerr := outf.Close(); err == nil {
			err = cerr
		}
		size += n
		return err
	})
	return files, size, err
}

// syncDir makes everything written under dir durable: one syncfs for
// the file system instead of an fsync per file.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// replaceDir renames tmp to dir; an existing dir (an older bundle) is
// moved aside first and removed after.
func replaceDir(tmp, dir string) error {
	old := ""
	if _, err := os.Lstat(dir); err == nil {
		old = tmp + ".old"
		if err := os.Rename(dir, old); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if old != "" {
			os.Rename(old, dir)
		}
		return err
	}
	if old != "" {
		return os.RemoveAll(old)
	}
	return nil
}

func agentApplyBundleCommand() *cli.Command {
	return &cli.Command{
		Name:      "apply-bundle",
		Usage:     "apply an offline bundle (bento export) as a tick would, without the server",
		ArgsUsage: "DIR",
		Description: "Reads DIR (one host's bundle) instead of connecting to the server, and does what\n" +
			"\"bento agent run\" does with a publication: verify it (services.bento.publicationKey,\n" +
			"sequence, age), fetch, build, switch with the guard, roll back, reboot per policy.\n" +
			"The report goes into DIR/reports/ (or --report DIR2) for bento import-reports.\n" +
			"Exits like bento agent run.",
		Flags: append(append(agentConfigFlags(),
			&cli.StringFlag{Name: "report", Usage: "write the report (status.json, logs/) here instead of into the bundle's reports/ (a read-only medium)"},
		), tickFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError("apply-bundle takes one bundle directory (got %d arguments)", c.NArg())
			}
			cfg, err := agentConfig(c)
			if err != nil {
				return err
			}
			return runAgent(c, cfg, agent.Options{
				Out:       c.App.ErrWriter,
				LockWait:  lockWait(c),
				RetryNow:  c.Bool("now"),
				Bundle:    c.Args().First(),
				ReportDir: c.String("report"),
			})
		},
	}
}

func importReportsCommand() *cli.Command {
	return &cli.Command{
		Name:      "import-reports",
		Usage:     "record the reports hosts wrote into offline bundles, where bento status reads them",
		ArgsUsage: "BUNDLE...",
		Description: "For each bundle directory (bento export, then bento agent apply-bundle on the\n" +
			"host), reads reports/status.json and its log, checks them as any report a host\n" +
			"writes (size, host name: it must be the bundle's host) and puts them into that\n" +
			"host's chroot reports/. A report older than the one the chroot holds is skipped.\n" +
			"Exits 1 when any bundle could not be imported.",
		Flags: []cli.Flag{chrootRootFlag()},
		Action: func(c *cli.Context) error {
			if !c.Args().Present() {
				return usageError("import-reports needs the bundle directories to import")
			}
			var errs []error
			for _, dir := range c.Args().Slice() {
				msg, err := importReport(c.String("chroot-root"), dir)
				if err != nil {
					errs = append(errs, fmt.Errorf("bundle %s: %w", dir, err))
					continue
				}
				fmt.Fprintln(c.App.Writer, "bento: "+msg)
			}
			if len(errs) > 0 {
				return failed(errors.Join(errs...))
			}
			return nil
		},
	}
}

// maxImportedLog bounds a log read from a bundle (the agent caps its
// logs far below).
const maxImportedLog = 64 << 20

// importReport copies a bundle's report (and its log) into its host's
// chroot. Everything in the bundle came back from the host: it is read
// below the bundle with os.Root and checked like a report over SFTP.
func importReport(root, dir string) (string, error) {
	b, err := os.OpenRoot(dir)
	if err != nil {
		return "", err
	}
	defer b.Close()
	host, rep, err := readBundleReport(b)
	if err != nil {
		return "", err
	}
	chroot, err := status.OpenChroot(root, host)
	if err != nil {
		return "", err
	}
	defer chroot.Close()
	if cur, err := status.ReadReport(chroot, host); err == nil && cur.FinishedAt.After(rep.FinishedAt) {
		return fmt.Sprintf("%s: skipped the bundle's report of %s: the server has a newer one (%s)", host, rep.FinishedAt.Format(reportTimeLayout), cur.FinishedAt.Format(reportTimeLayout)), nil
	}
	if err := importLog(b, chroot, host, rep.Log); err != nil {
		return "", err
	}
	if err := writeImportedReport(chroot, rep); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s: imported the report of %s (%s, version %s)", host, rep.FinishedAt.Format(reportTimeLayout), rep.Result, rep.AttemptedVersion), nil
}

// reportTimeLayout is how import-reports prints a report's time.
const reportTimeLayout = "2006-01-02 15:04:05Z07:00"

// readBundleReport reads the bundle's host (from its manifest) and the
// report that host wrote into it.
func readBundleReport(b *os.Root) (string, *manifest.Report, error) {
	data, err := readRootFile(b, manifest.ManifestFile, manifest.MaxSize)
	if err != nil {
		return "", nil, fmt.Errorf("not a bundle: %w", err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return "", nil, err
	}
	rep, err := status.ReadReport(b, m.Host)
	if err != nil {
		return "", nil, fmt.Errorf("host %s: %w", m.Host, err)
	}
	return m.Host, rep, nil
}

// importLog copies the log the report names (if any) from the bundle
// into the chroot's logs.
func importLog(b, chroot *os.Root, host, name string) error {
	if name == "" {
		return nil
	}
	if unsafeLogName(name) {
		return fmt.Errorf("host %s: the report names an unsafe log %q", host, name)
	}
	log, err := readRootFile(b, manifest.LogsDir+"/"+name, maxImportedLog)
	if err != nil {
		return fmt.Errorf("host %s: log: %w", host, err)
	}
	if err := chroot.MkdirAll(manifest.LogsDir, 0o755); err != nil {
		return err
	}
	return writeRootFile(chroot, manifest.LogsDir+"/"+name, log)
}

// unsafeLogName reports whether a log name from a report could reach
// outside the logs directory (or hide in it).
func unsafeLogName(name string) bool {
	return strings.ContainsAny(name, "/\\\x00") || strings.HasPrefix(name, ".") || len(name) > 255 || path.Base(name) != name
}

// writeImportedReport writes rep as the chroot's status file.
func writeImportedReport(chroot *os.Root, rep *manifest.Report) error {
	body, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := writeRootFile(chroot, manifest.StatusFile, append(body, '\n')); err != nil {
		return err
	}
	// status takes an unchanged report's time from its mtime: the time
	// the host wrote it, not the import's.
	if !rep.FinishedAt.IsZero() {
		chroot.Chtimes(manifest.StatusFile, rep.FinishedAt, rep.FinishedAt)
	}
	return nil
}

// writeRootFile replaces name below r atomically (temp, fsync, rename).
// The temporary name is fixed: one a killed import left is removed first.
func writeRootFile(r *os.Root, name string, data []byte) error {
	tmp := path.Join(path.Dir(name), "."+path.Base(name)+".import-tmp")
	r.Remove(tmp)
	return transport.WriteInRoot(r, name, tmp, data)
}
