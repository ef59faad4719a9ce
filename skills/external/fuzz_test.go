package external

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// FuzzParseAnswer feeds arbitrary answer bodies to ParseAnswer: it never
// panics, an answer is either refused with a named problem or accepted
// with actions that each hold what their type requires.
func FuzzParseAnswer(f *testing.F) {
	for _, seed := range []string{
		`{"actions":[]}`,
		`{"version":1,"actions":[{"type":"reply","text":"hi","html":"<b>hi</b>","save_id_as":"last"}]}`,
		`{"actions":[{"type":"respond","text":"x"},{"type":"react","key":"👍"}]}`,
		`{"actions":[{"type":"edit","event_id":"$abc","text":"new"},{"type":"redact","event_id":"$abc","reason":""}]}`,
		`{"actions":[{"type":"send_file","name":"a.txt","mimetype":"text/plain","data_base64":"aGVsbG8="}]}`,
		`{"actions":[{"type":"set_memory","key":"k","value":{"n":[1,2,null]}},{"type":"delete_memory","key":"k"}]}`,
		`{"actions":[{"type":"set_memory","key":"k","value":null}]}`,
		`{"actions":[{"type":"replay","text":"x"}]}`,
		`{"actions":[{"type":"reply","text":"  "}]}`,
		`{"actions":[{"type":"reply","text":"x","extra":1}]}`,
		`{"actions":{"type":"reply"}}`,
		`{"version":2,"actions":[]}`,
		`{"actions":[1,"x",null,[]]}`,
		`{"actions":[{"type":"reply","text":"a"}],"actions":[]}`,
		`{"actions":[{"type":"edit","event_id":"abc","text":"x"}]}`,
		`{"actions":[{"type":"send_file","name":"a","mimetype":"text","data_base64":"!!"}]}`,
		`[]`, `null`, `"x"`, ``, `   `, `{`, `{"actions":[]} {}`, "{\"actions\":[{\"type\":\"reply\",\"text\":\"\xff\"}]}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		actions, err := ParseAnswer(body)
		if err != nil {
			var n *nonsense
			if !errors.As(err, &n) || n.problem == "" {
				t.Fatalf("error %v (%T) does not name a problem", err, err)
			}
			if actions != nil {
				t.Fatalf("refused answer returned %d actions", len(actions))
			}
			return
		}
		if len(actions) > MaxActions {
			t.Fatalf("%d actions accepted, limit %d", len(actions), MaxActions)
		}
		for i, a := range actions {
			spec, ok := actionSpecs[a.Type]
			if !ok {
				t.Fatalf("actions[%d]: unknown type %q accepted", i, a.Type)
			}
			for _, f := range spec {
				if !f.required {
					continue
				}
				var empty bool
				switch f.name {
				case "text":
					empty = strings.TrimSpace(a.Text) == ""
				case "key":
					empty = a.Key == "" || len(a.Key) > MaxMemoryKeyBytes && a.Type != "react"
				case "event_id":
					empty = len(a.EventID) < 2 || a.EventID[0] != '$'
				case "name":
					empty = strings.TrimSpace(a.Name) == ""
				case "mimetype":
					empty = !strings.Contains(a.Mimetype, "/")
				case "data_base64":
					empty = a.Data == nil
				case "value":
					empty = !json.Valid(a.Value)
				}
				if empty {
					t.Fatalf("actions[%d] (%s): required %q accepted empty or invalid: %+v", i, a.Type, f.name, a)
				}
			}
			if a.SaveIDAs != "" && len(a.SaveIDAs) > MaxMemoryKeyBytes {
				t.Fatalf("actions[%d]: save_id_as of %d bytes", i, len(a.SaveIDAs))
			}
		}
	})
}
