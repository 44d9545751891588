{
  # The Raspberry Pi in the cupboard: reboots for new kernels, at night.
  services.bento = {
    enable = true;
    tags = [ "home" ];
    reboot.policy = "window";
    reboot.window = "03:00-05:00";
  };
  system.motd = "the pi in the cupboard";
}
