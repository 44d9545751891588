# The bento server. It is not a bento client: update it with
#   nixos-rebuild switch --flake /srv/fleet#server
{ bento, fleet, ... }:
{
  imports = [ ./hardware-configuration.nix ];

  services.bento-server = {
    enable = true;

    # Every host with services.bento.enable = true gets a chroot, an SFTP
    # user and its services.bento.hostPublicKey as authorized key. The
    # fleet flake is the only list of hosts.
    hosts = bento.lib.hostsFromNixosConfigurations fleet.nixosConfigurations;

    # Where this flake is checked out on the server; the timer publishes it.
    flake = "/srv/fleet"; # CHANGE ME if you keep it elsewhere
    deploy.enable = true;

    # Binary caches: run `bento keygen` once on this server. From then on
    # `bento deploy` puts a signed cache of each host's own closure in that
    # host's chroot, and its agent substitutes from it over SSH (the pi, in
    # fetch mode, needs it). No HTTP server, no open port, and no host can
    # read another host's store paths.
  };

  # The server builds every host, the aarch64 pi included.
  boot.binfmt.emulatedSystems = [ "aarch64-linux" ];

  system.stateVersion = "25.11";
}
