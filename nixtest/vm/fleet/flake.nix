# The fleet the VM tests' server publishes. nixtest/vm/default.nix fills in
# the inputs (store paths of nixpkgs and bento: no network) and the system.
{
  inputs = {
    ##inputs##
  };

  outputs =
    {
      self,
      nixpkgs,
      bento,
    }:
    let
      host =
        name:
        nixpkgs.lib.nixosSystem {
          system = "##system##";
          modules = [
            bento.nixosModules.client
            "${nixpkgs}/nixos/lib/testing/nixos-test-base.nix"
            # The VM's network, as the test driver set it up.
            (nixpkgs.lib.importJSON (./. + "/network-${name}.json"))
            { networking.hostName = name; }
            ./common.nix
            ./scenario.nix
            ./version.nix
          ];
        };
    in
    {
      nixosConfigurations = {
        client1 = host "client1";
        client2 = host "client2";
      };
    };
}
