package nixtest

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

// The signing options reach the agent's configuration and the deploy
// unit's command line, and only when set.
func TestSigningOptions(t *testing.T) {
	needNix(t)
	key := publicKey(t)
	k, err := manifest.GenerateSigningKey("fleet-1")
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public().String()
	for _, tc := range []struct {
		name, extra string
		want        map[string]any
	}{
		{"unset", "", map[string]any{"publicationKey": nil, "maxPublicationAge": nil}},
		{"set", fmt.Sprintf(`publicationKey = %s; maxPublicationAge = "7d";`, nixString(pub)), map[string]any{"publicationKey": pub, "maxPublicationAge": "7d"}},
	} {
		r := evalClient(t, fmt.Sprintf(`{ services.openssh.enable = true; services.bento = { enable = true; server = "s"; serverHostKey = %s; %s }; }`, nixString(key), tc.extra))
		if len(r.Failed) != 0 {
			t.Fatalf("%s: failed assertions %q", tc.name, r.Failed)
		}
		conf := agentJSON(t, splitExec(t, r.Services["bento-agent"].ServiceConfig["ExecStart"].(string)))
		for k, v := range tc.want {
			if conf[k] != v {
				t.Errorf("%s: agent configuration %s = %#v, want %#v", tc.name, k, conf[k], v)
			}
		}
	}

	bin := bentoBinary(t)
	r := evalServer(t, fmt.Sprintf(`{ services.bento-server = {
	  enable = true; flake = "/srv/fleet"; deploy.enable = true;
	  publicationKeyFile = "/var/lib/bento/publication-key.sec"; nextPublicationKey = %s;
	  package = { type = "derivation"; name = "bento"; outPath = %s; };
	}; }`, nixString(pub), nixString(filepath.Dir(filepath.Dir(bin)))))
	argv := splitExec(t, r.Services["bento-deploy"].ServiceConfig["ExecStart"].(string))
	i := slices.Index(argv, "--publication-key")
	j := slices.Index(argv, "--next-publication-key")
	if i < 0 || argv[i+1] != "/var/lib/bento/publication-key.sec" || j < 0 || argv[j+1] != pub {
		t.Errorf("the deploy unit's command line %q lacks the publication keys", argv)
	}
	if out, err := runErr(t, "", argv[0], append(argv[1:], "--help")...); err != nil {
		t.Errorf("the deploy unit's command line %q is refused: %v\n%s", argv, err, out)
	}
}
