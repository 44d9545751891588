// Package narinfo reads the small text files of a Nix binary cache
// (<hash>.narinfo) and checks their signatures the way Nix does, so that
// bento can find a closure in a cache without asking Nix, and say which
// file was tampered with when Nix only says "no substituter can build it".
package narinfo

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// MaxSize is the largest narinfo accepted; real ones are well under 4 KiB
// even with hundreds of references.
const MaxSize = 1 << 20

// StoreDir is the only store directory bento serves.
const StoreDir = "/nix/store"

// Info is the part of a narinfo bento uses.
type Info struct {
	StorePath   string // /nix/store/<hash>-<name>
	URL         string // relative to the cache root, e.g. nar/<filehash>.nar.zst
	Compression string // "" means Nix's default for narinfos without it (bzip2)
	FileHash    string // as written, e.g. sha256:<base32>
	FileSize    int64  // 0 when absent
	NarHash     string // as written
	NarSize     int64
	References  []string // base names, <hash>-<name>
	Sigs        []string // keyname:base64
}

var (
	hashPartRE = regexp.MustCompile(`^[0-9abcdfghijklmnpqrsvwxyz]{32}$`)
	baseNameRE = regexp.MustCompile(`^[0-9abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+\-._?=]+$`)
)

// ValidHashPart reports whether s is a store path hash (32 characters of
// Nix's base32 alphabet).
func ValidHashPart(s string) bool { return hashPartRE.MatchString(s) }

// HashPart returns the hash part of a store path or base name, and an error
// if p is not one.
func HashPart(p string) (string, error) {
	base := p
	if strings.HasPrefix(p, "/") {
		if path.Dir(p) != StoreDir {
			return "", fmt.Errorf("%q is not a store path in %s", p, StoreDir)
		}
		base = path.Base(p)
	}
	if !baseNameRE.MatchString(base) {
		return "", fmt.Errorf("%q is not a store path (want %s/<32-character hash>-<name>)", p, StoreDir)
	}
	return base[:32], nil
}

// Parse reads a narinfo. It refuses one that lacks what a substitution
// needs, so that callers never link or serve half an entry.
func Parse(data []byte) (*Info, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("narinfo is %d bytes, over the %d limit", len(data), MaxSize)
	}
	var in Info
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), MaxSize)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		key, val, ok := strings.Cut(line, ": ")
		if !ok {
			return nil, fmt.Errorf("narinfo: malformed line %q", line)
		}
		if err := in.set(key, val); err != nil {
			return nil, fmt.Errorf("narinfo: %s: %w", key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("narinfo: %w", err)
	}
	if err := in.validate(); err != nil {
		return nil, err
	}
	return &in, nil
}

// set records one "Key: value" line; keys Nix may add later are ignored.
func (in *Info) set(key, val string) error {
	var err error
	switch key {
	case "StorePath":
		in.StorePath = val
	case "URL":
		in.URL = val
	case "Compression":
		in.Compression = val
	case "FileHash":
		in.FileHash = val
	case "FileSize":
		in.FileSize, err = strconv.ParseInt(val, 10, 64)
	case "NarHash":
		in.NarHash = val
	case "NarSize":
		in.NarSize, err = strconv.ParseInt(val, 10, 64)
	case "References":
		in.References = strings.Fields(val)
	case "Sig":
		in.Sigs = append(in.Sigs, val)
	}
	return err
}

// validate refuses an entry that lacks what a substitution needs.
func (in *Info) validate() error {
	if _, err := HashPart(in.StorePath); err != nil || !strings.HasPrefix(in.StorePath, "/") {
		return fmt.Errorf("narinfo: bad StorePath %q", in.StorePath)
	}
	if in.URL == "" || in.NarHash == "" || in.NarSize <= 0 {
		return fmt.Errorf("narinfo for %s: URL, NarHash and NarSize are required", in.StorePath)
	}
	for _, r := range in.References {
		if _, err := HashPart(r); err != nil {
			return fmt.Errorf("narinfo for %s: bad reference: %w", in.StorePath, err)
		}
	}
	return nil
}

// Fingerprint is the text a narinfo's signatures sign (Nix's
// ValidPathInfo::fingerprint): the store path, the NAR hash in base32, the
// NAR size and the full paths of the references.
func (in *Info) Fingerprint() (string, error) {
	algo, digest, err := ParseHash(in.NarHash)
	if err != nil {
		return "", fmt.Errorf("narinfo for %s: NarHash: %w", in.StorePath, err)
	}
	refs := make([]string, len(in.References))
	for i, r := range in.References {
		refs[i] = StoreDir + "/" + r
	}
	return fmt.Sprintf("1;%s;%s:%s;%d;%s", in.StorePath, algo, Base32(digest), in.NarSize, strings.Join(refs, ",")), nil
}

// ErrUnsigned means no signature of the narinfo verifies with any of the keys.
var ErrUnsigned = errors.New("not signed by any trusted key")

// Verify checks that at least one of the narinfo's signatures verifies
// with one of keys (each "name:base64", as in trusted-public-keys).
func (in *Info) Verify(keys []PublicKey) error {
	fp, err := in.Fingerprint()
	if err != nil {
		return err
	}
	for _, s := range in.Sigs {
		name, b64, ok := strings.Cut(s, ":")
		if !ok {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(sig) != ed25519.SignatureSize {
			continue
		}
		for _, k := range keys {
			if k.Name == name && ed25519.Verify(k.Key, []byte(fp), sig) {
				return nil
			}
		}
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.Name
	}
	return fmt.Errorf("%s: %w (%s)", in.StorePath, ErrUnsigned, strings.Join(names, ", "))
}

// PublicKey is a named ed25519 key as Nix writes it: "name:base64".
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

func (k PublicKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

// ParsePublicKey reads "name:base64" (a trusted-public-keys entry).
func ParsePublicKey(s string) (PublicKey, error) {
	name, b64, ok := strings.Cut(strings.TrimSpace(s), ":")
	key, err := base64.StdEncoding.DecodeString(b64)
	if !ok || name == "" || err != nil || len(key) != ed25519.PublicKeySize {
		return PublicKey{}, fmt.Errorf("public key %q: want <name>:<base64 of %d bytes>, as printed by nix key convert-secret-to-public", abbrev(s), ed25519.PublicKeySize)
	}
	return PublicKey{Name: name, Key: ed25519.PublicKey(key)}, nil
}

// PublicFromSecret derives the public half of a Nix secret key
// ("name:base64" of a 64-byte ed25519 private key, as made by nix key
// generate-secret), without printing anything secret in errors.
func PublicFromSecret(secret string) (PublicKey, error) {
	name, b64, ok := strings.Cut(strings.TrimSpace(secret), ":")
	key, err := base64.StdEncoding.DecodeString(b64)
	if !ok || name == "" || err != nil || len(key) != ed25519.PrivateKeySize {
		return PublicKey{}, errors.New("not a Nix secret key (want <name>:<base64 of 64 bytes>, as made by nix key generate-secret or bento keygen)")
	}
	return PublicKey{Name: name, Key: ed25519.PrivateKey(key).Public().(ed25519.PublicKey)}, nil
}

func abbrev(s string) string {
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

// ParseHash reads a hash in any encoding Nix writes ("sha256:" followed by
// base32, base16 or base64, or SRI "sha256-<base64>") and returns the
// algorithm and digest.
func ParseHash(s string) (string, []byte, error) {
	algo, rest, ok := strings.Cut(s, ":")
	sri := false
	if !ok {
		algo, rest, ok = strings.Cut(s, "-")
		sri = true
	}
	if !ok || algo != "sha256" {
		return "", nil, fmt.Errorf("unsupported hash %q (want sha256)", abbrev(s))
	}
	const n = sha256.Size
	var digest []byte
	var err error
	switch {
	case sri || len(rest) == 44:
		digest, err = base64.StdEncoding.DecodeString(rest)
	case len(rest) == 64:
		digest, err = hex.DecodeString(rest)
	case len(rest) == 52:
		digest, err = decodeBase32(rest, n)
	default:
		err = errors.New("wrong length")
	}
	if err != nil || len(digest) != n {
		return "", nil, fmt.Errorf("malformed hash %q", abbrev(s))
	}
	return algo, digest, nil
}

// base32Chars is Nix's base32 alphabet (no e, o, u, t).
const base32Chars = "0123456789abcdfghijklmnpqrsvwxyz"

// Base32 encodes b the way Nix does (least significant bits first, printed
// from the end), as in store path hashes and NAR file names.
func Base32(b []byte) string {
	n := (len(b)*8-1)/5 + 1
	out := make([]byte, 0, n)
	for i := n - 1; i >= 0; i-- {
		bit := i * 5
		j, k := bit/8, uint(bit%8)
		c := b[j] >> k
		if j+1 < len(b) {
			c |= b[j+1] << (8 - k)
		}
		out = append(out, base32Chars[c&0x1f])
	}
	return string(out)
}

func decodeBase32(s string, size int) ([]byte, error) {
	if len(s) != (size*8-1)/5+1 {
		return nil, errors.New("wrong length")
	}
	out := make([]byte, size)
	for i := 0; i < len(s); i++ {
		d := strings.IndexByte(base32Chars, s[len(s)-1-i])
		if d < 0 {
			return nil, fmt.Errorf("invalid base32 character %q", s[len(s)-1-i])
		}
		bit := i * 5
		j, k := bit/8, uint(bit%8)
		out[j] |= byte(d << k)
		if v := byte(d >> (8 - k)); j+1 < size {
			out[j+1] |= v
		} else if v != 0 {
			return nil, errors.New("invalid base32 (excess bits)")
		}
	}
	return out, nil
}
