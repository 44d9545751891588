package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
)

// defaultPublicationKey is where the server keeps the key that signs the
// hosts' manifests. It is not the cache key: a cache key may sit on
// builders that sign NARs, and must not be able to say which system a
// host runs.
const defaultPublicationKey = "/var/lib/bento/publication-key.sec"

// publicationFlags are deploy's (and export's) flags for signing
// manifests.
func publicationFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "publication-key", Value: defaultPublicationKey, EnvVars: []string{"BENTO_PUBLICATION_KEY"},
			Usage: "the key that signs every manifest (bento keygen --publication); when it exists, manifests are signed and hosts that pin its public key refuse any other"},
		&cli.StringFlag{Name: "next-publication-key", EnvVars: []string{"BENTO_NEXT_PUBLICATION_KEY"},
			Usage: "key rotation: announce this public key (name:base64, or the .pub file) in every manifest; hosts pin it when they apply one (docs/mirrors.md)"},
	}
}

// publicationKeys reads the signing key (nil when the default file does
// not exist and none was named) and the next key to announce.
func publicationKeys(c *cli.Context) (*manifest.SigningKey, string, error) {
	key, err := publicationSigningKey(c)
	if err != nil {
		return nil, "", err
	}
	next := strings.TrimSpace(c.String("next-publication-key"))
	if next == "" {
		return key, next, nil
	}
	if next, err = nextPublicationKey(next); err != nil {
		return nil, "", err
	}
	if key == nil {
		return nil, "", usageError("--next-publication-key needs --publication-key: the next key is announced under the current key's signature")
	}
	return key, next, nil
}

// publicationSigningKey reads --publication-key: nil when the default
// file does not exist and none was named.
func publicationSigningKey(c *cli.Context) (*manifest.SigningKey, error) {
	file := c.String("publication-key")
	data, err := readSmall(file, 4096)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !c.IsSet("publication-key"):
		return nil, nil
	case err != nil:
		return nil, usageError("--publication-key %s: %w (create it with bento keygen --publication)", file, err)
	}
	k, err := manifest.ParseSigningKey(string(data))
	if err != nil {
		return nil, usageError("--publication-key %s: %w", file, err)
	}
	return &k, nil
}

// nextPublicationKey reads --next-publication-key, a key or a file
// holding one, in the form manifests announce it.
func nextPublicationKey(next string) (string, error) {
	if strings.HasPrefix(next, "/") || strings.HasPrefix(next, ".") {
		data, err := readSmall(next, 4096)
		if err != nil {
			return "", usageError("--next-publication-key %s: %w", next, err)
		}
		next = strings.TrimSpace(string(data))
	}
	k, err := manifest.ParsePublicationKey(next)
	if err != nil {
		return "", usageError("--next-publication-key: %w", err)
	}
	return k.String(), nil
}

func readSmall(file string, max int64) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data := make([]byte, max+1)
	n, err := f.Read(data)
	if err != nil {
		return nil, err
	}
	if int64(n) > max {
		return nil, fmt.Errorf("over %d bytes: not a key", max)
	}
	return data[:n], nil
}

// writePublicationKey makes a new publication key pair; an existing
// secret key is never replaced.
func writePublicationKey(name, sec, pub string) (manifest.PublicationKey, error) {
	if _, err := os.Lstat(sec); err == nil {
		return manifest.PublicationKey{}, fmt.Errorf("%s exists: bento never replaces a key; to rotate, write the new one elsewhere (--secret-key) and follow docs/mirrors.md, Signing keys", sec)
	}
	k, err := manifest.GenerateSigningKey(name)
	if err != nil {
		return manifest.PublicationKey{}, err
	}
	if err := atomicfile.WriteFile(sec, []byte(k.String()+"\n"), 0o600); err != nil {
		return manifest.PublicationKey{}, err
	}
	if err := atomicfile.WriteFile(pub, []byte(k.Public().String()+"\n"), 0o644); err != nil {
		return manifest.PublicationKey{}, err
	}
	return k.Public(), nil
}
