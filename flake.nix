{
  description = "bento: pull-based deployment for a fleet of NixOS machines described by one flake";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      # nixosModules, templates and lib never touch `nixpkgs`: they evaluate
      # offline, without fetching it (nixtest checks that).
      # bento is Linux only (it uses syncfs and Linux's stat): the flake
      # publishes nothing it cannot build.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forSystems =
        names: f:
        builtins.listToAttrs (
          map (system: {
            name = system;
            value = f system;
          }) names
        );
      pkgsFor = system: nixpkgs.legacyPackages.${system};
      version = "0.1.0+${self.shortRev or "dirty"}";
    in
    {
      lib = import ./modules/lib.nix;

      # Through the flake, the modules default their package to this
      # flake's own build (pinned nixpkgs, with the Go bento needs), not to
      # one built with the host's nixpkgs, which may lack Go 1.26 (as
      # comin does). Imported without the flake, the modules keep
      # pkgs.callPackage. A system this flake does not build keeps that too.
      nixosModules =
        let
          # The key makes the module system apply each once, however many
          # of client, server and default a configuration imports (two
          # equal definitions of a package option would conflict).
          flakePackage =
            name: set:
            { lib, pkgs, ... }:
            let
              system = pkgs.stdenv.hostPlatform.system;
            in
            {
              key = "bento-flake-package-${name}";
              config = lib.mkIf (self.packages ? ${system}) (
                set (lib.mkDefault self.packages.${system}.bento)
              );
            };
          client = flakePackage "client" (p: { services.bento.package = p; });
          server = flakePackage "server" (p: { services.bento-server.package = p; });
        in
        {
          # services.bento: the agent on every host of the fleet.
          client = {
            imports = [
              ./modules/client.nix
              client
            ];
          };
          # services.bento-server: chroots, users and sshd rules on the server.
          server = {
            imports = [
              ./modules/server.nix
              server
            ];
          };
          # Both (a server can be a client of itself).
          default = {
            imports = [
              ./modules/default.nix
              client
              server
            ];
          };
        };

      templates = {
        fleet = {
          path = ./templates/fleet;
          description = "A bento fleet: one server and two clients, with the modules imported";
          welcomeText = ''
            # A new bento fleet

            Read README.md: it goes from generating keys to `bento status`.
            Every place to edit is marked `CHANGE ME`.
          '';
        };
        default = self.templates.fleet;
      };

      overlays.default = final: _prev: {
        bento = final.callPackage ./nix/package.nix { inherit version; };
      };

      packages = forSystems systems (system: {
        bento = (pkgsFor system).callPackage ./nix/package.nix { inherit version; };
        default = self.packages.${system}.bento;
      });

      apps = forSystems systems (system: {
        bento = {
          type = "app";
          program = "${self.packages.${system}.bento}/bin/bento";
        };
        default = self.apps.${system}.bento;
      });

      formatter = forSystems systems (system: (pkgsFor system).nixfmt-tree or (pkgsFor system).nixfmt-rfc-style);

      # NixOS VM tests (a server and two clients): they need KVM and build
      # whole NixOS systems, so they run with `nix flake check` on a Linux
      # machine with KVM, not in bento's Go test suite.
      checks = forSystems systems (
        system:
        import ./nixtest/vm {
          pkgs = pkgsFor system;
          inherit self nixpkgs;
        }
        // {
          package = self.packages.${system}.bento;
        }
      );
    };
}
