package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

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
