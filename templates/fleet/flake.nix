{
  description = "A NixOS fleet kept up to date by bento";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    bento.url = "github:bento-nix/bento";
    # bento is built with this nixpkgs (it needs Go 1.26). With a nixpkgs
    # older than that, remove this line: bento then builds with its own.
    bento.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    {
      self,
      nixpkgs,
      bento,
    }:
    let
      # One host of the fleet. Its name here is its name for bento: its
      # chroot and SFTP user on the server (letters, digits, '.', '_', '-').
      host =
        name: system:
        nixpkgs.lib.nixosSystem {
          specialArgs = {
            inherit bento;
            fleet = self;
          };
          modules = [
            bento.nixosModules.default
            ./common.nix
            (./hosts + "/${name}/configuration.nix")
            {
              networking.hostName = name;
              nixpkgs.hostPlatform = system;
            }
          ];
        };
    in
    {
      nixosConfigurations = {
        # The bento server: publishes the fleet to every host.
        server = host "server" "x86_64-linux";
        # Two clients: a machine that builds its own system, and a small
        # one that only fetches what the server built.
        web = host "web" "x86_64-linux";
        pi = host "pi" "aarch64-linux";
      };
    };
}
