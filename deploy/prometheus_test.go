// Tests for the alert rules in prometheus/: they load in promtool, every
// alert has a unit test that pins when it fires (and a mutated rule makes
// that test fail), a runbook in docs/operations.md, and metrics opsbot
// exports; the Helm chart's and kustomize's PrometheusRule carry exactly the
// same rules (they are generated from prometheus/opsbot-alerts.yaml: go test
// -run TestPrometheusRuleCopies -update, or make rules-update).
//
// promtool (Debian's prometheus package) must be installed: without it the
// tests fail.
package deploy_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the chart's and kustomize's copies of "+rulesFile)

const (
	rulesFile         = "prometheus/opsbot-alerts.yaml"
	ruleTestsDir      = "prometheus/tests"
	chartRuleFile     = "helm/opsbot/templates/prometheusrule.yaml"
	kustomizeRuleFile = "kustomize/components/prometheusrule/prometheusrule.yaml"
	operationsDoc     = "../docs/operations.md"
	// runbookBase is what each runbook_url starts with in rulesFile: the
	// chart's prometheusRule.runbookBaseURL replaces it.
	runbookBase = "docs/operations.md"
	// defaultJob is the scrape job rulesFile reads `up` of; the chart reads
	// its ServiceMonitor's job (the Service's name) in its namespace.
	defaultJob = `job="opsbot"`
)

// chartThresholds are the numbers the chart's values set
// (prometheusRule.thresholds.<value>): in the alert's expr, literal is
// "<operator> <number>", and occurs once. Their defaults in values.yaml must
// be the numbers of rulesFile (TestHelmPrometheusRule checks).
var chartThresholds = []struct{ alert, literal, value string }{
	{"OpsbotInboxBacklog", "> 200", "inboxBacklog"},
	{"OpsbotTransactionsRejected", "> 3", "transactionsRejected"},
	{"OpsbotDecryptionFailures", "> 3", "decryptionFailures"},
	{"OpsbotOneTimeKeysLow", "< 10", "oneTimeKeys"},
	{"OpsbotHomeserverRequestsFailing", "> 0.1", "homeserverErrorRatio"},
	{"OpsbotSkillErrors", "> 3", "skillErrors"},
	{"OpsbotRoomsWaitingForKeys", ">= 3", "roomsWaitingForKeys"},
	{"OpsbotLeaderFlapping", "> 3", "leaderChanges"},
}

// Rule files, as Prometheus reads them and as PrometheusRule's spec holds
// them. Strict decoding catches misspelt or misplaced fields.
type ruleFile struct {
	Groups []ruleGroup `json:"groups"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// prometheusRule is monitoring.coreos.com/v1 PrometheusRule.
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ruleFile `json:"spec"`
}

func readRules(t *testing.T, path string) ruleFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(data, &rf); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return rf
}

func (rf ruleFile) alerts() []rule {
	var out []rule
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out = append(out, r)
			}
		}
	}
	return out
}

func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install Debian's prometheus package (apt-get install prometheus), as .ci/run does")
	}
	return p
}

func runPromtool(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(promtool(t), args...).CombinedOutput()
	return string(out), err
}

// checkRulesWithPromtool writes groups as a rule file and runs promtool
// check rules on it.
func checkRulesWithPromtool(t *testing.T, source string, rf ruleFile) {
	t.Helper()
	data, err := yaml.Marshal(rf)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runPromtool(t, "check", "rules", path); err != nil {
		t.Errorf("%s: promtool check rules: %v\n%s", source, err, out)
	}
}

// ---------------------------------------------------------------------------
// The rules file itself.

// githubSlug is the anchor GitHub (and most Markdown renderers) give a
// heading.
func githubSlug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9'):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestAlertRules(t *testing.T) {
	if out, err := runPromtool(t, "check", "rules", rulesFile); err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", rulesFile, err, out)
	}
	rf := readRules(t, rulesFile)
	doc, err := os.ReadFile(operationsDoc)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#+ (.+)$`).FindAllStringSubmatch(string(doc), -1) {
		anchors[githubSlug(m[1])] = true
	}
	alerts := rf.alerts()
	if len(alerts) < 14 {
		t.Errorf("%d alerts in %s", len(alerts), rulesFile)
	}
	seen := map[string]bool{}
	for _, a := range alerts {
		if seen[a.Alert] {
			t.Errorf("alert %s defined twice", a.Alert)
		}
		seen[a.Alert] = true
		if !strings.HasPrefix(a.Alert, "Opsbot") {
			t.Errorf("alert %s: names start with Opsbot", a.Alert)
		}
		if s := a.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("alert %s: severity %q, want critical or warning", a.Alert, s)
		}
		for _, k := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(a.Annotations[k]) == "" {
				t.Errorf("alert %s: no %s", a.Alert, k)
			}
		}
		for k := range a.Annotations {
			if !slices.Contains([]string{"summary", "description", "runbook_url"}, k) {
				t.Errorf("alert %s: unexpected annotation %s", a.Alert, k)
			}
		}
		want := runbookBase + "#" + strings.ToLower(a.Alert)
		if a.Annotations["runbook_url"] != want {
			t.Errorf("alert %s: runbook_url %q, want %q", a.Alert, a.Annotations["runbook_url"], want)
		}
		if !anchors[strings.ToLower(a.Alert)] {
			t.Errorf("alert %s: docs/operations.md has no section %q (its runbook)", a.Alert, a.Alert)
		}
		checkRuleExpr(t, a)
	}
}

// checkRuleExpr checks an alert's expression against the metrics opsbot
// exports and their labels, as the dashboard's queries are checked.
func checkRuleExpr(t *testing.T, a rule) {
	t.Helper()
	allowed := slices.Clone(targetLabels)
	names := metricName.FindAllString(a.Expr, -1)
	if len(names) == 0 && !strings.Contains(a.Expr, defaultJob) {
		t.Errorf("alert %s reads no opsbot metric and not the opsbot job: %s", a.Alert, a.Expr)
	}
	for _, n := range names {
		base, ok := metricOf(n)
		if !ok {
			t.Errorf("alert %s reads %s, which opsbot does not export (appservice/metrics/metrics.go)", a.Alert, n)
			continue
		}
		allowed = append(allowed, opsbotMetrics[base].labels...)
	}
	var labels []string
	for _, m := range regexp.MustCompile(`\b(?:by|without|on|ignoring)\s*\(([^)]*)\)`).FindAllStringSubmatch(a.Expr, -1) {
		for _, l := range strings.Split(m[1], ",") {
			labels = append(labels, strings.TrimSpace(l))
		}
	}
	for _, m := range matcher.FindAllStringSubmatch(a.Expr, -1) {
		labels = append(labels, m[1])
	}
	for _, text := range a.Annotations {
		for _, m := range regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`).FindAllStringSubmatch(text, -1) {
			labels = append(labels, m[1])
		}
	}
	for _, l := range labels {
		if l != "" && !slices.Contains(allowed, l) {
			t.Errorf("alert %s: label %q is not a label of %v: %s", a.Alert, l, names, a.Expr)
		}
	}
}

// ---------------------------------------------------------------------------
// Their unit tests (promtool test rules).

// ruleTest is the part of a promtool test file these checks read.
type ruleTest struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		AlertRuleTests []struct {
			EvalTime  string `json:"eval_time"`
			AlertName string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// TestAlertRuleTests checks that every alert has its test file
// (tests/<alert>.yaml) with a case where it fires and one where it does
// not, that the tests pass, and that they pin the rule down: with the
// alert's for: set to 0 or doubled, or the alert removed, its test must
// fail.
func TestAlertRuleTests(t *testing.T) {
	rf := readRules(t, rulesFile)
	alerts := map[string]bool{}
	for _, a := range rf.alerts() {
		alerts[a.Alert] = true
	}
	files, err := filepath.Glob(filepath.Join(ruleTestsDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		if !alerts[name] {
			t.Errorf("%s tests no alert of %s (the file is named after the alert)", f, rulesFile)
		}
	}
	args := append([]string{"test", "rules"}, files...)
	if out, err := runPromtool(t, args...); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}

	for _, a := range rf.alerts() {
		t.Run(a.Alert, func(t *testing.T) {
			file := filepath.Join(ruleTestsDir, a.Alert+".yaml")
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("alert %s has no unit test: %v (see prometheus/README.md)", a.Alert, err)
			}
			var rt ruleTest
			if err := yaml.Unmarshal(data, &rt); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if !slices.Equal(rt.RuleFiles, []string{"../" + filepath.Base(rulesFile)}) {
				t.Errorf("%s: rule_files %v, want [../%s]", file, rt.RuleFiles, filepath.Base(rulesFile))
			}
			fires, silent := false, false
			for _, tc := range rt.Tests {
				for _, at := range tc.AlertRuleTests {
					if at.AlertName != a.Alert {
						continue
					}
					if len(at.ExpAlerts) > 0 {
						fires = true
					} else {
						silent = true
					}
				}
			}
			if !fires || !silent {
				t.Errorf("%s: want a case where %s fires (%v) and one where it does not (%v)", file, a.Alert, fires, silent)
			}

			// Mutations of the rule its test must notice.
			mutate := func(what string, change func(r *rule) bool) {
				t.Helper()
				mutated := ruleFile{}
				for _, g := range rf.Groups {
					ng := ruleGroup{Name: g.Name, Interval: g.Interval}
					for _, r := range g.Rules {
						if r.Alert == a.Alert && !change(&r) {
							continue
						}
						ng.Rules = append(ng.Rules, r)
					}
					if len(ng.Rules) > 0 {
						mutated.Groups = append(mutated.Groups, ng)
					}
				}
				dir := t.TempDir()
				out, err := yaml.Marshal(mutated)
				if err != nil {
					t.Fatal(err)
				}
				mutatedPath := filepath.Join(dir, filepath.Base(rulesFile))
				if err := os.WriteFile(mutatedPath, out, 0o644); err != nil {
					t.Fatal(err)
				}
				// The mutant must be a valid rule file: a test failing on a
				// broken file proves nothing.
				if out, err := runPromtool(t, "check", "rules", mutatedPath); err != nil {
					t.Fatalf("the rules with the alert %s do not load: %v\n%s", what, err, out)
				}
				if err := os.MkdirAll(filepath.Join(dir, "tests"), 0o755); err != nil {
					t.Fatal(err)
				}
				copyPath := filepath.Join(dir, "tests", filepath.Base(file))
				if err := os.WriteFile(copyPath, data, 0o644); err != nil {
					t.Fatal(err)
				}
				if out, err := runPromtool(t, "test", "rules", copyPath); err == nil {
					t.Errorf("%s still passes with the alert %s: it does not pin that down\n%s", file, what, out)
				}
			}
			mutate("removed", func(*rule) bool { return false })
			if a.For != "" {
				d, err := time.ParseDuration(a.For)
				if err != nil {
					t.Fatalf("for: %q: %v", a.For, err)
				}
				if d > 0 {
					mutate("firing at once (for: 0s)", func(r *rule) bool { r.For = "0s"; return true })
					mutate(fmt.Sprintf("waiting twice as long (for: %s)", promDuration(2*d)), func(r *rule) bool { r.For = promDuration(2 * d); return true })
				}
			}
		})
	}
}

// promDuration writes d the way Prometheus reads durations (10m, 2h).
func promDuration(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	default:
		return fmt.Sprintf("%ds", d/time.Second)
	}
}

// ---------------------------------------------------------------------------
// The chart's and kustomize's copies.

// quoteRaw writes s as a Helm expression that prints it quoted: a Go raw
// string (so that Prometheus's own {{ $labels }} templates pass through
// Helm untouched) piped into quote.
func quoteRaw(s string) (string, error) {
	if strings.Contains(s, "`") {
		return "", fmt.Errorf("a backtick in %q: the chart's template cannot carry it", s)
	}
	return "{{ `" + s + "` | quote }}", nil
}

// chartExpr turns an alert's expression into Helm: the chart's job
// selector for defaultJob and the values' thresholds for its numbers.
func chartExpr(a rule) (string, error) {
	// A part is literal text, or operands of Helm's print (a variable).
	type part struct{ text, variable string }
	parts := []part{{text: a.Expr}}
	// split replaces the occurrences of old in the literal parts by keep
	// followed by variable (once: exactly one occurrence).
	split := func(old, keep, variable string, once bool) error {
		var out []part
		n := 0
		for _, p := range parts {
			if p.variable != "" {
				out = append(out, p)
				continue
			}
			pieces := strings.Split(p.text, old)
			for i, piece := range pieces {
				if i < len(pieces)-1 {
					piece += keep
				}
				if i > 0 {
					out = append(out, part{variable: variable})
					n++
				}
				out = append(out, part{text: piece})
			}
		}
		if n == 0 || (once && n > 1) {
			return fmt.Errorf("alert %s: %q occurs %d times in %q", a.Alert, old, n, a.Expr)
		}
		parts = out
		return nil
	}
	if strings.Contains(a.Expr, defaultJob) {
		if err := split(defaultJob, "", "$job", false); err != nil {
			return "", err
		}
	}
	for _, th := range chartThresholds {
		if th.alert != a.Alert {
			continue
		}
		op, _, ok := strings.Cut(th.literal, " ")
		if !ok {
			return "", fmt.Errorf("threshold %q: want \"<operator> <number>\"", th.literal)
		}
		if i := strings.Index(a.Expr, th.literal); i >= 0 && i+len(th.literal) < len(a.Expr) {
			if next := a.Expr[i+len(th.literal)]; next == '.' || (next >= '0' && next <= '9') {
				return "", fmt.Errorf("alert %s: threshold %q is part of a longer number", a.Alert, th.literal)
			}
		}
		if err := split(th.literal, op+" ", "$t."+th.value, true); err != nil {
			return "", err
		}
	}
	if len(parts) == 1 {
		return quoteRaw(a.Expr)
	}
	var b strings.Builder
	b.WriteString("{{ print")
	for _, p := range parts {
		switch {
		case p.variable != "":
			b.WriteString(" " + p.variable)
		case p.text != "":
			if strings.Contains(p.text, "`") {
				return "", fmt.Errorf("a backtick in %q", a.Expr)
			}
			b.WriteString(" `" + p.text + "`")
		}
	}
	b.WriteString(" | quote }}")
	return b.String(), nil
}

// chartTemplate generates the chart's PrometheusRule template from the
// rules file.
func chartTemplate(rf ruleFile) (string, error) {
	var b strings.Builder
	b.WriteString(`{{- /*
Generated from deploy/prometheus/opsbot-alerts.yaml by make rules-update
(deploy/prometheus_test.go): edit that file and regenerate, not this one.
The thresholds come from prometheusRule.thresholds; OpsbotDown reads the
ServiceMonitor's job (the Service) in the release's namespace.
*/ -}}
{{- if .Values.prometheusRule.enabled }}
{{- $t := .Values.prometheusRule.thresholds }}
{{- $job := printf "job=%q, namespace=%q" (include "opsbot.fullname" .) .Release.Namespace }}
{{- $runbook := .Values.prometheusRule.runbookBaseURL }}
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: {{ include "opsbot.fullname" . }}
  namespace: {{ .Values.prometheusRule.namespace | default .Release.Namespace }}
  labels:
    {{- include "opsbot.labels" . | nindent 4 }}
    {{- with .Values.prometheusRule.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  groups:
`)
	for _, g := range rf.Groups {
		fmt.Fprintf(&b, "    - name: %s\n", strconv.Quote(g.Name))
		if g.Interval != "" {
			fmt.Fprintf(&b, "      interval: %s\n", strconv.Quote(g.Interval))
		}
		b.WriteString("      rules:\n")
		for _, r := range g.Rules {
			if r.Alert == "" {
				return "", fmt.Errorf("group %s: only alerting rules are copied into the chart", g.Name)
			}
			fmt.Fprintf(&b, "        - alert: %s\n", strconv.Quote(r.Alert))
			expr, err := chartExpr(r)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(&b, "          expr: %s\n", expr)
			if r.For != "" {
				fmt.Fprintf(&b, "          for: %s\n", strconv.Quote(r.For))
			}
			var labels []string
			for _, k := range slices.Sorted(func(yield func(string) bool) {
				for k := range r.Labels {
					if !yield(k) {
						return
					}
				}
			}) {
				labels = append(labels, fmt.Sprintf("%s %s", strconv.Quote(k), strconv.Quote(r.Labels[k])))
			}
			fmt.Fprintf(&b, "          labels:\n            {{- toYaml (merge (dict %s) $.Values.prometheusRule.alertLabels) | nindent 12 }}\n", strings.Join(labels, " "))
			b.WriteString("          annotations:\n")
			for _, k := range []string{"summary", "description", "runbook_url"} {
				v, ok := r.Annotations[k]
				if !ok {
					continue
				}
				var val string
				if rest, found := strings.CutPrefix(v, runbookBase); k == "runbook_url" && found {
					val = "{{ print $runbook `" + rest + "` | quote }}"
				} else if val, err = quoteRaw(v); err != nil {
					return "", err
				}
				fmt.Fprintf(&b, "            %s: %s\n", k, val)
			}
			for k := range r.Annotations {
				if !slices.Contains([]string{"summary", "description", "runbook_url"}, k) {
					return "", fmt.Errorf("alert %s: annotation %s is not copied into the chart", r.Alert, k)
				}
			}
		}
	}
	b.WriteString("{{- end }}\n")
	return b.String(), nil
}

// kustomizeRule generates the kustomize component's PrometheusRule.
func kustomizeRule(rf ruleFile) ([]byte, error) {
	obj := prometheusRule{
		TypeMeta:   metav1.TypeMeta{APIVersion: "monitoring.coreos.com/v1", Kind: "PrometheusRule"},
		ObjectMeta: metav1.ObjectMeta{Name: "opsbot", Labels: map[string]string{"app.kubernetes.io/name": "opsbot"}},
		Spec:       rf,
	}
	data, err := yaml.Marshal(obj)
	if err != nil {
		return nil, err
	}
	// metav1.ObjectMeta marshals an empty creationTimestamp.
	data = bytes.Replace(data, []byte("  creationTimestamp: null\n"), nil, 1)
	header := "# Generated from deploy/prometheus/opsbot-alerts.yaml by make rules-update\n" +
		"# (deploy/prometheus_test.go): edit that file and regenerate, not this one.\n" +
		"# OpsbotDown reads the scrape job \"opsbot\" (the Service's name, which the\n" +
		"# ServiceMonitor component gives the job).\n"
	return append([]byte(header), data...), nil
}

// TestPrometheusRuleCopies checks (or, with -update, writes) the chart's
// and kustomize's copies of the rules file.
func TestPrometheusRuleCopies(t *testing.T) {
	rf := readRules(t, rulesFile)
	chart, err := chartTemplate(rf)
	if err != nil {
		t.Fatal(err)
	}
	kust, err := kustomizeRule(rf)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string][]byte{chartRuleFile: []byte(chart), kustomizeRuleFile: kust} {
		if *update {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not what %s generates (err %v): run make rules-update", path, rulesFile, err)
		}
	}
}

// withChartJob is the rules file as the chart must render it for a release
// whose Service is service in namespace.
func withChartJob(rf ruleFile, service, namespace string) ruleFile {
	out := ruleFile{}
	for _, g := range rf.Groups {
		ng := g
		ng.Rules = nil
		for _, r := range g.Rules {
			r.Expr = strings.ReplaceAll(r.Expr, defaultJob, fmt.Sprintf("job=%q, namespace=%q", service, namespace))
			ng.Rules = append(ng.Rules, r)
		}
		out.Groups = append(out.Groups, ng)
	}
	return out
}

func renderPrometheusRule(t *testing.T, release, namespace string, args ...string) prometheusRule {
	t.Helper()
	out, err := helmTemplate(t, chartDir, release, namespace,
		append([]string{"--set", "prometheusRule.enabled=true", "--show-only", "templates/prometheusrule.yaml"}, args...)...)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	m := decodeAll(t, "helm template (prometheusRule)", out)
	if len(m.prometheusRules) != 1 {
		t.Fatalf("%d PrometheusRules rendered, want 1", len(m.prometheusRules))
	}
	return *m.prometheusRules[0]
}

// diffRules reports the alerts where got differs from want.
func diffRules(t *testing.T, source string, got, want ruleFile) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	if len(got.Groups) != len(want.Groups) {
		t.Errorf("%s: %d rule groups, want %d", source, len(got.Groups), len(want.Groups))
		return
	}
	for i := range want.Groups {
		g, w := got.Groups[i], want.Groups[i]
		if g.Name != w.Name || g.Interval != w.Interval || len(g.Rules) != len(w.Rules) {
			t.Errorf("%s: group %d is %s (%d rules), want %s (%d rules)", source, i, g.Name, len(g.Rules), w.Name, len(w.Rules))
			continue
		}
		for j := range w.Rules {
			if !reflect.DeepEqual(g.Rules[j], w.Rules[j]) {
				t.Errorf("%s: alert %s differs:\n got  %+v\n want %+v", source, w.Rules[j].Alert, g.Rules[j], w.Rules[j])
			}
		}
	}
}

func TestHelmPrometheusRule(t *testing.T) {
	rf := readRules(t, rulesFile)

	t.Run("defaults", func(t *testing.T) {
		pr := renderPrometheusRule(t, "opsbot", "matrix")
		if pr.Namespace != "matrix" || pr.Name != "opsbot" {
			t.Errorf("PrometheusRule %s/%s, want matrix/opsbot", pr.Namespace, pr.Name)
		}
		// With the default values the chart's rules are the rules file's,
		// reading the ServiceMonitor's job.
		diffRules(t, "helm template (defaults)", pr.Spec, withChartJob(rf, "opsbot", "matrix"))
		checkRulesWithPromtool(t, "helm template (defaults)", pr.Spec)
	})

	t.Run("values", func(t *testing.T) {
		pr := renderPrometheusRule(t, "bot", "chat",
			"--set", "prometheusRule.namespace=monitoring",
			"--set", "prometheusRule.labels.release=kube-prometheus-stack",
			"--set", "prometheusRule.alertLabels.team=chat-ops",
			"--set", "prometheusRule.runbookBaseURL=https://docs.example.org/opsbot/operations",
			"--set", "prometheusRule.thresholds.inboxBacklog=1000",
			"--set", "prometheusRule.thresholds.transactionsRejected=20",
			"--set", "prometheusRule.thresholds.decryptionFailures=7",
			"--set", "prometheusRule.thresholds.oneTimeKeys=5",
			"--set", "prometheusRule.thresholds.homeserverErrorRatio=0.25",
			"--set", "prometheusRule.thresholds.skillErrors=11",
			"--set", "prometheusRule.thresholds.roomsWaitingForKeys=8",
			"--set", "prometheusRule.thresholds.leaderChanges=6")
		if pr.Namespace != "monitoring" || pr.Labels["release"] != "kube-prometheus-stack" || pr.Labels["app.kubernetes.io/name"] != "opsbot" {
			t.Errorf("PrometheusRule metadata %+v, want namespace monitoring and the release label", pr.ObjectMeta)
		}
		want := map[string]string{
			"OpsbotInboxBacklog":              "opsbot_inbox_backlog > 1000 and",
			"OpsbotTransactionsRejected":      "[10m])) > 20",
			"OpsbotDecryptionFailures":        "[10m])) > 7",
			"OpsbotOneTimeKeysLow":            "opsbot_one_time_keys < 5",
			"OpsbotHomeserverRequestsFailing": "> 0.25",
			"OpsbotSkillErrors":               "[10m])) > 11",
			"OpsbotRoomsWaitingForKeys":       "[5m])) >= 8",
			"OpsbotLeaderFlapping":            "[1h:1m]) > 6",
			"OpsbotDown":                      `up{job="bot-opsbot", namespace="chat"} == 0`,
		}
		for _, a := range pr.Spec.alerts() {
			if a.Labels["team"] != "chat-ops" || a.Labels["severity"] == "" {
				t.Errorf("alert %s: labels %v, want team chat-ops and its severity", a.Alert, a.Labels)
			}
			if u := a.Annotations["runbook_url"]; u != "https://docs.example.org/opsbot/operations#"+strings.ToLower(a.Alert) {
				t.Errorf("alert %s: runbook_url %q", a.Alert, u)
			}
			if w, ok := want[a.Alert]; ok && !strings.Contains(a.Expr, w) {
				t.Errorf("alert %s: expr %q, want it to contain %q", a.Alert, a.Expr, w)
			}
			delete(want, a.Alert)
		}
		if len(want) > 0 {
			t.Errorf("alerts missing: %v", want)
		}
		checkRulesWithPromtool(t, "helm template (values)", pr.Spec)
	})

	t.Run("off by default", func(t *testing.T) {
		out, err := helmTemplate(t, chartDir, "opsbot", "matrix")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "kind: PrometheusRule") {
			t.Error("the chart renders a PrometheusRule without prometheusRule.enabled")
		}
	})
}

func TestKustomizePrometheusRule(t *testing.T) {
	out := kustomizeBuild(t, "overlays/alerted", func(root string) {
		dir := filepath.Join(root, "overlays", "alerted")
		k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: alerted\n" +
			"resources: [../../base]\ncomponents: [../../components/servicemonitor, ../../components/prometheusrule]\n"
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	m := decodeAll(t, "kustomize base + servicemonitor + prometheusrule", out)
	checkManifests(t, m, want{database: "postgres", replicas: 2, chartSecret: true, serviceMonitor: true, prometheusRule: true, pdb: true,
		secretKeys: []string{"OPSBOT_AS_TOKEN", "OPSBOT_DATABASE_URI", "OPSBOT_HS_TOKEN", "OPSBOT_PICKLE_KEY"}})
	if len(m.prometheusRules) != 1 {
		t.Fatalf("%d PrometheusRules", len(m.prometheusRules))
	}
	pr := m.prometheusRules[0]
	if pr.Namespace != "alerted" {
		t.Errorf("PrometheusRule in namespace %q, want the overlay's", pr.Namespace)
	}
	// The ServiceMonitor's job is the Service's name: what OpsbotDown reads.
	if len(m.services) == 1 && fmt.Sprintf("job=%q", m.services[0].Name) != defaultJob {
		t.Errorf("the Service is %q, but OpsbotDown reads %s", m.services[0].Name, defaultJob)
	}
	diffRules(t, "kustomize prometheusrule", pr.Spec, readRules(t, rulesFile))
	checkRulesWithPromtool(t, "kustomize prometheusrule", pr.Spec)
}
