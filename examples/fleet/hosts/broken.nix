{
  # Good at first. The demo's second round sets failActivation = true (as a
  # bad change to a real host would break its activation), so bento rolls
  # it back to this system and `bento status` shows why.
  services.bento = {
    enable = true;
    tags = [ "lab" ];
  };
  system.motd = "a host whose next change will fail to activate";
  system.failActivation = false;
}
