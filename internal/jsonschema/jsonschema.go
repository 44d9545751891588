// Package jsonschema derives a JSON Schema (draft 2020-12) from the Go
// type a command encodes with encoding/json, so that the schema of every
// --json output is generated from the code that writes it and cannot
// drift from it (docs/schema/, checked by a test), and checks a document
// against such a schema.
//
// It knows what encoding/json does: field names from json tags, omitempty
// fields not required, embedded structs flattened, nil pointers, slices
// and maps as null. A type with its own MarshalJSON is described by what
// its zero value marshals to (a time.Time is a date-time string, a
// duration written "5min" a string, an object its keys, others allowed).
package jsonschema

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
)

// Schema is one (sub)schema, as JSON.
type Schema = map[string]any

// For returns the schema of values of v's type, titled title.
func For(v any, title, description string) Schema {
	s := of(reflect.TypeOf(v), map[reflect.Type]bool{})
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	s["title"] = title
	if description != "" {
		s["description"] = description
	}
	return s
}

// Marshal renders a schema as indented JSON with a final newline; map
// keys sort, so the output is stable.
func Marshal(s Schema) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

var (
	timeType      = reflect.TypeFor[time.Time]()
	marshalerType = reflect.TypeFor[json.Marshaler]()
	textType      = reflect.TypeFor[encoding.TextMarshaler]()
)

func nullable(s Schema) Schema {
	switch t := s["type"].(type) {
	case string:
		s["type"] = []any{t, "null"}
	case nil:
	}
	return s
}

// of is the schema of t; seen guards against recursive types.
func of(t reflect.Type, seen map[reflect.Type]bool) Schema {
	if t == timeType {
		return Schema{"type": "string", "format": "date-time"}
	}
	if t.Kind() != reflect.Pointer && (t.Implements(marshalerType) || t.Implements(textType)) {
		return byZeroValue(t)
	}
	switch t.Kind() {
	case reflect.Pointer:
		return nullable(of(t.Elem(), seen))
	case reflect.Bool:
		return Schema{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return Schema{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return Schema{"type": "number"}
	case reflect.String:
		return Schema{"type": "string"}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return Schema{"type": []any{"string", "null"}, "contentEncoding": "base64"}
		}
		return Schema{"type": []any{"array", "null"}, "items": of(t.Elem(), seen)}
	case reflect.Array:
		return Schema{"type": "array", "items": of(t.Elem(), seen)}
	case reflect.Map:
		return Schema{"type": []any{"object", "null"}, "additionalProperties": of(t.Elem(), seen)}
	case reflect.Interface:
		return Schema{}
	case reflect.Struct:
		if seen[t] {
			return Schema{}
		}
		seen[t] = true
		defer delete(seen, t)
		props := Schema{}
		var required []string
		fields(t, seen, props, &required)
		sort.Strings(required)
		s := Schema{"type": "object", "properties": props, "additionalProperties": false}
		if len(required) > 0 {
			req := make([]any, len(required))
			for i, r := range required {
				req[i] = r
			}
			s["required"] = req
		}
		return s
	}
	return Schema{}
}

// fields adds t's JSON fields to props (embedded structs flattened, as
// encoding/json does).
func fields(t reflect.Type, seen map[reflect.Type]bool, props Schema, required *[]string) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				fields(ft, seen, props, required)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		s := of(f.Type, seen)
		if strings.Contains(","+opts+",", ",string,") {
			s = Schema{"type": "string"}
		}
		if doc := f.Tag.Get("jsonschema"); doc != "" {
			s["description"] = doc
		}
		props[name] = s
		if !strings.Contains(","+opts+",", ",omitempty,") && !strings.Contains(","+opts+",", ",omitzero,") {
			*required = append(*required, name)
		}
	}
}

// byZeroValue describes a type with its own marshalling by the JSON kind
// its zero value marshals to.
func byZeroValue(t reflect.Type) Schema {
	data, err := json.Marshal(reflect.Zero(t).Interface())
	if err != nil || len(data) == 0 {
		return Schema{}
	}
	switch data[0] {
	case '"':
		return Schema{"type": "string"}
	case 't', 'f':
		return Schema{"type": "boolean"}
	case '[':
		return Schema{"type": "array"}
	case '{':
		// The keys the zero value has are there always; others may be
		// added (omitempty).
		var m map[string]any
		if json.Unmarshal(data, &m) != nil {
			return Schema{"type": "object"}
		}
		props := Schema{}
		var req []any
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			props[k] = Schema{"type": jsonType(m[k])}
			if m[k] == nil {
				props[k] = Schema{}
			}
			req = append(req, k)
		}
		return Schema{"type": "object", "properties": props, "required": req}
	case 'n':
		return Schema{}
	}
	return Schema{"type": "number"}
}

// Validate checks doc (decoded JSON: map[string]any, []any, string,
// float64, bool, nil) against the subset of JSON Schema For writes: type,
// properties, required, additionalProperties, items. The error names the
// path of the first mismatch.
func Validate(s Schema, doc any) error {
	return validate(s, doc, "$")
}

func validate(s Schema, v any, path string) error {
	if t, ok := s["type"]; ok {
		var types []string
		switch t := t.(type) {
		case string:
			types = []string{t}
		case []any:
			for _, x := range t {
				types = append(types, x.(string))
			}
		}
		if !hasType(types, v) {
			return fmt.Errorf("%s: %s, want %s", path, kind(v), strings.Join(types, " or "))
		}
	}
	switch v := v.(type) {
	case map[string]any:
		props, _ := s["properties"].(Schema)
		for _, r := range asList(s["required"]) {
			if _, ok := v[r]; !ok {
				return fmt.Errorf("%s: no %q", path, r)
			}
		}
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if ps, ok := props[k].(Schema); ok {
				if err := validate(ps, v[k], path+"."+k); err != nil {
					return err
				}
				continue
			}
			switch ap := s["additionalProperties"].(type) {
			case bool:
				if !ap {
					return fmt.Errorf("%s: %q is not in the schema", path, k)
				}
			case Schema:
				if err := validate(ap, v[k], path+"."+k); err != nil {
					return err
				}
			}
		}
	case []any:
		if items, ok := s["items"].(Schema); ok {
			for i, x := range v {
				if err := validate(items, x, fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func jsonType(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case bool:
		return "boolean"
	case float64:
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "null"
}

func asList(v any) []string {
	var out []string
	switch v := v.(type) {
	case []any:
		for _, x := range v {
			out = append(out, fmt.Sprint(x))
		}
	case []string:
		out = v
	}
	return out
}

func hasType(types []string, v any) bool {
	for _, t := range types {
		switch t {
		case "null":
			if v == nil {
				return true
			}
		case "object":
			if _, ok := v.(map[string]any); ok {
				return true
			}
		case "array":
			if _, ok := v.([]any); ok {
				return true
			}
		case "string":
			if _, ok := v.(string); ok {
				return true
			}
		case "boolean":
			if _, ok := v.(bool); ok {
				return true
			}
		case "number":
			if _, ok := v.(float64); ok {
				return true
			}
		case "integer":
			if f, ok := v.(float64); ok && f == float64(int64(f)) {
				return true
			}
		}
	}
	return false
}

func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	}
	return fmt.Sprintf("%T", v)
}
