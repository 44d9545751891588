{
  description = "bento: pull-based deployment for a fleet of NixOS machines described by one flake";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      # nixosModules, templates and lib never touch `nixpkgs`: they evaluate
      # offline, without fetching it (nixtest checks that).
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      linuxSystems = [
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

      nixosModules = {
        # services.bento: the agent on every host of the fleet.
        client = {
          imports = [ ./modules/client.nix ];
        };
        # services.bento-server: chroots, users and sshd rules on the server.
        server = {
          imports = [ ./modules/server.nix ];
        };
        # Both (a server can be a client of itself).
        default = {
          imports = [ ./modules/default.nix ];
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
      checks = forSystems linuxSystems (
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
