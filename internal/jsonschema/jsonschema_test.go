package jsonschema

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

type span time.Duration

func (s span) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(s).String()) }

type inner struct {
	Note string `json:"note,omitempty"`
}

type doc struct {
	inner
	Host    string            `json:"host"`
	When    time.Time         `json:"when"`
	Retry   *time.Time        `json:"retry"`
	Count   int               `json:"count"`
	Tags    []string          `json:"tags"`
	Errors  map[string]string `json:"errors,omitempty"`
	Every   span              `json:"every"`
	Skipped string            `json:"-"`
	Nested  *inner            `json:"nested"`
}

func TestSchemaOfAType(t *testing.T) {
	s := For(doc{}, "doc", "")
	data, err := Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	got := string(data)
	for _, want := range []string{
		`"required": [
    "count",
    "every",
    "host",
    "nested",
    "retry",
    "tags",
    "when"
  ]`,
		`"when": {
      "format": "date-time",
      "type": "string"
    }`,
		`"every": {
      "type": "string"
    }`,
		`"retry": {
      "format": "date-time",
      "type": [
        "string",
        "null"
      ]
    }`,
		`"note": {`,
		`"additionalProperties": false`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("schema lacks %s:\n%s", want, got)
		}
	}
	if strings.Contains(got, "Skipped") || strings.Contains(got, `"inner"`) {
		t.Errorf("schema has a skipped field or the embedded struct by name:\n%s", got)
	}
}

// What encoding/json writes for a type validates against its schema;
// documents that differ do not, and the error says where.
func TestValidate(t *testing.T) {
	s := For(doc{}, "doc", "")
	var roundTrip Schema
	data, _ := Marshal(s)
	if err := json.Unmarshal(data, &roundTrip); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	good, _ := json.Marshal(doc{Host: "web", When: now, Retry: &now, Tags: []string{"a"}, Errors: map[string]string{"x": "y"}, Nested: &inner{}})
	zero, _ := json.Marshal(doc{})
	for _, tc := range []struct {
		name, doc, err string
	}{
		{"encoded", string(good), ""},
		{"zero value", string(zero), ""},
		{"unknown key", `{"host":"a","when":"","retry":null,"count":1,"tags":null,"every":"1s","nested":null,"status":"x"}`, `$: "status" is not in the schema`},
		{"missing key", `{"when":"","retry":null,"count":1,"tags":null,"every":"1s","nested":null}`, `$: no "host"`},
		{"wrong type", `{"host":1,"when":"","retry":null,"count":1,"tags":null,"every":"1s","nested":null}`, `$.host: a number, want string`},
		{"not an integer", `{"host":"a","when":"","retry":null,"count":1.5,"tags":null,"every":"1s","nested":null}`, `$.count: a number, want integer`},
		{"array items", `{"host":"a","when":"","retry":null,"count":1,"tags":[1],"every":"1s","nested":null}`, `$.tags[0]: a number, want string`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v any
			if err := json.Unmarshal([]byte(tc.doc), &v); err != nil {
				t.Fatal(err)
			}
			err := Validate(roundTrip, v)
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("%v", err)
			case tc.err != "" && (err == nil || err.Error() != tc.err):
				t.Errorf("error %v, want %s", err, tc.err)
			}
		})
	}
}
