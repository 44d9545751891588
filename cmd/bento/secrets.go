package main

import (
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/secrets"
)

// secretsDirFlag is deploy's --secrets-dir.
func secretsDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "secrets-dir", Usage: "per-host secrets, as <dir>/<host>/<name> (default: secrets/ next to the flake, which git must not track)", EnvVars: []string{"BENTO_SECRETS_DIR"}}
}

// guardSecrets refuses, before anything evaluates the fleet, a secrets
// directory that Nix would copy into its world-readable store, and returns
// the secrets directory ("" when there is none).
func guardSecrets(c *cli.Context) (string, error) { return guardSecretsNote(c, true) }

// guardSecretsNote is guardSecrets, printing its advice only when note is
// set (once per command).
func guardSecretsNote(c *cli.Context, note bool) (string, error) {
	flag := c.String("secrets-dir")
	if flag == "" {
		// Commands without the flag still evaluate the fleet: check the
		// directory deploy would use.
		flag = os.Getenv("BENTO_SECRETS_DIR")
	}
	ref, _ := flakeRef(c)
	dir, advice, err := secrets.Guard(c.Context, ref, flag)
	if err != nil {
		return "", usageError("%w", err)
	}
	if note && advice != "" {
		fmt.Fprintln(errWriter(c), "bento: warning:", advice)
	}
	return dir, nil
}

// secretsExtra is what publish needs to ship host h's secrets from dir,
// nil when it has none, and warnings about secrets the host declares
// (services.bento.secrets) but dir lacks. With owned, the published files
// belong to the host's SFTP user.
func secretsExtra(dir string, h fleet.Host, owned bool) (*publish.Extra, []string, error) {
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
	owner := secrets.NoOwner
	if owned {
		if owner, err = secrets.LookupOwner(h.Options.User); err != nil {
			return nil, warnings, fmt.Errorf("secrets: %w", err)
		}
	}
	return &publish.Extra{Files: files, Write: func(ctx context.Context, d string) error {
		return secrets.Write(ctx, d, dir, h.Name, files, owner)
	}}, warnings, nil
}
