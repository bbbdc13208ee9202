package identity

import (
	"bytes"
	"encoding/json"
	"testing"
)

// decodeJSON decodes an object as the handlers do: numbers as json.Number.
func decodeJSON(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var m map[string]any
	err := dec.Decode(&m)
	return m, err
}

func TestClaimText(t *testing.T) {
	claims, err := decodeJSON([]byte(`{"id":9007199254740993,"f":1.50,"b":true,"s":"x","arr":["a",1,false],"mixed":["a",{"k":1}],"obj":{"z":1,"a":"<&>"},"n":null,"https://example.com/roles":["admin"],"realm":{"access":{"roles":["r1","r2"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"id":                        "9007199254740993",
		"f":                         "1.50",
		"b":                         "true",
		"s":                         "x",
		"arr":                       "a, 1, false",
		"mixed":                     `["a",{"k":1}]`,
		"obj":                       `{"a":"<&>","z":1}`,
		"https://example.com/roles": "admin",
		"realm.access.roles":        "r1, r2",
	} {
		v, ok := Lookup(claims, path)
		if !ok {
			t.Errorf("%s: not found", path)
			continue
		}
		got, _ := Text(v)
		if got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	if v, ok := Lookup(claims, "n"); !ok || v != nil {
		t.Errorf("null claim: %v %v", v, ok)
	}
	if _, ok := Text(nil); ok {
		t.Error("null rendered as text")
	}
	if _, ok := Lookup(claims, "realm.missing"); ok {
		t.Error("missing nested claim found")
	}
	for _, s := range []string{"a\rb", "a\nb", "a\x00b", "a\x7fb"} {
		if !HasControl(s) {
			t.Errorf("HasControl(%q) = false", s)
		}
	}
	if HasControl("tab\tok") {
		t.Error("tab is allowed in header values")
	}
	var n json.Number = "1"
	if s, _ := Text(n); s != "1" {
		t.Error(s)
	}
}
