# Every option of bento's modules, with its type, default, example and
# description, as data for docs/modules.md (TestModuleDocs renders it).
# Submodule options appear under <name> (services.bento.secrets.<name>.path).
{ module }:
let
  lib = import ./minilib.nix;
  inherit (builtins)
    attrNames
    concatMap
    concatStringsSep
    isAttrs
    isBool
    isInt
    isList
    isString
    toJSON
    ;

  r = import ./eval.nix { modules = [ module ]; };

  # A value as Nix source.
  toNix =
    v:
    if (v._type or null) == "literalExpression" then
      v.text
    else if lib.isDerivation v then
      "<derivation ${v.name}>"
    else if isString v then
      builtins.replaceStrings [ "\${" ] [ "\\\${" ] (toJSON v)
    else if isBool v then
      (if v then "true" else "false")
    else if isInt v then
      toString v
    else if v == null then
      "null"
    else if isList v then
      (if v == [ ] then "[ ]" else "[ ${concatStringsSep " " (map toNix v)} ]")
    else if isAttrs v then
      (
        if v == { } then
          "{ }"
        else
          "{ ${concatStringsSep " " (map (n: "${lib.showOption [ n ]} = ${toNix v.${n}};") (attrNames v))} }"
      )
    else
      "<${builtins.typeOf v}>";

  collect =
    opts:
    concatMap (
      n:
      let
        v = opts.${n};
      in
      if lib.isOption v then
        [ v ] ++ collect (v.type.getSubOptions v.loc)
      else if isAttrs v then
        collect v
      else
        [ ]
    ) (attrNames opts);

  render = opt: {
    name = concatStringsSep "." opt.loc;
    type = opt.type.description;
    default =
      if opt ? defaultText then
        toNix opt.defaultText
      else if opt ? default then
        toNix opt.default
      else
        null;
    example = if opt ? example then toNix opt.example else null;
    description = opt.description or "";
  };
in
{
  client = map render (collect r.options.services.bento);
  server = map render (collect r.options.services.bento-server);
}
