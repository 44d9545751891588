# NixOS VM tests of bento (flake output `checks`): not written yet.
{ pkgs, self, nixpkgs }:
{ }
