# A test-only stand-in for the parts of nixpkgs' `lib` that bento's modules
# use, so that they can be evaluated where there is no nixpkgs.
#
# It includes a small module system (`evalModules`) that follows NixOS's
# rules where bento depends on them:
#   - modules are paths, functions or attribute sets, with `imports`
#     (deduplicated by path), `options`, `config` or the shorthand form;
#   - option declarations merge into one tree; defining an option nobody
#     declared is an error ("The option `x' does not exist"), unless a
#     module sets `freeformType`;
#   - mkIf / mkMerge / mkOverride (mkDefault, mkForce) / mkOrder (mkBefore,
#     mkAfter) are pushed down through attribute sets without evaluating
#     their conditions (so `config = mkIf cfg.enable { … }` can read
#     `config`), then discharged at each option;
#   - the definitions of the highest priority win, option defaults have
#     the lowest (1500); values are type-checked and merged by type;
#     submodules get `name`.
# What it does not do: `_module.args`, `disabledModules`, `specialisation`,
# option renames, types it does not list below. Where it differs on
# purpose: `types.anything` (freeform) concatenates lists, and
# `types.package` accepts any string.
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    genericClosure
    head
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isPath
    isString
    length
    listToAttrs
    match
    sort
    stringLength
    substring
    tail
    toJSON
    ;

  # ---- general helpers (same names and meaning as in nixpkgs) ----

  concatMap = f: list: concatLists (map f list);
  concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
  imap1 = f: list: builtins.genList (i: f (i + 1) (builtins.elemAt list i)) (length list);
  nameValuePair = name: value: { inherit name value; };
  mapAttrs = builtins.mapAttrs;
  mapAttrs' = f: set: listToAttrs (map (n: f n set.${n}) (attrNames set));
  mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);
  attrValues = builtins.attrValues;
  filterAttrs =
    pred: set:
    listToAttrs (
      concatMap (
        n:
        let
          v = set.${n};
        in
        if pred n v then [ (nameValuePair n v) ] else [ ]
      ) (attrNames set)
    );
  hasPrefix = pref: str: substring 0 (stringLength pref) str == pref;
  hasSuffix =
    suf: str:
    let
      ls = stringLength str;
      lf = stringLength suf;
    in
    ls >= lf && substring (ls - lf) lf str == suf;
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: set: if cond then set else { };
  unique = foldl' (acc: e: if elem e acc then acc else acc ++ [ e ]) [ ];
  last = list: builtins.elemAt list (length list - 1);
  removeSuffix =
    suf: str: if hasSuffix suf str then substring 0 (stringLength str - stringLength suf) str else str;
  fileContents = file: removeSuffix "\n" (builtins.readFile file);
  importJSON = file: builtins.fromJSON (builtins.readFile file);
  toList = x: if isList x then x else [ x ];
  isDerivation = x: isAttrs x && (x.type or null) == "derivation";
  isStringLike = x: isString x || isPath x || (isAttrs x && (x ? outPath || x ? __toString));
  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };
  showOption = loc: concatStringsSep "." loc;
  showValue =
    v:
    let
      r = builtins.tryEval (toJSON v);
    in
    if r.success then r.value else "<${builtins.typeOf v}>";

  # ---- properties ----

  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  mkOptionDefault = mkOverride 1500;
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkOrder = priority: content: {
    _type = "order";
    inherit priority content;
  };
  mkBefore = mkOrder 500;
  mkAfter = mkOrder 1500;

  typeOf = v: if isAttrs v then v._type or null else null;

  # Pushes mkIf/mkMerge/mkOverride/mkOrder of an attribute set into its
  # attributes, without evaluating any condition.
  pushDownProperties =
    v:
    let
      t = typeOf v;
      wrap = f: map (mapAttrs (_: f)) (pushDownProperties v.content);
    in
    if t == "merge" then
      concatMap pushDownProperties v.contents
    else if t == "if" then
      wrap (mkIf v.condition)
    else if t == "override" then
      wrap (mkOverride v.priority)
    else if t == "order" then
      wrap (mkOrder v.priority)
    else
      [ v ];

  # Evaluates the conditions: a definition becomes zero or more values,
  # each possibly wrapped in override/order.
  discharge =
    v:
    let
      t = typeOf v;
    in
    if t == "merge" then
      concatMap discharge v.contents
    else if t == "if" then
      (
        if !isBool v.condition then
          throw "mkIf called with a non-Boolean condition"
        else if v.condition then
          discharge v.content
        else
          [ ]
      )
    else if t == "override" then
      map (mkOverride v.priority) (discharge v.content)
    else if t == "order" then
      map (mkOrder v.priority) (discharge v.content)
    else
      [ v ];

  priorityOf =
    v:
    let
      t = typeOf v;
    in
    if t == "override" then
      v.priority
    else if t == "order" then
      priorityOf v.content
    else
      100;
  orderOf =
    v:
    let
      t = typeOf v;
    in
    if t == "order" then
      v.priority
    else if t == "override" then
      orderOf v.content
    else
      1000;
  strip = v: if elem (typeOf v) [ "override" "order" ] then strip v.content else v;

  # Definitions [{ file; value; }] of one option → { isDefined; value; }.
  mergeDefinitions =
    loc: type: defs:
    let
      discharged = concatMap (d: map (v: { inherit (d) file; value = v; }) (discharge d.value)) defs;
      best = foldl' (m: d: if priorityOf d.value < m then priorityOf d.value else m) 9999 discharged;
      kept = filter (d: priorityOf d.value == best) discharged;
      sorted = sort (a: b: orderOf a.value < orderOf b.value) kept;
      final = map (d: {
        inherit (d) file;
        value = strip d.value;
      }) sorted;
      bad = filter (d: !(type.check d.value)) final;
    in
    {
      isDefined = final != [ ];
      value =
        if bad != [ ] then
          throw "The option `${showOption loc}' has a value of the wrong type: ${showValue (head bad).value} (in ${(head bad).file}) is not a ${type.description}."
        else
          type.merge loc final;
    };

  # ---- option types ----

  mkOptionType =
    {
      name,
      description ? name,
      check ? (_: true),
      merge ? mergeDefaultOption,
      getSubOptions ? (_: { }),
      nestedTypes ? { },
    }:
    {
      _type = "option-type";
      inherit
        name
        description
        check
        merge
        getSubOptions
        nestedTypes
        ;
    };

  files = defs: concatStringsSep ", " (map (d: d.file) defs);

  mergeEqualOption =
    loc: defs:
    let
      first = (head defs).value;
    in
    if all (d: d.value == first) (tail defs) then
      first
    else
      throw "The option `${showOption loc}' has conflicting definition values (in ${files defs}): ${concatMapStringsSep " vs " (d: showValue d.value) defs}.";

  mergeOneOption =
    loc: defs:
    if length defs == 1 then
      (head defs).value
    else
      throw "The option `${showOption loc}' is defined multiple times (in ${files defs}) but takes one value.";

  mergeDefaultOption =
    loc: defs:
    let
      vs = map (d: d.value) defs;
    in
    if length defs == 1 then
      head vs
    else if all isList vs then
      concatLists vs
    else if all isAttrs vs then
      foldl' (a: b: a // b) { } vs
    else if all isString vs then
      concatStringsSep "" vs
    else if all isBool vs then
      any (x: x) vs
    else
      throw "The option `${showOption loc}' has definitions that cannot be merged (in ${files defs}).";

  phrase = t: if match ".* .*" t.description != null then "(${t.description})" else t.description;

  intBetween =
    lo: hi: description:
    mkOptionType {
      name = "intBetween";
      inherit description;
      check = x: isInt x && x >= lo && x <= hi;
      merge = mergeEqualOption;
    };

  anything = mkOptionType {
    name = "anything";
    description = "anything";
    merge =
      loc: defs:
      let
        vs = map (d: d.value) defs;
      in
      if all (v: isAttrs v && !isDerivation v) vs then
        let
          names = unique (concatMap attrNames vs);
          one =
            n:
            mergeDefinitions (loc ++ [ n ]) anything (
              concatMap (d: optional (d.value ? ${n}) {
                inherit (d) file;
                value = d.value.${n};
              }) defs
            );
        in
        listToAttrs (
          concatMap (
            n:
            let
              r = one n;
            in
            optional r.isDefined (nameValuePair n r.value)
          ) names
        )
      else if all isList vs then
        concatLists vs
      else
        mergeEqualOption loc defs;
  };

  types = rec {
    inherit anything;

    unspecified = mkOptionType {
      name = "unspecified";
      description = "unspecified value";
    };

    raw = mkOptionType {
      name = "raw";
      description = "raw value";
      merge = mergeOneOption;
    };

    bool = mkOptionType {
      name = "bool";
      description = "boolean";
      check = isBool;
      merge = mergeEqualOption;
    };

    int = mkOptionType {
      name = "int";
      description = "signed integer";
      check = isInt;
      merge = mergeEqualOption;
    };

    ints = {
      between = lo: hi: intBetween lo hi "integer between ${toString lo} and ${toString hi} (both inclusive)";
      positive = mkOptionType {
        name = "positiveInt";
        description = "positive integer, meaning >0";
        check = x: isInt x && x > 0;
        merge = mergeEqualOption;
      };
      unsigned = mkOptionType {
        name = "unsignedInt";
        description = "unsigned integer, meaning >=0";
        check = x: isInt x && x >= 0;
        merge = mergeEqualOption;
      };
      u16 = intBetween 0 65535 "16 bit unsigned integer; between 0 and 65535 (both inclusive)";
    };

    port = ints.u16;

    str = mkOptionType {
      name = "str";
      description = "string";
      check = isString;
      merge = mergeEqualOption;
    };

    nonEmptyStr = mkOptionType {
      name = "nonEmptyStr";
      description = "non-empty string";
      check = x: isString x && match "[ \t\n]*" x == null;
      merge = mergeEqualOption;
    };

    strMatching =
      pattern:
      mkOptionType {
        name = "strMatching ${toJSON pattern}";
        description = "string matching the pattern ${pattern}";
        check = x: isString x && match pattern x != null;
        merge = mergeEqualOption;
      };

    lines = mkOptionType {
      name = "lines";
      description = "strings concatenated with \"\\n\"";
      check = isString;
      merge = loc: defs: concatStringsSep "\n" (map (d: d.value) defs);
    };

    path = mkOptionType {
      name = "path";
      description = "absolute path";
      check = x: isStringLike x && substring 0 1 (toString x) == "/";
      merge = mergeEqualOption;
    };

    package = mkOptionType {
      name = "package";
      description = "package";
      check = x: isDerivation x || isString x;
      merge = mergeOneOption;
    };

    enum =
      values:
      mkOptionType {
        name = "enum";
        description = "one of ${concatMapStringsSep ", " toJSON values}";
        check = x: elem x values;
        merge = mergeEqualOption;
      };

    nullOr =
      elemType:
      mkOptionType {
        name = "nullOr";
        description = "null or ${phrase elemType}";
        check = x: x == null || elemType.check x;
        merge =
          loc: defs:
          let
            nulls = filter (d: d.value == null) defs;
          in
          if length nulls == length defs then
            null
          else if nulls != [ ] then
            throw "The option `${showOption loc}' is defined both null and not null (in ${files defs})."
          else
            elemType.merge loc defs;
        getSubOptions = elemType.getSubOptions;
        nestedTypes.elemType = elemType;
      };

    either =
      t1: t2:
      mkOptionType {
        name = "either";
        description = "${phrase t1} or ${phrase t2}";
        check = x: t1.check x || t2.check x;
        merge =
          loc: defs:
          if all (d: t1.check d.value) defs then
            t1.merge loc defs
          else if all (d: t2.check d.value) defs then
            t2.merge loc defs
          else
            throw "The option `${showOption loc}' has definitions of different types (in ${files defs}).";
      };

    oneOf = ts: foldl' either (head ts) (tail ts);

    # As nixpkgs: a value of coercedType is converted to finalType.
    coercedTo =
      coercedType: coerceFunc: finalType:
      mkOptionType {
        name = "coercedTo";
        description = "${phrase finalType} or ${phrase coercedType} convertible to it";
        check = x: (coercedType.check x && finalType.check (coerceFunc x)) || finalType.check x;
        merge =
          loc: defs:
          finalType.merge loc (
            map (d: d // { value = if coercedType.check d.value then coerceFunc d.value else d.value; }) defs
          );
      };

    listOf =
      elemType:
      mkOptionType {
        name = "listOf";
        description = "list of ${phrase elemType}";
        check = isList;
        merge =
          loc: defs:
          concatMap (
            d:
            concatMap (
              x:
              let
                r = mergeDefinitions loc elemType [
                  {
                    inherit (d) file;
                    value = x;
                  }
                ];
              in
              optional r.isDefined r.value
            ) d.value
          ) defs;
        getSubOptions = prefix: elemType.getSubOptions (prefix ++ [ "*" ]);
        nestedTypes.elemType = elemType;
      };

    attrsOf =
      elemType:
      mkOptionType {
        name = "attrsOf";
        description = "attribute set of ${phrase elemType}";
        check = x: isAttrs x && !isDerivation x;
        merge =
          loc: defs:
          let
            names = unique (concatMap (d: attrNames d.value) defs);
            one =
              n:
              mergeDefinitions (loc ++ [ n ]) elemType (
                concatMap (d: optional (d.value ? ${n}) {
                  inherit (d) file;
                  value = d.value.${n};
                }) defs
              );
          in
          listToAttrs (
            concatMap (
              n:
              let
                r = one n;
              in
              optional r.isDefined (nameValuePair n r.value)
            ) names
          );
        getSubOptions = prefix: elemType.getSubOptions (prefix ++ [ "<name>" ]);
        nestedTypes.elemType = elemType;
      };

    submodule =
      modules:
      mkOptionType {
        name = "submodule";
        description = "submodule";
        check = x: isAttrs x || isFunction x;
        merge =
          loc: defs:
          (evalModules {
            modules =
              toList modules
              ++ map (
                d:
                if isFunction d.value then
                  {
                    _file = d.file;
                    imports = [ d.value ];
                  }
                else
                  {
                    _file = d.file;
                    config = d.value;
                  }
              ) defs;
            specialArgs.name = last loc;
            prefix = loc;
          }).config;
        getSubOptions =
          prefix:
          (evalModules {
            modules = toList modules;
            specialArgs.name = last prefix;
            inherit prefix;
          }).options;
      };
  };

  # ---- options ----

  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    example = true;
    description = "Whether to enable ${name}.";
  };
  isOption = x: isAttrs x && (x._type or null) == "option";

  # ---- the module system ----

  structural = [
    "_file"
    "key"
    "imports"
    "options"
    "config"
    "freeformType"
    "meta"
    "disabledModules"
    "_class"
  ];

  evalModules =
    {
      modules,
      specialArgs ? { },
      prefix ? [ ],
    }:
    let
      moduleArgs = specialArgs // {
        inherit lib options;
        config = unchecked;
      };

      entry =
        parentFile: parentKey: i: m:
        let
          isRef = isPath m || isString m;
          raw = if isRef then import m else m;
          applied = if isFunction raw then raw moduleArgs else raw;
          file = if isRef then toString m else applied._file or parentFile;
        in
        {
          key = if isRef then toString m else applied.key or "${parentKey}:${toString i}";
          inherit file;
          imports = applied.imports or [ ];
          options = applied.options or { };
          config =
            if applied ? config || applied ? options then applied.config or { } else removeAttrs applied structural;
          freeformType = applied.freeformType or null;
        };

      closure = genericClosure {
        startSet = imap1 (entry "<evalModules>" "<root>") modules;
        operator = e: imap1 (entry e.file e.key) e.imports;
      };

      freeformTypes = filter (t: t != null) (map (e: e.freeformType) closure);
      freeform = if freeformTypes == [ ] then null else head freeformTypes;

      # Declarations: one tree, option leaves annotated with loc and file.
      mergeDecls =
        loc: decls:
        let
          names = unique (concatMap (d: attrNames d.value) decls);
          one =
            n:
            let
              here = concatMap (d: optional (d.value ? ${n}) {
                inherit (d) file;
                value = d.value.${n};
              }) decls;
              opts = filter (d: isOption d.value) here;
            in
            if opts == [ ] then
              mergeDecls (loc ++ [ n ]) here
            else if length here > 1 then
              throw "The option `${showOption (loc ++ [ n ])}' is declared more than once (in ${files here})."
            else
              (head opts).value
              // {
                loc = loc ++ [ n ];
                declarations = [ (head opts).file ];
              };
        in
        listToAttrs (map (n: nameValuePair n (one n)) names);

      options = mergeDecls prefix (
        map (e: {
          inherit (e) file;
          value = e.options;
        }) closure
      );

      defs = map (e: {
        inherit (e) file;
        value = e.config;
      }) closure;

      pushed =
        loc: ds:
        concatMap (
          d:
          map (
            v:
            if isAttrs v && typeOf v == null then
              {
                inherit (d) file;
                value = v;
              }
            else
              throw "The option set `${showOption loc}' is defined as a ${builtins.typeOf v} (in ${d.file}), not an attribute set."
          ) (pushDownProperties d.value)
        ) ds;

      subDefs =
        n: ds:
        concatMap (d: optional (d.value ? ${n}) {
          inherit (d) file;
          value = d.value.${n};
        }) ds;

      evalOption =
        loc: opt: ds:
        let
          withDefault =
            ds
            ++ optional (opt ? default) {
              file = "the default of ${showOption loc}";
              value = mkOptionDefault opt.default;
            };
          r = mergeDefinitions loc opt.type withDefault;
          value =
            if r.isDefined then r.value else throw "The option `${showOption loc}' is used but not defined.";
        in
        if opt ? apply then opt.apply value else value;

      evalTree =
        loc: decl: ds:
        if isOption decl then
          evalOption loc decl ds
        else
          let
            p = pushed loc ds;
            declared = mapAttrs (n: sub: evalTree (loc ++ [ n ]) sub (subDefs n p)) decl;
            extra = filter (n: !(decl ? ${n})) (unique (concatMap (d: attrNames d.value) p));
            # Like lazyAttrsOf: the names are known without evaluating any
            # mkIf condition (which may read config).
            free = listToAttrs (
              map (
                n:
                let
                  r = mergeDefinitions (loc ++ [ n ]) freeform (subDefs n p);
                in
                nameValuePair n (if r.isDefined then r.value else throw "The option `${showOption (loc ++ [ n ])}' is used but not defined.")
              ) extra
            );
          in
          if freeform == null then declared else free // declared;

      # Undeclared definitions (pushed down, conditions not evaluated).
      undeclared =
        loc: decl: ds:
        if isOption decl then
          [ ]
        else
          let
            p = pushed loc ds;
            names = unique (concatMap (d: attrNames d.value) p);
          in
          concatMap (
            n:
            if decl ? ${n} then
              undeclared (loc ++ [ n ]) decl.${n} (subDefs n p)
            else
              [ "The option `${showOption (loc ++ [ n ])}' does not exist (defined in ${files (subDefs n p)})." ]
          ) names;

      unchecked = evalTree prefix options defs;
      errors = if freeform == null then undeclared prefix options defs else [ ];
    in
    {
      inherit options;
      config = if errors == [ ] then unchecked else throw (head errors);
    };

  lib = {
    inherit
      all
      any
      attrNames
      attrValues
      concatLists
      concatMap
      concatMapStringsSep
      concatStringsSep
      elem
      evalModules
      fileContents
      filter
      filterAttrs
      hasPrefix
      hasSuffix
      importJSON
      isDerivation
      isOption
      last
      listToAttrs
      literalExpression
      mapAttrs
      mapAttrs'
      mapAttrsToList
      mergeDefinitions
      mkAfter
      mkBefore
      mkDefault
      mkEnableOption
      mkForce
      mkIf
      mkMerge
      mkOption
      mkOptionDefault
      mkOptionType
      mkOrder
      mkOverride
      nameValuePair
      optional
      optionalAttrs
      optionalString
      optionals
      removeSuffix
      showOption
      toList
      types
      unique
      ;
    inherit (builtins) replaceStrings;
  };
in
lib
