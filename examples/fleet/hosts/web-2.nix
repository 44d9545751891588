{
  services.bento = {
    enable = true;
    tags = [ "web" "us" ];
  };
  system.motd = "web-2 serves the blog";
}
