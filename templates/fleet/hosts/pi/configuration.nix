# A small client (a Raspberry Pi) that evaluates nothing: it fetches the
# system the server built from the binary cache in its own chroot (run
# `bento keygen` once on the server, see hosts/server/configuration.nix).
{ ... }:
{
  services.bento = {
    enable = true;

    # CHANGE ME: this host's SSH host key (cat /etc/ssh/ssh_host_ed25519_key.pub).
    hostPublicKey = null;

    mode = "fetch";
    tags = [ "home" ];
  };

  # CHANGE ME: the boot loader and file systems of your board.
  boot.loader.grub.enable = false;
  boot.loader.generic-extlinux-compatible.enable = true;
  fileSystems."/" = {
    device = "/dev/disk/by-label/NIXOS_SD";
    fsType = "ext4";
  };

  system.stateVersion = "25.11";
}
