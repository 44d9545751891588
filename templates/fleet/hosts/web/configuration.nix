# A client that builds its own system from the published flake.
{ ... }:
{
  imports = [ ./hardware-configuration.nix ];

  services.bento = {
    enable = true;

    # CHANGE ME: this host's SSH host key. On this host:
    #   cat /etc/ssh/ssh_host_ed25519_key.pub
    # The server authorizes it for this host's chroot.
    hostPublicKey = null;

    tags = [ "web" ];
    # Switch at once; reboot for a new kernel between 03:00 and 05:00.
    reboot.policy = "window";
    reboot.window = "03:00-05:00";
  };

  services.nginx.enable = true;

  system.stateVersion = "25.11";
}
