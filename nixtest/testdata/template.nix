# Evaluates the fleet template's flake with the stand-ins: nixpkgs is
# replaced by a nixosSystem that runs minilib's evalModules (freeform, so
# the hosts may set any NixOS option), bento is the real flake (a copy).
# `fill` is a module added to every host (the values marked CHANGE ME).
{
  template,
  bento,
  fill ? { },
}:
let
  nixpkgs.lib.nixosSystem =
    {
      modules,
      specialArgs ? { },
      ...
    }:
    import ./eval.nix {
      modules = modules ++ [ fill ];
      freeform = true;
      inherit specialArgs;
    };
  flake = import (template + "/flake.nix");
  self = flake.outputs {
    self = self // {
      outPath = template;
    };
    inherit nixpkgs;
    bento = builtins.getFlake "path:${toString bento}";
  };
in
self
