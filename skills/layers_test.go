package skills_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/opsbot/opsbot"

// The arrows between the layers go one way (docs/architecture.md):
//
//	cmd/ → appservice/ → the skills runtime ← each skill
//
// Nothing under skills/ imports appservice/ (a skill is built without the
// host), the runtime imports no skill, a skill imports no other skill, and
// appservice/ names no built-in skill (cmd/ and skills/builtin pick them).
// In tests only the first rule holds, so that skilltest stays enough for a
// skill's tests; tests may use other skills as examples.
func TestImportsGoOneWay(t *testing.T) {
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports,TestImports,XTestImports", module+"/...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(out)
	checked := 0
	for {
		var p struct {
			ImportPath                         string
			Imports, TestImports, XTestImports []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range p.Imports {
			if why := forbidden(p.ImportPath, imp, false); why != "" {
				t.Errorf("%s imports %s: %s", strings.TrimPrefix(p.ImportPath, module+"/"), strings.TrimPrefix(imp, module+"/"), why)
			}
		}
		for _, imp := range append(p.TestImports, p.XTestImports...) {
			if why := forbidden(p.ImportPath, imp, true); why != "" {
				t.Errorf("the tests of %s import %s: %s", strings.TrimPrefix(p.ImportPath, module+"/"), strings.TrimPrefix(imp, module+"/"), why)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("go list found only %d packages", checked)
	}
}

// forbidden says why pkg (or its tests) may not import imp, or "".
func forbidden(pkg, imp string, test bool) string {
	rel := func(p string) (string, bool) { return strings.CutPrefix(p, module+"/") }
	from, ok := rel(pkg)
	if !ok {
		return ""
	}
	to, ok := rel(imp)
	if !ok {
		return ""
	}
	under := func(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	builtinSkill := func(p string) string { // "ping" for skills/builtin/ping/...
		rest, ok := strings.CutPrefix(p, "skills/builtin/")
		if !ok {
			return ""
		}
		name, _, _ := strings.Cut(rest, "/")
		return name
	}
	switch {
	case under(from, "skills") && (under(to, "appservice") || under(to, "cmd") || under(to, "integration")):
		return "nothing under skills/ may import the host"
	case test:
		return ""
	case builtinSkill(from) != "" && builtinSkill(to) != "" && builtinSkill(from) != builtinSkill(to):
		return "a skill may not import another skill"
	case under(from, "skills") && !under(from, "skills/builtin") && builtinSkill(to) != "":
		return "the skills runtime may not import a skill"
	case under(from, "appservice") && (under(to, "skills/builtin") || under(to, "cmd")):
		return "appservice/ may not name built-in skills or the commands (cmd/ and skills/builtin choose them)"
	}
	return ""
}
