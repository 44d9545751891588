package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// GenerateKey makes the fleet's signing key pair with nix key
// generate-secret: secretFile (0600) signs the pool, publicFile holds
// "name:base64" for the hosts' trusted-public-keys. It never overwrites an
// existing secret key: every host trusts its public half, so losing it
// silently would stop every host from fetching.
func GenerateKey(ctx context.Context, r *nix.Runner, name, secretFile, publicFile string) (narinfo.PublicKey, error) {
	if err := checkNewKey(name, secretFile, publicFile); err != nil {
		return narinfo.PublicKey{}, err
	}
	out, err := r.Run(ctx, nix.Cmd{Args: []string{"--extra-experimental-features", "nix-command", "key", "generate-secret", "--key-name", name}})
	if err != nil {
		return narinfo.PublicKey{}, fmt.Errorf("generating the signing key: %w", err)
	}
	secret := strings.TrimSpace(string(out))
	pub, err := narinfo.PublicFromSecret(secret)
	if err != nil {
		return narinfo.PublicKey{}, fmt.Errorf("nix key generate-secret printed something unexpected: %w", err)
	}
	if err := writeKeyPair(secretFile, publicFile, secret, pub); err != nil {
		return narinfo.PublicKey{}, err
	}
	return pub, nil
}

// checkNewKey refuses a key name or key files GenerateKey cannot use,
// and an existing secret key.
func checkNewKey(name, secretFile, publicFile string) error {
	if name == "" || strings.ContainsAny(name, ": \t\n") {
		return fmt.Errorf("key name %q: must be non-empty without spaces or ':' (e.g. bento.example.org-1)", name)
	}
	if secretFile == "" || publicFile == "" {
		return errors.New("key files: both the secret and the public key file are required")
	}
	if filepath.Clean(secretFile) == filepath.Clean(publicFile) {
		return fmt.Errorf("key files: the secret and the public key cannot both be %s", secretFile)
	}
	if _, err := os.Lstat(secretFile); err == nil {
		return fmt.Errorf("secret key %s already exists: bento keygen never replaces a signing key that hosts trust; to rotate, move it away first and redeploy", secretFile)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("secret key: %w", err)
	}
	return nil
}

// writeKeyPair writes the key pair: secret to secretFile (never replacing
// one), its public half pub to publicFile.
func writeKeyPair(secretFile, publicFile, secret string, pub narinfo.PublicKey) error {
	for _, f := range []string{secretFile, publicFile} {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return fmt.Errorf("key files: %w", err)
		}
	}
	// The public half first: a crash in between leaves no secret, so the
	// next run simply starts again.
	if err := atomicfile.WriteFile(publicFile, []byte(pub.String()+"\n"), 0o644); err != nil {
		return fmt.Errorf("public key: %w", err)
	}
	if err := atomicfile.WriteNew(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("secret key: %w", err)
	}
	return nil
}

// PublicKey derives the public half of the pool's signing key.
func (p *Pool) PublicKey() (narinfo.PublicKey, error) {
	if p.SecretKeyFile == "" {
		return narinfo.PublicKey{}, errors.New("cache pool: no signing key set: create one with bento keygen")
	}
	secret, err := os.ReadFile(p.SecretKeyFile)
	if err != nil {
		return narinfo.PublicKey{}, fmt.Errorf("cache signing key: %w (create one with bento keygen)", err)
	}
	k, err := narinfo.PublicFromSecret(string(secret))
	if err != nil {
		return narinfo.PublicKey{}, fmt.Errorf("cache signing key %s: %w", p.SecretKeyFile, err)
	}
	return k, nil
}

// Manifest is what a host's manifest announces once LinkHost filled its
// cache: where the cache is in the chroot and the key that signed it.
func (p *Pool) Manifest() (*manifest.Cache, error) {
	k, err := p.PublicKey()
	if err != nil {
		return nil, err
	}
	return &manifest.Cache{Dir: manifest.CacheDir, PublicKey: k.String()}, nil
}
