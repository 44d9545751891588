// Package nixtest tests bento's Nix files (flake.nix, modules/, templates/,
// nix/package.nix) with the real nix command, offline and without nixpkgs.
//
// The NixOS modules are evaluated with test-only stand-ins: a small module
// system and the parts of nixpkgs' lib they use (testdata/minilib.nix),
// fake packages (testdata/pkgs.nix) and declarations of the NixOS options
// the modules touch (testdata/nixos-stub.nix). What the modules generate
// is then checked for real where a real checker exists: sshd -t for the
// sshd configuration, systemd-analyze verify for the units, the bento
// binary's own parser for the agent's command line and its configuration
// loader for the JSON the module writes.
//
// The NixOS VM tests (vm/) need nixpkgs and KVM; they run with
// `nix flake check`, not here.
package nixtest
