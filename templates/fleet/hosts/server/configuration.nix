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

    # A signed binary cache of the server's store, for the pi (fetch mode).
    # Create the key once:
    #   nix-store --generate-binary-cache-key bento.example.org-1 \
    #     /var/lib/bento-cache.sec /var/lib/bento-cache.pub
    cache = {
      enable = true;
      secretKeyFile = "/var/lib/bento-cache.sec";
      openFirewall = true;
    };
  };

  # The server builds every host, the aarch64 pi included.
  boot.binfmt.emulatedSystems = [ "aarch64-linux" ];

  system.stateVersion = "25.11";
}
