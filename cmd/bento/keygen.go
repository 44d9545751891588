package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/cache"
)

// defaultCacheKey is where the server keeps the fleet's signing key.
const defaultCacheKey = "/var/lib/bento/cache-key.sec"

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "create the signing key of the binary cache the server gives each host",
		Description: "Creates the key pair that signs every path bento puts in the hosts' chroots\n" +
			"(nix key generate-secret). The secret key stays on the server (mode 0600);\n" +
			"the public key is printed and published in every manifest. An existing\n" +
			"secret key is never replaced: move it away first to rotate it.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "name", Usage: "key name hosts see in trusted-public-keys (default: <hostname>-bento-1)"},
			&cli.StringFlag{Name: "secret-key", Value: defaultCacheKey, Usage: "where to write the secret key", EnvVars: []string{"BENTO_CACHE_KEY"}},
			&cli.StringFlag{Name: "public-key", Usage: "where to write the public key (default: the secret key's path with .pub)"},
			&cli.BoolFlag{Name: "publication", Usage: "make the key that signs the hosts' manifests instead (default " + defaultPublicationKey + "; hosts pin it in services.bento.publicationKey)"},
		},
		Action: runKeygen,
	}
}

func runKeygen(c *cli.Context) error {
	if c.Args().Present() {
		return usageError("keygen takes no arguments (got %q); use --name, --secret-key and --public-key", c.Args().First())
	}
	name, err := keygenName(c)
	if err != nil {
		return err
	}
	sec := c.String("secret-key")
	if c.Bool("publication") && !c.IsSet("secret-key") {
		sec = defaultPublicationKey
	}
	pub := c.String("public-key")
	if pub == "" {
		pub = strings.TrimSuffix(sec, ".sec") + ".pub"
	}
	if c.Bool("publication") {
		key, err := writePublicationKey(name, sec, pub)
		if err != nil {
			return failed(err)
		}
		fmt.Fprintln(c.App.Writer, key.String())
		fmt.Fprintf(c.App.ErrWriter, "bento: wrote the publication key to %s (keep it on this server; mirrors never need it) and its public key to %s: set services.bento.publicationKey to it on the hosts\n", sec, pub)
		return nil
	}
	key, err := cache.GenerateKey(c.Context, nixRunner(c), name, sec, pub)
	if err != nil {
		return failed(err)
	}
	fmt.Fprintln(c.App.Writer, key.String())
	fmt.Fprintf(c.App.ErrWriter, "bento: wrote the secret key to %s (keep it on this server) and the public key to %s\n", sec, pub)
	return nil
}

// keygenName is --name, by default <hostname>-bento-1.
func keygenName(c *cli.Context) (string, error) {
	if name := c.String("name"); name != "" {
		return name, nil
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "", usageError("cannot tell this machine's hostname (%v): pass --name", err)
	}
	return h + "-bento-1", nil
}
