# Both halves of bento: services.bento (client) and services.bento-server.
# A host may be both: the server can keep itself up to date too.
{
  imports = [
    ./client.nix
    ./server.nix
  ];
}
