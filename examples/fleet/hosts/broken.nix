{
  # Deliberately broken: its activation fails, so bento rolls it back to
  # the system it ran before and `bento status` shows why.
  services.bento = {
    enable = true;
    tags = [ "lab" ];
  };
  system.motd = "a host whose activation always fails";
  system.failActivation = true;
}
