# What every host of the fleet shares.
{ ... }:
{
  services.bento = {
    # CHANGE ME: the name or address at which the hosts reach the server.
    server = "bento.example.org";

    # CHANGE ME: the server's SSH host key. On the server:
    #   cat /etc/ssh/ssh_host_ed25519_key.pub
    # bento never trusts a server key on first use: until this is set,
    # building a client fails and says so.
    serverHostKey = null;
  };

  # sshd creates the host key (/etc/ssh/ssh_host_ed25519_key) that each
  # host logs in to the server with.
  services.openssh.enable = true;

  nix.settings.experimental-features = [
    "nix-command"
    "flakes"
  ];

  time.timeZone = "UTC"; # CHANGE ME: reboot windows are in local time.
}
