// Package secrets delivers per-host files (keys, passwords, tokens) to the
// hosts of a fleet without ever putting them in a Nix store, a log or a
// report.
//
// Server side: an operator keeps secrets/<host>/<name> next to the fleet
// flake (untracked by git) or in a directory of their choice. Collect lists
// one host's secrets by name, size and sha256; Write fills the host's
// <root>/<host>/secrets/<version>/ with them, readable only by the host's
// SFTP user (files 0400, directory 0500). A name ending in ".age" is an
// age-encrypted secret: it ships as is and only the client decrypts it.
//
// Client side: Store downloads and verifies a version's secrets into the
// agent's private state directory; Installer puts each one at the path, with
// the owner, group and mode of its Spec (services.bento.secrets.<name>),
// atomically, removes the ones no longer published, and says which units to
// restart. Nothing here writes, logs or returns a secret's content.
package secrets

import (
	"fmt"
	"regexp"
	"strings"
)

// AgeSuffix marks a secret encrypted with age to the host's SSH key.
const AgeSuffix = ".age"

// DirName is the default secrets directory, next to the fleet flake.
const DirName = "secrets"

// Spec is how a host wants one secret installed: the agent configuration's
// secrets.<name> (the NixOS module's services.bento.secrets.<name>).
type Spec struct {
	// Path is where the secret is installed; absolute, outside /nix/store.
	Path string `json:"path"`
	// Owner and Group are user and group names (or numeric ids); "root"
	// when empty. An unknown one fails this secret only.
	Owner string `json:"owner,omitempty"`
	Group string `json:"group,omitempty"`
	// Mode is octal, e.g. "0400" (the default when empty).
	Mode string `json:"mode,omitempty"`
	// RestartUnits are try-restarted when the installed secret changes.
	RestartUnits []string `json:"restartUnits,omitempty"`
}

// nameRE is the NixOS module's rule for secret names (safeSecretName): a
// name becomes a file name on both sides, so it can never be a path.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// ValidateName checks a secret's name (without the .age suffix).
func ValidateName(name string) error {
	if !nameRE.MatchString(name) || len(name) > 255 {
		return fmt.Errorf("invalid secret name %q: names must match %s (they become file names); rename the file", name, nameRE.String())
	}
	return nil
}

// Name is the secret a published file delivers: the file name without
// its .age suffix.
func Name(file string) string { return strings.TrimSuffix(file, AgeSuffix) }

// Encrypted tells whether a published file is age-encrypted.
func Encrypted(file string) bool { return strings.HasSuffix(file, AgeSuffix) }
