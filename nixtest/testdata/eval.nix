# Evaluates NixOS-style modules with the stand-ins (minilib.nix, pkgs.nix,
# nixos-stub.nix). freeform = true accepts options nobody declared (for
# whole host configurations such as the template's).
{
  modules,
  freeform ? false,
  specialArgs ? { },
  pkgs ? import ./pkgs.nix,
}:
let
  lib = import ./minilib.nix;
in
lib.evalModules {
  modules = [
    ./nixos-stub.nix
  ]
  ++ lib.optional freeform { freeformType = lib.types.attrsOf lib.types.anything; }
  ++ modules;
  specialArgs = specialArgs // {
    inherit pkgs;
  };
}
