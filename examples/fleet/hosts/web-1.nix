{
  services.bento = {
    enable = true;
    tags = [ "web" "eu" ];
  };
  system.motd = "web-1 serves the shop";
}
