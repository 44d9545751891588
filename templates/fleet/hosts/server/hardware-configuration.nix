# CHANGE ME: replace with the output of `nixos-generate-config --show-hardware-config`
# on this machine.
{ ... }:
{
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
}
