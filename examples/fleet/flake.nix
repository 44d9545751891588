{
  description = "bento example fleet: four hosts on stand-in systems (no nixpkgs needed)";

  # A real fleet has `inputs.nixpkgs` and builds each host with
  # nixpkgs.lib.nixosSystem { modules = [ bento.nixosModules.client ./hosts/web-1.nix ]; }
  # (see `nix flake init -t github:…/bento`). This example replaces
  # nixosSystem with lib/standin.nix, which produces NixOS-shaped systems
  # whose switch-to-configuration only records what it was asked to do, so
  # the whole bento loop runs on any machine with Nix, offline.
  outputs = { self }:
    let
      standin = import ./lib/standin.nix;
      host = name: standin { inherit name; module = import (./hosts + "/${name}.nix"); };
    in {
      nixosConfigurations = {
        web-1 = host "web-1";
        web-2 = host "web-2";
        cupboard-pi = host "cupboard-pi";
        broken = host "broken";
      };
    };
}
