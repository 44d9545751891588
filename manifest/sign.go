package manifest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// A signed manifest is one file: the unsigned manifest's bytes with one
// more member, "signature", as the last one of the top-level object:
//
//	{"format":2,…,"files":[…]}\n                      the signed bytes
//	{"format":2,…,"files":[…],"signature":{…}}\n      manifest.json
//
// The signature is over the exact bytes of the first form. One file and
// one rename, so that a host can never read a manifest and a signature
// of two different publications (as a detached manifest.json.sig could
// give it between two renames, or a mirror copying the two files in
// turn); and no canonical re-encoding, so that what is verified is
// byte for byte what is then parsed and acted on. Readers that do not
// verify (status, older agents) see an ordinary manifest with one more
// key.

// signatureMember introduces the signature. Compact JSON escapes every
// quote inside a string, so this sequence can only be structure.
const signatureMember = `,"signature":`

// maxSignatureJSON bounds the signature object a reader decodes.
const maxSignatureJSON = 1024

// Signature is the signature member of a signed manifest.
type Signature struct {
	// Key is the public key that signed, name:base64: it names the key
	// in an error, and selects among the pinned keys.
	Key string `json:"key"`
	// Sig is the base64 Ed25519 signature of the manifest's bytes
	// without this member.
	Sig string `json:"sig"`
}

// PublicationKey is a public Ed25519 key that signs publications,
// written name:base64 like Nix's binary cache keys.
type PublicationKey struct {
	Name string
	Key  ed25519.PublicKey
}

func (k PublicationKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

// SigningKey is the secret half, name:base64 of the 64-byte Ed25519
// private key (the format of nix key generate-secret).
type SigningKey struct {
	Name string
	Key  ed25519.PrivateKey
}

// Public is the key hosts pin.
func (k SigningKey) Public() PublicationKey {
	return PublicationKey{Name: k.Name, Key: k.Key.Public().(ed25519.PublicKey)}
}

// GenerateSigningKey makes a new publication key named name.
func GenerateSigningKey(name string) (SigningKey, error) {
	if err := checkKeyName(name); err != nil {
		return SigningKey{}, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SigningKey{}, err
	}
	return SigningKey{Name: name, Key: priv}, nil
}

func (k SigningKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

func checkKeyName(name string) error {
	if name == "" || len(name) > 128 || strings.ContainsAny(name, ": \t\r\n\"\\") {
		return fmt.Errorf("key name %q: want a non-empty name without ':', spaces or quotes", clip(name))
	}
	return nil
}

// ParsePublicationKey reads name:base64 of a 32-byte Ed25519 public key.
func ParsePublicationKey(s string) (PublicationKey, error) {
	name, b64, ok := strings.Cut(strings.TrimSpace(s), ":")
	key, err := base64.StdEncoding.DecodeString(b64)
	if !ok || checkKeyName(name) != nil || err != nil || len(key) != ed25519.PublicKeySize {
		return PublicationKey{}, fmt.Errorf("publication key %q: want <name>:<base64 of %d bytes>, as printed by bento keygen --publication", clip(s), ed25519.PublicKeySize)
	}
	return PublicationKey{Name: name, Key: ed25519.PublicKey(key)}, nil
}

// ParseSigningKey reads name:base64 of a 64-byte Ed25519 private key.
func ParseSigningKey(s string) (SigningKey, error) {
	name, b64, ok := strings.Cut(strings.TrimSpace(s), ":")
	key, err := base64.StdEncoding.DecodeString(b64)
	if !ok || checkKeyName(name) != nil || err != nil || len(key) != ed25519.PrivateKeySize {
		// Never quote a secret key in an error.
		return SigningKey{}, fmt.Errorf("publication secret key: want <name>:<base64 of %d bytes>, as written by bento keygen --publication", ed25519.PrivateKeySize)
	}
	return SigningKey{Name: name, Key: ed25519.PrivateKey(key)}, nil
}

// Sign returns the signed form of an unsigned manifest's bytes (a JSON
// object followed by one newline, as the publisher writes it).
func Sign(body []byte, k SigningKey) ([]byte, error) {
	if !bytes.HasSuffix(body, []byte("}\n")) || bytes.HasPrefix(body, []byte("{}")) {
		return nil, errors.New("sign: the manifest must be a non-empty JSON object followed by a newline")
	}
	sig, err := json.Marshal(Signature{Key: k.Public().String(), Sig: base64.StdEncoding.EncodeToString(ed25519.Sign(k.Key, body))})
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(body)+len(signatureMember)+len(sig)+1)
	out = append(out, body[:len(body)-2]...)
	out = append(out, signatureMember...)
	out = append(out, sig...)
	return append(out, "}\n"...), nil
}

// Split separates a signed manifest into the bytes its signature covers
// and the signature. A manifest without a signature member comes back
// whole with a nil signature. It decodes nothing but the signature.
func Split(data []byte) (body []byte, sig *Signature, err error) {
	i := bytes.LastIndex(data, []byte(signatureMember))
	if i < 0 {
		return data, nil, nil
	}
	tail := data[i+len(signatureMember):]
	if !bytes.HasSuffix(tail, []byte("}\n")) {
		return nil, nil, errors.New("manifest: the signature is not the last member of the manifest")
	}
	raw := tail[:len(tail)-2]
	if len(raw) > maxSignatureJSON {
		return nil, nil, fmt.Errorf("manifest: the signature is %d bytes, over the %d limit", len(raw), maxSignatureJSON)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var s Signature
	if err := dec.Decode(&s); err != nil {
		return nil, nil, fmt.Errorf("manifest: invalid signature member: %w", err)
	}
	if dec.More() || dec.InputOffset() != int64(len(raw)) {
		return nil, nil, errors.New("manifest: invalid signature member: trailing data")
	}
	body = make([]byte, 0, i+2)
	body = append(body, data[:i]...)
	body = append(body, "}\n"...)
	return body, &s, nil
}

// ErrUnsigned is returned (wrapped) for a manifest without a signature
// when a key is pinned.
var ErrUnsigned = errors.New("the manifest is not signed")

// Verify checks that data is a manifest signed by one of keys and
// returns the bytes the signature covers: the only bytes to parse and
// act on.
func Verify(data []byte, keys []PublicationKey) (body []byte, by PublicationKey, err error) {
	body, sig, err := Split(data)
	if err != nil {
		return nil, PublicationKey{}, err
	}
	if sig == nil {
		return nil, PublicationKey{}, fmt.Errorf("%w, but this host pins publication key %s: sign publications on the server (bento deploy --publication-key, services.bento-server.publicationKeyFile)", ErrUnsigned, keyNames(keys))
	}
	claimed, err := ParsePublicationKey(sig.Key)
	if err != nil {
		return nil, PublicationKey{}, fmt.Errorf("manifest: signature: %w", err)
	}
	raw, err := base64.StdEncoding.DecodeString(sig.Sig)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return nil, PublicationKey{}, fmt.Errorf("manifest: signature by %s: not %d bytes of base64", claimed.Name, ed25519.SignatureSize)
	}
	for _, k := range keys {
		if k.Name == claimed.Name && k.Key.Equal(claimed.Key) {
			if !ed25519.Verify(k.Key, body, raw) {
				return nil, PublicationKey{}, fmt.Errorf("manifest: the signature by key %s does not verify: the manifest was changed after it was signed", k.Name)
			}
			return body, k, nil
		}
	}
	return nil, PublicationKey{}, fmt.Errorf("manifest: signed by key %s, which this host does not pin (it pins %s): if the fleet rotated its key, set services.bento.publicationKey to the new one", claimed, keyNames(keys))
}

func keyNames(keys []PublicationKey) string {
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.String()
	}
	return strings.Join(names, " or ")
}

// ParseVerified verifies data against keys and parses what the signature
// covers; with no key it is Parse (a signature is then ignored). The
// returned manifest's Signature is the verified one.
func ParseVerified(data []byte, keys []PublicationKey) (*Manifest, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("manifest is %d bytes, over the %d limit", len(data), MaxSize)
	}
	if len(keys) == 0 {
		return Parse(data)
	}
	body, _, err := Verify(data, keys)
	if err != nil {
		return nil, err
	}
	m, err := Parse(body)
	if err != nil {
		return nil, err
	}
	_, m.Signature, _ = Split(data)
	return m, nil
}
