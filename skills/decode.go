package skills

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// DecodeStrict decodes a YAML node into v (a pointer to a struct) and rejects
// unknown keys. Every error names the dotted path of the offending key, so an
// admin can find it in opsbot.yaml without reading Go type names.
func DecodeStrict(node *yaml.Node, v any, path string) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("skills: DecodeStrict needs a non-nil pointer, got %T", v)
	}
	return decodeValue(node, rv.Elem(), path)
}

func decodeValue(node *yaml.Node, rv reflect.Value, path string) error {
	if node == nil {
		return nil
	}
	if node.Kind == yaml.DocumentNode {
		if len(node.Content) == 0 {
			return nil
		}
		return decodeValue(node.Content[0], rv, path)
	}
	if node.Kind == yaml.AliasNode {
		return decodeValue(node.Alias, rv, path)
	}
	// Types that decode themselves (Duration, yaml.Node, ...) and plain values
	// go straight to yaml.v3; we only walk structs and slices of structs.
	if _, ok := rv.Addr().Interface().(yaml.Unmarshaler); ok || rv.Type() == reflect.TypeOf(yaml.Node{}) {
		return wrapErr(node.Decode(rv.Addr().Interface()), path)
	}
	switch rv.Kind() {
	case reflect.Struct:
		if node.Tag == "!!null" {
			return nil
		}
		if node.Kind != yaml.MappingNode {
			return fmt.Errorf("%s: expected a mapping (key: value lines), got %s", displayPath(path), describe(node))
		}
		fields := structFields(rv.Type())
		seen := map[string]bool{}
		for i := 0; i+1 < len(node.Content); i += 2 {
			key := node.Content[i].Value
			keyPath := joinPath(path, key)
			if seen[key] {
				return fmt.Errorf("%s: key given twice (line %d)", keyPath, node.Content[i].Line)
			}
			seen[key] = true
			idx, ok := fields[key]
			if !ok {
				return fmt.Errorf("%s: unknown key (line %d); known keys here: %s", keyPath, node.Content[i].Line, knownKeys(rv.Type()))
			}
			if err := decodeValue(node.Content[i+1], rv.Field(idx), keyPath); err != nil {
				return err
			}
		}
		return nil
	case reflect.Slice:
		if rv.Type().Elem().Kind() != reflect.Struct {
			break
		}
		if node.Tag == "!!null" {
			return nil
		}
		if node.Kind != yaml.SequenceNode {
			return fmt.Errorf("%s: expected a list, got %s", displayPath(path), describe(node))
		}
		out := reflect.MakeSlice(rv.Type(), len(node.Content), len(node.Content))
		for i, item := range node.Content {
			if err := decodeValue(item, out.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		rv.Set(out)
		return nil
	case reflect.Pointer:
		if node.Tag == "!!null" {
			// A section written with nothing under it ("account:" with
			// its lines commented out) is there, and empty; a plain
			// value left empty is not set.
			if rv.IsNil() && rv.Type().Elem().Kind() == reflect.Struct {
				rv.Set(reflect.New(rv.Type().Elem()))
			}
			return nil
		}
		if rv.IsNil() {
			rv.Set(reflect.New(rv.Type().Elem()))
		}
		return decodeValue(node, rv.Elem(), path)
	}
	return wrapErr(node.Decode(rv.Addr().Interface()), path)
}

func wrapErr(err error, path string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if te, ok := err.(*yaml.TypeError); ok {
		msg = strings.Join(te.Errors, "; ")
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	return fmt.Errorf("%s: %s", displayPath(path), msg)
}

func structFields(t reflect.Type) map[string]int {
	out := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		name := yamlName(t.Field(i))
		if name != "" {
			out[name] = i
		}
	}
	return out
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	tag := f.Tag.Get("yaml")
	name, _, _ := strings.Cut(tag, ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

func knownKeys(t reflect.Type) string {
	var names []string
	for i := 0; i < t.NumField(); i++ {
		if n := yamlName(t.Field(i)); n != "" {
			names = append(names, n)
		}
	}
	return strings.Join(names, ", ")
}

func describe(node *yaml.Node) string {
	switch node.Kind {
	case yaml.ScalarNode:
		return fmt.Sprintf("%q (line %d)", node.Value, node.Line)
	case yaml.SequenceNode:
		return fmt.Sprintf("a list (line %d)", node.Line)
	case yaml.MappingNode:
		return fmt.Sprintf("a mapping (line %d)", node.Line)
	}
	return fmt.Sprintf("line %d", node.Line)
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func displayPath(path string) string {
	if path == "" {
		return "config"
	}
	return path
}

// Duration is a duration in config, written as Go writes them (30s, 5m,
// 1h30m).
type Duration time.Duration

// UnmarshalYAML parses Go duration strings.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration like 30s or 5m", s)
	}
	*d = Duration(v)
	return nil
}
