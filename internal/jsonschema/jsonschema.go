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
	if hasOwnMarshalling(t) {
		return byZeroValue(t)
	}
	if name := scalarType(t.Kind()); name != "" {
		return Schema{"type": name}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return nullable(of(t.Elem(), seen))
	case reflect.Slice:
		return sliceSchema(t, seen)
	case reflect.Array:
		return Schema{"type": "array", "items": of(t.Elem(), seen)}
	case reflect.Map:
		return Schema{"type": []any{"object", "null"}, "additionalProperties": of(t.Elem(), seen)}
	case reflect.Struct:
		return structSchema(t, seen)
	}
	// An interface holds anything.
	return Schema{}
}

// hasOwnMarshalling reports whether encoding/json marshals a t with t's
// own method rather than by its kind. A pointer is described by what it
// points to.
func hasOwnMarshalling(t reflect.Type) bool {
	return t.Kind() != reflect.Pointer && (t.Implements(marshalerType) || t.Implements(textType))
}

// scalarType is the JSON Schema type of a kind encoding/json writes as a
// scalar, "" for the others.
func scalarType(k reflect.Kind) string {
	switch k {
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.String:
		return "string"
	}
	return ""
}

func sliceSchema(t reflect.Type, seen map[reflect.Type]bool) Schema {
	if t.Elem().Kind() == reflect.Uint8 {
		return Schema{"type": []any{"string", "null"}, "contentEncoding": "base64"}
	}
	return Schema{"type": []any{"array", "null"}, "items": of(t.Elem(), seen)}
}

func structSchema(t reflect.Type, seen map[reflect.Type]bool) Schema {
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

// fields adds t's JSON fields to props (embedded structs flattened, as
// encoding/json does).
func fields(t reflect.Type, seen map[reflect.Type]bool, props Schema, required *[]string) {
	for i := range t.NumField() {
		field(t.Field(i), seen, props, required)
	}
}

// field adds f to props, or an embedded struct's fields.
func field(f reflect.StructField, seen map[reflect.Type]bool, props Schema, required *[]string) {
	tag := f.Tag.Get("json")
	if tag == "-" {
		return
	}
	name, opts, _ := strings.Cut(tag, ",")
	if f.Anonymous && name == "" {
		if ft, ok := embeddedStruct(f.Type); ok {
			fields(ft, seen, props, required)
			return
		}
	}
	if !f.IsExported() {
		return
	}
	if name == "" {
		name = f.Name
	}
	props[name] = fieldSchema(f, opts, seen)
	if !hasOpt(opts, "omitempty") && !hasOpt(opts, "omitzero") {
		*required = append(*required, name)
	}
}

// embeddedStruct is the struct an embedded field of type t stands for,
// if it is one (or a pointer to one).
func embeddedStruct(t reflect.Type) (reflect.Type, bool) {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t, t.Kind() == reflect.Struct
}

func fieldSchema(f reflect.StructField, opts string, seen map[reflect.Type]bool) Schema {
	s := of(f.Type, seen)
	if hasOpt(opts, "string") {
		s = Schema{"type": "string"}
	}
	if doc := f.Tag.Get("jsonschema"); doc != "" {
		s["description"] = doc
	}
	return s
}

// hasOpt reports whether the json tag options opts (after the name)
// include opt.
func hasOpt(opts, opt string) bool {
	return strings.Contains(","+opts+",", ","+opt+",")
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
		return objectByZeroValue(data)
	case 'n':
		return Schema{}
	}
	return Schema{"type": "number"}
}

// objectByZeroValue describes the JSON object data a zero value
// marshals to.
func objectByZeroValue(data []byte) Schema {
	// The keys the zero value has are there always; others may be
	// added (omitempty).
	var m map[string]any
	if json.Unmarshal(data, &m) != nil {
		return Schema{"type": "object"}
	}
	props := Schema{}
	var req []any
	for _, k := range sortedKeys(m) {
		props[k] = Schema{"type": jsonType(m[k])}
		if m[k] == nil {
			props[k] = Schema{}
		}
		req = append(req, k)
	}
	return Schema{"type": "object", "properties": props, "required": req}
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Validate checks doc (decoded JSON: map[string]any, []any, string,
// float64, bool, nil) against the subset of JSON Schema For writes: type,
// properties, required, additionalProperties, items. The error names the
// path of the first mismatch.
func Validate(s Schema, doc any) error {
	return validate(s, doc, "$")
}

func validate(s Schema, v any, path string) error {
	if err := validateType(s, v, path); err != nil {
		return err
	}
	switch v := v.(type) {
	case map[string]any:
		return validateObject(s, v, path)
	case []any:
		return validateItems(s, v, path)
	}
	return nil
}

func validateType(s Schema, v any, path string) error {
	t, ok := s["type"]
	if !ok {
		return nil
	}
	types := typeList(t)
	if !hasType(types, v) {
		return fmt.Errorf("%s: %s, want %s", path, kind(v), strings.Join(types, " or "))
	}
	return nil
}

// typeList is a schema's "type", one name or a list of them.
func typeList(t any) []string {
	var types []string
	switch t := t.(type) {
	case string:
		types = []string{t}
	case []any:
		for _, x := range t {
			types = append(types, x.(string))
		}
	}
	return types
}

func validateObject(s Schema, v map[string]any, path string) error {
	props, _ := s["properties"].(Schema)
	for _, r := range asList(s["required"]) {
		if _, ok := v[r]; !ok {
			return fmt.Errorf("%s: no %q", path, r)
		}
	}
	for _, k := range sortedKeys(v) {
		if err := validateProperty(s, props, k, v[k], path); err != nil {
			return err
		}
	}
	return nil
}

// validateProperty checks the value x of an object's key k against its
// schema in props, or else against the object's additionalProperties.
func validateProperty(s, props Schema, k string, x any, path string) error {
	if ps, ok := props[k].(Schema); ok {
		return validate(ps, x, path+"."+k)
	}
	switch ap := s["additionalProperties"].(type) {
	case bool:
		if !ap {
			return fmt.Errorf("%s: %q is not in the schema", path, k)
		}
	case Schema:
		return validate(ap, x, path+"."+k)
	}
	return nil
}

func validateItems(s Schema, v []any, path string) error {
	items, ok := s["items"].(Schema)
	if !ok {
		return nil
	}
	for i, x := range v {
		if err := validate(items, x, fmt.Sprintf("%s[%d]", path, i)); err != nil {
			return err
		}
	}
	return nil
}

// jsonType is the JSON Schema type of a decoded JSON value.
func jsonType(v any) string {
	if t := typeOf(v); t != "" {
		return t
	}
	return "null"
}

// typeOf is the JSON Schema type of v, "" if v is not decoded JSON.
func typeOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
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
	return ""
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
		if isType(v, t) {
			return true
		}
	}
	return false
}

// isType reports whether v is of the JSON Schema type t; an integer is
// a number with no fraction.
func isType(v any, t string) bool {
	if t == "integer" {
		f, ok := v.(float64)
		return ok && f == float64(int64(f))
	}
	return t == typeOf(v)
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
