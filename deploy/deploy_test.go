// Tests for the deployment files in deploy/: the Helm chart and the
// kustomize base render to objects that decode strictly into the Kubernetes
// API types and agree with each other, with the Dockerfile and with opsbot
// itself (the rendered opsbot.yaml is validated by the real binary); the
// systemd unit is hardened and runs the right command; the Grafana dashboard
// uses only metrics opsbot exports.
//
// Nothing is skipped: without helm (built from go.mod's tool directive) or
// the opsbot binary (built from the repository root) the tests fail.
package deploy_test

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// The contract between the manifests, the image and opsbot.
const (
	binaryPath   = "/opsbot-appservice"      // the image's binary (Dockerfile ENTRYPOINT)
	configPath   = "/etc/opsbot/opsbot.yaml" // where the config is mounted
	appPort      = 29333                     // appservice API, /healthz, /readyz: port name http
	metricsPort  = 9333                      // /metrics: port name metrics
	imageUID     = 65532                     // distroless nonroot
	defaultDrain = 30 * time.Second          // opsbot's -drain-timeout default
)

// ---------------------------------------------------------------------------
// Tools: helm (go tool) and the opsbot binary, built once per run.

var (
	helmOnce, opsbotOnce sync.Once
	helmPath, opsbotPath string
	helmErr, opsbotErr   error
	tmpRoot              string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "opsbot-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tmpRoot = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func goEnv(extra ...string) []string {
	return append(os.Environ(), append([]string{"GOWORK=off"}, extra...)...)
}

// helm returns the path of the helm binary pinned by go.mod's tool
// directive; the go command builds it on first use (minutes) and caches it.
func helm(t *testing.T) string {
	t.Helper()
	helmOnce.Do(func() {
		cmd := exec.Command("go", "tool", "-n", "helm")
		cmd.Env = goEnv()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			helmErr = fmt.Errorf("building helm (go tool -n helm): %v\n%s", err, stderr.String())
			return
		}
		helmPath = strings.TrimSpace(string(out))
	})
	if helmErr != nil {
		t.Fatal(helmErr)
	}
	return helmPath
}

// opsbot builds opsbot-appservice from the repository root the way the
// Dockerfile does (pure Go, goolm).
func opsbot(t *testing.T) string {
	t.Helper()
	opsbotOnce.Do(func() {
		opsbotPath = filepath.Join(tmpRoot, "opsbot-appservice")
		cmd := exec.Command("go", "build", "-tags", "goolm", "-trimpath", "-o", opsbotPath, "./cmd/opsbot-appservice")
		cmd.Dir = ".."
		cmd.Env = goEnv("CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			opsbotErr = fmt.Errorf("building opsbot-appservice: %v\n%s", err, out)
		}
	})
	if opsbotErr != nil {
		t.Fatal(opsbotErr)
	}
	return opsbotPath
}

// runOpsbot runs the binary with exactly the given environment (no OPSBOT_*
// variables leak in from the test's own).
func runOpsbot(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(opsbot(t), args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmpRoot}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

var (
	envNamesOnce sync.Once
	envNames     []string
)

// opsbotEnvNames are the environment variables opsbot reads, as its usage
// text lists them ("Secrets may come from the environment: ...").
func opsbotEnvNames(t *testing.T) []string {
	t.Helper()
	envNamesOnce.Do(func() {
		_, stderr, _ := runOpsbot(t, nil, "-h")
		line := regexp.MustCompile(`(?m)environment:(.*)$`).FindStringSubmatch(stderr)
		if line != nil {
			envNames = regexp.MustCompile(`OPSBOT_[A-Z_]+`).FindAllString(line[1], -1)
		}
	})
	if len(envNames) == 0 {
		t.Fatal("opsbot-appservice -h lists no OPSBOT_ environment variables")
	}
	return envNames
}

// ---------------------------------------------------------------------------
// Strict decoding of Kubernetes objects.

// serviceMonitor is the part of monitoring.coreos.com/v1 ServiceMonitor the
// chart uses; decoding into it strictly catches misspelt or misplaced fields.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// manifests holds decoded objects by kind.
type manifests struct {
	source          string
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	configMaps      []*corev1.ConfigMap
	secrets         []*corev1.Secret
	pdbs            []*policyv1.PodDisruptionBudget
	jobs            []*batchv1.Job
	serviceMonitors []*serviceMonitor
	prometheusRules []*prometheusRule
}

// kinds maps each kind the deploy files may contain to its apiVersion and
// where a strictly decoded object goes. Any other kind is an error.
var kinds = map[string]struct {
	apiVersion string
	decode     func(doc []byte, m *manifests) error
}{
	"Deployment": {"apps/v1", func(d []byte, m *manifests) error { return into(d, &m.deployments) }},
	"Service":    {"v1", func(d []byte, m *manifests) error { return into(d, &m.services) }},
	"ConfigMap":  {"v1", func(d []byte, m *manifests) error { return into(d, &m.configMaps) }},
	"Secret":     {"v1", func(d []byte, m *manifests) error { return into(d, &m.secrets) }},
	"PodDisruptionBudget": {"policy/v1", func(d []byte, m *manifests) error {
		return into(d, &m.pdbs)
	}},
	"Job": {"batch/v1", func(d []byte, m *manifests) error { return into(d, &m.jobs) }},
	"ServiceMonitor": {"monitoring.coreos.com/v1", func(d []byte, m *manifests) error {
		return into(d, &m.serviceMonitors)
	}},
	"PrometheusRule": {"monitoring.coreos.com/v1", func(d []byte, m *manifests) error {
		return into(d, &m.prometheusRules)
	}},
}

func into[T any](doc []byte, list *[]*T) error {
	obj := new(T)
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return err
	}
	*list = append(*list, obj)
	return nil
}

// splitYAML splits a multi-document YAML stream, dropping empty documents
// (helm's "# Source:" comments alone).
func splitYAML(t *testing.T, data []byte) [][]byte {
	t.Helper()
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("splitting YAML: %v", err)
		}
		empty := true
		for _, line := range strings.Split(string(doc), "\n") {
			if l := strings.TrimSpace(line); l != "" && l != "---" && !strings.HasPrefix(l, "#") {
				empty = false
				break
			}
		}
		if !empty {
			docs = append(docs, doc)
		}
	}
}

// decodeAll decodes every document of data strictly into its API type.
func decodeAll(t *testing.T, source string, data []byte) *manifests {
	t.Helper()
	m := &manifests{source: source}
	for i, doc := range splitYAML(t, data) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("%s: document %d: %v", source, i, err)
		}
		k, ok := kinds[tm.Kind]
		if !ok {
			t.Errorf("%s: document %d: unexpected kind %q", source, i, tm.Kind)
			continue
		}
		if tm.APIVersion != k.apiVersion {
			t.Errorf("%s: %s has apiVersion %q, want %q", source, tm.Kind, tm.APIVersion, k.apiVersion)
		}
		if err := k.decode(doc, m); err != nil {
			t.Errorf("%s: %s (document %d) does not decode strictly: %v", source, tm.Kind, i, err)
		}
	}
	return m
}

// ---------------------------------------------------------------------------
// The checks every rendering (Helm or kustomize) must pass.

type want struct {
	database       string // sqlite or postgres
	replicas       int32
	namespace      string // "" when the rendering sets none
	secretName     string // "" when generated by kustomize (name with a hash)
	chartSecret    bool   // the rendering contains the Secret
	serviceMonitor bool
	prometheusRule bool
	job            bool
	pdb            bool
	// secretKeys are the keys the rendered Secret must hold (nil: any).
	secretKeys []string
}

// opsbotConfig is the part of opsbot.yaml the manifests depend on. opsbot
// itself validates the whole file (see checkConfigWithOpsbot).
type opsbotConfig struct {
	AppService struct {
		ID        string `json:"id"`
		Listen    string `json:"listen"`
		PublicURL string `json:"public_url"`
	} `json:"appservice"`
	Database struct {
		Type string `json:"type"`
		URI  string `json:"uri"`
	} `json:"database"`
	Encryption struct {
		Enabled bool `json:"enabled"`
	} `json:"encryption"`
	Metrics struct {
		Listen string `json:"listen"`
	} `json:"metrics"`
}

func checkManifests(t *testing.T, m *manifests, w want) {
	t.Helper()
	if len(m.deployments) != 1 || len(m.services) != 1 || len(m.configMaps) != 1 {
		t.Fatalf("%s: want one Deployment, Service and ConfigMap, got %d, %d, %d",
			m.source, len(m.deployments), len(m.services), len(m.configMaps))
	}
	dep, svc, cm := m.deployments[0], m.services[0], m.configMaps[0]
	count := func(what string, n int, want bool) {
		if (n == 1) != want || n > 1 {
			t.Errorf("%s: %d %s, want %v", m.source, n, what, want)
		}
	}
	count("Secret", len(m.secrets), w.chartSecret)
	count("ServiceMonitor", len(m.serviceMonitors), w.serviceMonitor)
	count("PrometheusRule", len(m.prometheusRules), w.prometheusRule)
	count("Job", len(m.jobs), w.job)
	count("PodDisruptionBudget", len(m.pdbs), w.pdb)

	if w.namespace != "" {
		for _, o := range objectMetas(m) {
			if o.Namespace != "" && o.Namespace != w.namespace {
				t.Errorf("%s: %s is in namespace %q, want %q", m.source, o.Name, o.Namespace, w.namespace)
			}
		}
	}

	// The config.
	text, ok := cm.Data["opsbot.yaml"]
	if !ok {
		t.Fatalf("%s: ConfigMap %s has no opsbot.yaml", m.source, cm.Name)
	}
	var cfg opsbotConfig
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
		t.Fatalf("%s: opsbot.yaml: %v", m.source, err)
	}
	if cfg.Database.Type == "" {
		cfg.Database.Type = "sqlite" // opsbot's default
	}
	if cfg.Database.Type != w.database {
		t.Errorf("%s: database.type %q, want %q", m.source, cfg.Database.Type, w.database)
	}
	appListenPort := checkListen(t, m.source, "appservice.listen", cfg.AppService.Listen)
	if appListenPort != appPort {
		t.Errorf("%s: appservice.listen port %d, want %d", m.source, appListenPort, appPort)
	}
	metricsOn := cfg.Metrics.Listen != ""
	if metricsOn {
		if p := checkListen(t, m.source, "metrics.listen", cfg.Metrics.Listen); p != metricsPort {
			t.Errorf("%s: metrics.listen port %d, want %d", m.source, p, metricsPort)
		}
	}

	// The Deployment.
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != w.replicas {
		t.Errorf("%s: replicas %v, want %d", m.source, dep.Spec.Replicas, w.replicas)
	}
	podLabels := dep.Spec.Template.Labels
	if dep.Spec.Selector == nil || !selects(dep.Spec.Selector.MatchLabels, podLabels) || len(dep.Spec.Selector.MatchExpressions) > 0 {
		t.Errorf("%s: the Deployment's selector does not select its pods", m.source)
	}
	switch w.database {
	case "sqlite":
		if dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
			t.Errorf("%s: SQLite: strategy %q, want Recreate (one process per database file)", m.source, dep.Spec.Strategy.Type)
		}
	case "postgres":
		// Only the leader is ever ready, so a rolling update must not wait
		// for new pods to become ready: it would never finish.
		ru := dep.Spec.Strategy.RollingUpdate
		if dep.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || ru == nil || ru.MaxUnavailable == nil {
			t.Errorf("%s: strategy %+v, want RollingUpdate with maxUnavailable", m.source, dep.Spec.Strategy)
		} else if n, err := intstr.GetScaledValueFromIntOrPercent(ru.MaxUnavailable, int(w.replicas), true); err != nil || n < int(w.replicas) {
			t.Errorf("%s: maxUnavailable %s: with standbys never ready a rolling update deadlocks unless it may replace all %d pods",
				m.source, ru.MaxUnavailable.String(), w.replicas)
		}
	}
	pod := dep.Spec.Template.Spec
	c := checkPod(t, m.source+": Deployment", pod, cm.Name)
	if len(c.Command) < 3 || !slices.Equal(c.Command[:3], []string{binaryPath, "-c", configPath}) {
		t.Errorf("%s: command %q, want %s -c %s ...", m.source, c.Command, binaryPath, configPath)
	}
	drain := defaultDrain
	for _, a := range c.Command[min(3, len(c.Command)):] {
		if v, ok := strings.CutPrefix(a, "-drain-timeout="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Errorf("%s: %s: %v", m.source, a, err)
			}
			drain = d
		}
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= drain {
		t.Errorf("%s: terminationGracePeriodSeconds (%s) must exceed the drain timeout %v", m.source, ptrString(g), drain)
	}

	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["http"] != appPort {
		t.Errorf("%s: container port http = %d, want %d", m.source, ports["http"], appPort)
	}
	if metricsOn && ports["metrics"] != metricsPort {
		t.Errorf("%s: container port metrics = %d, want %d (metrics.listen %s)", m.source, ports["metrics"], metricsPort, cfg.Metrics.Listen)
	}
	if !metricsOn && ports["metrics"] != 0 {
		t.Errorf("%s: metrics port without metrics.listen", m.source)
	}
	probe := func(name string, p *corev1.Probe, path string, required bool) {
		if p == nil {
			if required {
				t.Errorf("%s: no %s probe", m.source, name)
			}
			return
		}
		if p.HTTPGet == nil || p.HTTPGet.Path != path || !portIs(p.HTTPGet.Port, "http", appPort) {
			t.Errorf("%s: %s probe %+v, want GET %s on port http (%d)", m.source, name, p.ProbeHandler, path, appPort)
		}
	}
	probe("liveness", c.LivenessProbe, "/healthz", true)
	probe("readiness", c.ReadinessProbe, "/readyz", true)
	probe("startup", c.StartupProbe, "/healthz", false)

	// /data: an emptyDir (or a claim) for SQLite only, holding the database.
	dataMount := mountAt(&c, "/data")
	if w.database == "sqlite" {
		if dataMount == nil {
			t.Errorf("%s: SQLite without a volume at /data", m.source)
		} else if v := volume(pod, dataMount.Name); v == nil || (v.EmptyDir == nil && v.PersistentVolumeClaim == nil) {
			t.Errorf("%s: /data is not an emptyDir or claim", m.source)
		}
		if !strings.HasPrefix(cfg.Database.URI, "/data/") {
			t.Errorf("%s: database.uri %q is not under /data (the root filesystem is read-only)", m.source, cfg.Database.URI)
		}
	} else {
		if dataMount != nil {
			t.Errorf("%s: %s needs no /data volume", m.source, w.database)
		}
		for _, v := range pod.Volumes {
			if v.EmptyDir != nil {
				t.Errorf("%s: emptyDir %q on %s: opsbot writes nothing but a SQLite database", m.source, v.Name, w.database)
			}
		}
	}

	// The Secret, passed as environment variables.
	secretName := envSecret(t, m.source, c)
	if w.secretName != "" && secretName != w.secretName {
		t.Errorf("%s: env from Secret %q, want %q", m.source, secretName, w.secretName)
	}
	env := map[string]string{}
	if w.chartSecret && len(m.secrets) == 1 {
		s := m.secrets[0]
		if s.Name != secretName {
			t.Errorf("%s: the pods read Secret %q but the rendering makes %q", m.source, secretName, s.Name)
		}
		known := opsbotEnvNames(t)
		var keys []string
		for k, v := range s.Data {
			if !slices.Contains(known, k) {
				t.Errorf("%s: Secret key %s is not one of opsbot's variables %v", m.source, k, known)
			}
			keys = append(keys, k)
			if len(v) > 0 {
				env[k] = string(v)
			}
		}
		for k := range s.StringData {
			t.Errorf("%s: Secret uses stringData (%s); use data", m.source, k)
		}
		if w.secretKeys != nil {
			slices.Sort(keys)
			wantKeys := slices.Sorted(slices.Values(w.secretKeys))
			if !slices.Equal(keys, wantKeys) {
				t.Errorf("%s: Secret keys %v, want %v", m.source, keys, wantKeys)
			}
		}
	}

	// The Service: port http 29333 and metrics 9333, selecting the pods.
	if !selects(svc.Spec.Selector, podLabels) || len(svc.Spec.Selector) == 0 {
		t.Errorf("%s: Service selector %v does not select the pods %v", m.source, svc.Spec.Selector, podLabels)
	}
	svcPorts := map[string]corev1.ServicePort{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = p
	}
	if p := svcPorts["http"]; p.Port != appPort || !portIs(p.TargetPort, "http", appPort) {
		t.Errorf("%s: Service port http %+v, want %d -> http", m.source, p, appPort)
	}
	if p, ok := svcPorts["metrics"]; ok != metricsOn || (ok && (p.Port != metricsPort || !portIs(p.TargetPort, "metrics", metricsPort))) {
		t.Errorf("%s: Service port metrics %+v (metrics.listen %q), want %d -> metrics", m.source, p, cfg.Metrics.Listen, metricsPort)
	}
	if svc.Spec.PublishNotReadyAddresses {
		t.Errorf("%s: the Service must not route to standbys (publishNotReadyAddresses)", m.source)
	}

	// The registration's url must reach that Service.
	checkPublicURL(t, m.source, cfg.AppService.PublicURL, svc.Name, w.namespace, appPort)

	// The PodDisruptionBudget.
	for _, pdb := range m.pdbs {
		if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 || pdb.Spec.MaxUnavailable != nil {
			t.Errorf("%s: PDB minAvailable %v maxUnavailable %v, want minAvailable 1", m.source, pdb.Spec.MinAvailable, pdb.Spec.MaxUnavailable)
		}
		if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, podLabels) {
			t.Errorf("%s: PDB selector does not select the pods", m.source)
		}
		if p := pdb.Spec.UnhealthyPodEvictionPolicy; p == nil || *p != policyv1.AlwaysAllow {
			t.Errorf("%s: PDB unhealthyPodEvictionPolicy %v, want AlwaysAllow (standbys are never ready)", m.source, p)
		}
	}

	// The ServiceMonitor.
	for _, sm := range m.serviceMonitors {
		if sm.Name == "" || len(sm.Spec.Selector.MatchLabels) == 0 || !selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
			t.Errorf("%s: ServiceMonitor %q selector %v does not select the Service (labels %v)", m.source, sm.Name, sm.Spec.Selector.MatchLabels, svc.Labels)
		}
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("%s: ServiceMonitor endpoints %+v, want port metrics, path /metrics", m.source, sm.Spec.Endpoints)
		}
		if !metricsOn {
			t.Errorf("%s: ServiceMonitor without metrics.listen", m.source)
		}
	}

	// The registration Job.
	for _, job := range m.jobs {
		jc := checkPod(t, m.source+": Job", job.Spec.Template.Spec, cm.Name)
		if !slices.Equal(jc.Command, []string{binaryPath, "-c", configPath, "generate-registration"}) {
			t.Errorf("%s: Job command %q", m.source, jc.Command)
		}
		if s := envSecret(t, m.source+": Job", jc); s != secretName {
			t.Errorf("%s: Job reads Secret %q, the Deployment %q", m.source, s, secretName)
		}
		if job.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever {
			t.Errorf("%s: Job restartPolicy %q", m.source, job.Spec.Template.Spec.RestartPolicy)
		}
		if selects(svc.Spec.Selector, job.Spec.Template.Labels) {
			t.Errorf("%s: the Service selects the registration Job's pod", m.source)
		}
		if h := job.Annotations["helm.sh/hook"]; h != "" && !strings.Contains(h, "post-install") {
			t.Errorf("%s: Job hook %q", m.source, h)
		}
	}

	// Finally opsbot itself: the ConfigMap's opsbot.yaml with the Secret's
	// variables must be a valid config, run with the container's flags.
	checkConfigWithOpsbot(t, m.source, text, cfg, env, c.Command)
}

// checkPod checks a pod's security settings and its config mount, and
// returns its one container.
func checkPod(t *testing.T, source string, pod corev1.PodSpec, configMapName string) corev1.Container {
	t.Helper()
	if len(pod.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", source, len(pod.Containers))
	}
	c := pod.Containers[0]
	psc, sc := pod.SecurityContext, c.SecurityContext
	if psc == nil || sc == nil {
		t.Fatalf("%s: no pod or container securityContext", source)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken must be false (opsbot never calls the Kubernetes API)", source)
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	if !isTrue(psc.RunAsNonRoot) && !isTrue(sc.RunAsNonRoot) {
		t.Errorf("%s: runAsNonRoot is not set", source)
	}
	for _, uid := range []*int64{psc.RunAsUser, sc.RunAsUser} {
		if uid != nil && *uid != imageUID {
			t.Errorf("%s: runAsUser %d, want the image's user %d", source, *uid, imageUID)
		}
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Errorf("%s: readOnlyRootFilesystem is not true", source)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", source)
	}
	if isTrue(sc.Privileged) {
		t.Errorf("%s: privileged", source)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities %+v, want drop [ALL] and no add", source, sc.Capabilities)
	}
	seccomp := psc.SeccompProfile
	if sc.SeccompProfile != nil {
		seccomp = sc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile %+v, want RuntimeDefault", source, seccomp)
	}
	// The config file at configPath comes from the ConfigMap.
	m := mountAt(&c, filepath.Dir(configPath))
	if m == nil || !m.ReadOnly {
		t.Fatalf("%s: no read-only mount at %s", source, filepath.Dir(configPath))
	}
	v := volume(pod, m.Name)
	if v == nil || v.ConfigMap == nil || v.ConfigMap.Name != configMapName {
		t.Fatalf("%s: %s is not the ConfigMap %s", source, m.MountPath, configMapName)
	}
	file := filepath.Base(configPath)
	if len(v.ConfigMap.Items) > 0 && !slices.ContainsFunc(v.ConfigMap.Items, func(k corev1.KeyToPath) bool {
		return k.Key == "opsbot.yaml" && k.Path == file
	}) {
		t.Errorf("%s: ConfigMap items %+v do not put opsbot.yaml at %s", source, v.ConfigMap.Items, configPath)
	}
	return c
}

func envSecret(t *testing.T, source string, c corev1.Container) string {
	t.Helper()
	var names []string
	for _, e := range c.EnvFrom {
		if e.SecretRef != nil {
			names = append(names, e.SecretRef.Name)
		}
	}
	if len(names) != 1 {
		t.Errorf("%s: envFrom Secrets %v, want one", source, names)
		return ""
	}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "OPSBOT_") && e.ValueFrom == nil {
			t.Errorf("%s: %s set as a plain value: secrets belong in the Secret", source, e.Name)
		}
	}
	return names[0]
}

// checkListen checks a listen address is host:port on all interfaces (a pod
// is reached from outside itself: by the kubelet's probes and the Service).
func checkListen(t *testing.T, source, key, addr string) int {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("%s: %s %q: %v", source, key, addr, err)
		return 0
	}
	if host != "0.0.0.0" && host != "" && host != "::" && host != "[::]" {
		t.Errorf("%s: %s %q listens on %s only: unreachable from outside the pod", source, key, addr, host)
	}
	n, _ := strconv.Atoi(port)
	return n
}

func checkPublicURL(t *testing.T, source, publicURL, service, namespace string, port int) {
	t.Helper()
	u, err := url.Parse(publicURL)
	if err != nil || u.Scheme != "http" {
		t.Errorf("%s: appservice.public_url %q is not an http:// URL", source, publicURL)
		return
	}
	host := strings.Split(u.Hostname(), ".")
	if host[0] != service {
		t.Errorf("%s: appservice.public_url %q does not name the Service %s", source, publicURL, service)
	}
	if namespace != "" && (len(host) < 3 || host[1] != namespace || host[2] != "svc") {
		t.Errorf("%s: appservice.public_url %q, want %s.%s.svc...", source, publicURL, service, namespace)
	}
	if u.Port() != strconv.Itoa(port) {
		t.Errorf("%s: appservice.public_url %q, want port %d", source, publicURL, port)
	}
}

// checkConfigWithOpsbot validates the rendered opsbot.yaml with opsbot's own
// loader: generate-registration loads and validates the config (unknown keys
// and bad values fail) and needs neither database nor homeserver. It runs
// with the container's flags, the config at a temporary path, and the
// Secret's variables (plausible stand-ins for what the rendering leaves to
// the operator).
func checkConfigWithOpsbot(t *testing.T, source, text string, cfg opsbotConfig, env map[string]string, command []string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "opsbot.yaml")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	args := slices.Clone(command[1:])
	for i, a := range args {
		if a == configPath {
			args[i] = file
		}
	}
	args = append(args, "generate-registration")

	// Without secrets it must fail: the ConfigMap holds no tokens.
	if _, stderr, err := runOpsbot(t, nil, args...); err == nil || !strings.Contains(stderr, "appservice.as_token") {
		t.Errorf("%s: opsbot.yaml without the Secret's variables: err %v, stderr %s; the ConfigMap must hold no tokens", source, err, stderr)
	}

	full := map[string]string{
		"OPSBOT_AS_TOKEN":     "stand-in-as-token-0123456789",
		"OPSBOT_HS_TOKEN":     "stand-in-hs-token-0123456789",
		"OPSBOT_PICKLE_KEY":   "stand-in-pickle-key-0123456789",
		"OPSBOT_DATABASE_URI": "postgres://opsbot@postgres:5432/opsbot",
	}
	if cfg.Database.Type != "postgres" {
		delete(full, "OPSBOT_DATABASE_URI")
	}
	for k, v := range env {
		full[k] = v
	}
	stdout, stderr, err := runOpsbot(t, full, args...)
	if err != nil {
		t.Fatalf("%s: opsbot rejects the rendered opsbot.yaml: %v\n%s\n--- opsbot.yaml:\n%s", source, err, stderr, text)
	}
	var reg struct {
		ID      string `json:"id"`
		URL     string `json:"url"`
		ASToken string `json:"as_token"`
		HSToken string `json:"hs_token"`
	}
	if err := yaml.Unmarshal([]byte(stdout), &reg); err != nil {
		t.Fatalf("%s: registration: %v\n%s", source, err, stdout)
	}
	if reg.URL != cfg.AppService.PublicURL || reg.URL == "" {
		t.Errorf("%s: registration url %q, want appservice.public_url %q", source, reg.URL, cfg.AppService.PublicURL)
	}
	if id := cmp.Or(cfg.AppService.ID, "opsbot"); reg.ID != id {
		t.Errorf("%s: registration id %q, want %q", source, reg.ID, id)
	}
	if reg.ASToken != full["OPSBOT_AS_TOKEN"] || reg.HSToken != full["OPSBOT_HS_TOKEN"] {
		t.Errorf("%s: the registration's tokens are not the Secret's", source)
	}
}

func objectMetas(m *manifests) []metav1.ObjectMeta {
	var out []metav1.ObjectMeta
	for _, o := range m.deployments {
		out = append(out, o.ObjectMeta)
	}
	for _, o := range m.services {
		out = append(out, o.ObjectMeta)
	}
	for _, o := range m.configMaps {
		out = append(out, o.ObjectMeta)
	}
	for _, o := range m.secrets {
		out = append(out, o.ObjectMeta)
	}
	for _, o := range m.pdbs {
		out = append(out, o.ObjectMeta)
	}
	for _, o := range m.jobs {
		out = append(out, o.ObjectMeta)
	}
	for _, o := range m.serviceMonitors {
		out = append(out, o.ObjectMeta)
	}
	for _, o := range m.prometheusRules {
		out = append(out, o.ObjectMeta)
	}
	return out
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func portIs(p intstr.IntOrString, name string, number int) bool {
	if p.Type == intstr.String {
		return p.StrVal == name
	}
	return p.IntValue() == number
}

func mountAt(c *corev1.Container, path string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == path {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func volume(pod corev1.PodSpec, name string) *corev1.Volume {
	for i := range pod.Volumes {
		if pod.Volumes[i].Name == name {
			return &pod.Volumes[i]
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Helm.

const chartDir = "helm/opsbot"

func helmTemplate(t *testing.T, chart, release, namespace string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(helm(t), append([]string{"template", release, chart, "--namespace", namespace}, args...)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+tmpRoot+"/helm-cache", "HELM_CONFIG_HOME="+tmpRoot+"/helm-config", "HELM_DATA_HOME="+tmpRoot+"/helm-data")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, stderr.String())
	}
	return out, nil
}

var helmCases = []struct {
	name, release, namespace string
	args                     []string
	want                     want
}{
	{
		name: "defaults", release: "opsbot", namespace: "matrix",
		want: want{database: "postgres", replicas: 2, secretName: "opsbot-secrets",
			chartSecret: true, pdb: true, secretKeys: []string{}},
	},
	{
		// SQLite, one replica, existingSecret, ServiceMonitor, PrometheusRule and Job on.
		name: "sqlite", release: "opsbot", namespace: "chat", args: []string{"-f", "testdata/values-sqlite.yaml"},
		want: want{database: "sqlite", replicas: 1, secretName: "opsbot-tokens", serviceMonitor: true, prometheusRule: true, job: true},
	},
	{
		// Postgres, three replicas, secrets as values, Job on.
		name: "postgres", release: "ops", namespace: "bots", args: []string{"-f", "testdata/values-postgres.yaml"},
		want: want{database: "postgres", replicas: 3, secretName: "ops-opsbot-secrets", chartSecret: true, job: true, pdb: true,
			secretKeys: []string{"OPSBOT_AS_TOKEN", "OPSBOT_DATABASE_URI", "OPSBOT_DENDRITE_ADMIN_TOKEN", "OPSBOT_HS_TOKEN", "OPSBOT_PICKLE_KEY"}},
	},
	{
		// SQLite on a claim, the chart's default listen address, and no PDB
		// (pointless with one pod).
		name: "sqlite-claim", release: "bot", namespace: "default",
		args: []string{"--set", "config.database.type=sqlite", "--set", "persistence.existingClaim=opsbot-data",
			"--set", "config.appservice.listen=", // the chart's default
			"--set", "secret.asToken=as-0123456789abcdef", "--set", "secret.hsToken=hs-0123456789abcdef",
			"--set", "secret.pickleKey=pk-0123456789abcdef"},
		want: want{database: "sqlite", replicas: 1, secretName: "bot-opsbot-secrets", chartSecret: true,
			secretKeys: []string{"OPSBOT_AS_TOKEN", "OPSBOT_HS_TOKEN", "OPSBOT_PICKLE_KEY"}},
	},
}

func TestHelmTemplate(t *testing.T) {
	for _, tc := range helmCases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := helmTemplate(t, chartDir, tc.release, tc.namespace, tc.args...)
			if err != nil {
				t.Fatalf("helm template: %v", err)
			}
			m := decodeAll(t, "helm template "+tc.name, out)
			w := tc.want
			w.namespace = tc.namespace
			checkManifests(t, m, w)
			if tc.name == "sqlite-claim" {
				v := volume(m.deployments[0].Spec.Template.Spec, "data")
				if v == nil || v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != "opsbot-data" {
					t.Errorf("persistence.existingClaim not used for /data: %+v", v)
				}
			}
		})
	}
}

// TestHelmTemplateRefuses checks values that must not render.
func TestHelmTemplateRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  []string
		want string
	}{
		{"sqlite with two replicas", []string{"config.database.type=sqlite", "replicas=2"}, "SQLite allows one"},
		{"token in the ConfigMap", []string{"config.appservice.as_token=0123456789abcdef0"}, "keep secrets out of the ConfigMap"},
		{"pickle key in the ConfigMap", []string{"config.encryption.pickle_key=0123456789abcdef0"}, "keep secrets out of the ConfigMap"},
		{"admin token in the ConfigMap", []string{"config.encryption.dendrite_admin_token=0123456789abcdef0"}, "config.encryption.dendrite_admin_token: keep secrets out"},
		{"password in the ConfigMap", []string{"config.database.uri=postgres://opsbot:pw@db/opsbot"}, "holds a password"},
		{"ServiceMonitor without metrics", []string{"config.metrics.listen=", "serviceMonitor.enabled=true"}, "needs config.metrics.listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			for _, s := range tc.set {
				args = append(args, "--set", s)
			}
			_, err := helmTemplate(t, chartDir, "opsbot", "default", args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("helm template --set %v: err %v, want one containing %q", tc.set, err, tc.want)
			}
		})
	}
}

func TestHelmLint(t *testing.T) {
	for _, values := range [][]string{nil, {"-f", "testdata/values-sqlite.yaml"}, {"-f", "testdata/values-postgres.yaml"}} {
		cmd := exec.Command(helm(t), append([]string{"lint", "--strict", chartDir}, values...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("helm lint --strict %v: %v\n%s", values, err, out)
		}
	}
}

// TestHelmNotes renders NOTES.txt, which helm template leaves out and whose
// errors would otherwise show only at install time: a copy of the chart
// renders it through tpl into a document.
func TestHelmNotes(t *testing.T) {
	chart := filepath.Join(t.TempDir(), "opsbot")
	if err := os.CopyFS(chart, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(chart, "templates", "NOTES.txt"), filepath.Join(chart, "notes.tmpl")); err != nil {
		t.Fatal(err)
	}
	doc := `notes: {{ tpl (.Files.Get "notes.tmpl") . | toJson }}` + "\n"
	if err := os.WriteFile(filepath.Join(chart, "templates", "zz-notes.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range helmCases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := helmTemplate(t, chart, tc.release, tc.namespace, append(tc.args, "--show-only", "templates/zz-notes.yaml")...)
			if err != nil {
				t.Fatalf("rendering NOTES.txt: %v", err)
			}
			var n struct{ Notes string }
			if err := yaml.Unmarshal(out, &n); err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"generate-registration", tc.want.secretName, "svc.cluster.local:29333"} {
				if !strings.Contains(n.Notes, s) && !(s == "generate-registration" && tc.want.job) {
					t.Errorf("NOTES lack %q:\n%s", s, n.Notes)
				}
			}
			if tc.want.job && !strings.Contains(n.Notes, "logs job/") {
				t.Errorf("NOTES do not say how to read the registration Job:\n%s", n.Notes)
			}
			if missing := strings.Contains(n.Notes, "WARNING: not set"); missing != (tc.name == "defaults") {
				t.Errorf("NOTES missing-secret warning = %v:\n%s", missing, n.Notes)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Kustomize.

const kustomizeDir = "kustomize"

// TestKustomizeFiles decodes every YAML file under kustomize/ strictly: the
// kustomizations into kustomize's type, opsbot.yaml with opsbot, the rest
// into their Kubernetes types.
func TestKustomizeFiles(t *testing.T) {
	n := 0
	err := filepath.WalkDir(kustomizeDir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || (!strings.HasSuffix(path, ".yaml") && !strings.HasSuffix(path, ".yml")) {
			return err
		}
		n++
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		switch filepath.Base(path) {
		case "kustomization.yaml":
			var k kusttypes.Kustomization
			if err := yaml.UnmarshalStrict(data, &k); err != nil {
				t.Errorf("%s: %v", path, err)
			}
		case "opsbot.yaml":
			var cfg opsbotConfig
			if err := yaml.Unmarshal(data, &cfg); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			checkConfigWithOpsbot(t, path, string(data), cfg, nil, []string{binaryPath, "-c", configPath})
		default:
			m := decodeAll(t, path, data)
			if len(objectMetas(m)) == 0 {
				t.Errorf("%s: no Kubernetes objects", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 8 {
		t.Errorf("only %d YAML files under %s", n, kustomizeDir)
	}
}

// kustomizeBuild builds dir (relative to kustomize/) from a copy of the
// kustomize tree, after prepare has had its way with the copy.
func kustomizeBuild(t *testing.T, dir string, prepare func(root string)) []byte {
	t.Helper()
	root := filepath.Join(t.TempDir(), "kustomize")
	if err := os.CopyFS(root, os.DirFS(kustomizeDir)); err != nil {
		t.Fatal(err)
	}
	if prepare != nil {
		prepare(root)
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(root, dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestKustomizeBuild(t *testing.T) {
	allKeys := []string{"OPSBOT_AS_TOKEN", "OPSBOT_DATABASE_URI", "OPSBOT_HS_TOKEN", "OPSBOT_PICKLE_KEY"}
	t.Run("base", func(t *testing.T) {
		m := decodeAll(t, "kustomize base", kustomizeBuild(t, "base", nil))
		checkManifests(t, m, want{database: "postgres", replicas: 2, chartSecret: true, pdb: true, secretKeys: allKeys})
		for k, v := range m.secrets[0].Data {
			if len(v) != 0 {
				t.Errorf("the base's placeholder Secret has a value for %s", k)
			}
		}
	})
	t.Run("example overlay", func(t *testing.T) {
		out := kustomizeBuild(t, "overlays/example", func(root string) {
			dir := filepath.Join(root, "overlays", "example")
			example, err := os.ReadFile(filepath.Join(dir, "secrets.env.example"))
			if err != nil {
				t.Fatal(err)
			}
			filled := regexp.MustCompile(`(?m)^(OPSBOT_[A-Z_]+TOKEN|OPSBOT_PICKLE_KEY)=$`).ReplaceAllString(string(example), "${1}=value-of-${1}-0123456789")
			if err := os.WriteFile(filepath.Join(dir, "secrets.env"), []byte(filled), 0o600); err != nil {
				t.Fatal(err)
			}
		})
		m := decodeAll(t, "kustomize overlays/example", out)
		checkManifests(t, m, want{database: "postgres", replicas: 2, namespace: "opsbot", chartSecret: true, pdb: true, secretKeys: allKeys})
		if v := m.secrets[0].Data["OPSBOT_AS_TOKEN"]; string(v) != "value-of-OPSBOT_AS_TOKEN-0123456789" {
			t.Errorf("the overlay's secrets.env did not replace the base's Secret: %q", v)
		}
	})
	t.Run("servicemonitor component", func(t *testing.T) {
		out := kustomizeBuild(t, "overlays/monitored", func(root string) {
			dir := filepath.Join(root, "overlays", "monitored")
			k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: monitored\n" +
				"resources: [../../base]\ncomponents: [../../components/servicemonitor]\n"
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
				t.Fatal(err)
			}
		})
		m := decodeAll(t, "kustomize base + servicemonitor", out)
		// public_url names the namespace opsbot: only the Service name is checked here.
		checkManifests(t, m, want{database: "postgres", replicas: 2, chartSecret: true, serviceMonitor: true, pdb: true, secretKeys: allKeys})
	})
}

// ---------------------------------------------------------------------------
// Dockerfile.

// dockerLines returns the Dockerfile's instructions with continuation lines
// joined and comments dropped.
func dockerLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	cur := ""
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "#") || (l == "" && cur == "") {
			continue
		}
		if s, ok := strings.CutSuffix(l, "\\"); ok {
			cur += s + " "
			continue
		}
		lines = append(lines, strings.Join(strings.Fields(cur+l), " "))
		cur = ""
	}
	return lines
}

func TestDockerfile(t *testing.T) {
	lines := dockerLines(t, "docker/Dockerfile")
	goMod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(goMod)
	if goVersion == nil {
		t.Fatal("no go line in ../go.mod")
	}

	// Stages: golang:<the module's go version> AS build, then the runtime.
	var stages [][]string
	for _, l := range lines {
		if strings.HasPrefix(strings.ToUpper(l), "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("instruction before FROM: %s", l)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], l)
	}
	if len(stages) != 2 {
		t.Fatalf("%d stages, want 2 (build, runtime)", len(stages))
	}
	build, final := stages[0], stages[1]
	if want := "FROM golang:" + string(goVersion[1]) + " AS build"; build[0] != want {
		t.Errorf("build stage %q, want %q", build[0], want)
	}
	var out string
	for _, l := range build {
		if strings.HasPrefix(l, "RUN ") && strings.Contains(l, "go build") {
			for _, want := range []string{"CGO_ENABLED=0", "-tags goolm", "-trimpath", "./cmd/opsbot-appservice"} {
				if !strings.Contains(l, want) {
					t.Errorf("go build without %s: %s", want, l)
				}
			}
			if m := regexp.MustCompile(`-o (\S+)`).FindStringSubmatch(l); m != nil {
				out = m[1]
			}
		}
	}
	if out == "" {
		t.Fatal("no RUN ... go build -o ... in the build stage")
	}

	base := strings.Fields(final[0])[1]
	distroless := regexp.MustCompile(`^gcr\.io/distroless/static(-debian\d+)?:nonroot$`).MatchString(base)
	if !distroless && base != "scratch" {
		t.Errorf("runtime base %q, want gcr.io/distroless/static:nonroot or scratch", base)
	}
	var user string
	var expose []string
	var entrypoint []string
	copied, certs := false, distroless
	for _, l := range final[1:] {
		f := strings.Fields(l)
		switch strings.ToUpper(f[0]) {
		case "USER":
			user = f[1]
		case "EXPOSE":
			expose = append(expose, f[1:]...)
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(strings.TrimPrefix(l, f[0]+" ")), &entrypoint); err != nil {
				t.Errorf("ENTRYPOINT is not in exec (JSON) form: %s", l)
			}
		case "COPY":
			if slices.Contains(f, "--from=build") && slices.Contains(f, out) && f[len(f)-1] == binaryPath {
				copied = true
			}
			if strings.Contains(l, "ca-certificates") {
				certs = true
			}
		}
	}
	if !copied {
		t.Errorf("no COPY --from=build %s %s", out, binaryPath)
	}
	if !certs {
		t.Error("scratch without CA certificates: opsbot cannot reach an https homeserver")
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("USER %q: want a numeric non-root user (runAsNonRoot can only verify numbers)", user)
	} else if n != imageUID {
		t.Errorf("USER %d, but the manifests run as %d", n, imageUID)
	}
	for _, p := range []int{appPort, metricsPort} {
		if !slices.Contains(expose, strconv.Itoa(p)) {
			t.Errorf("EXPOSE %v lacks %d", expose, p)
		}
	}
	if !slices.Equal(entrypoint, []string{binaryPath, "-c", configPath}) {
		t.Errorf("ENTRYPOINT %q, want [%s -c %s]", entrypoint, binaryPath, configPath)
	}
}

// ---------------------------------------------------------------------------
// systemd.

// unitFile parses a systemd unit: section -> key -> values (keys may repeat).
func unitFile(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string]map[string][]string{}
	section := ""
	for i, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
			if unit[section] == nil {
				unit[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not key=value in a section: %s", path, i+1, l)
			}
			k = strings.TrimSpace(k)
			unit[section][k] = append(unit[section][k], strings.TrimSpace(v))
		}
	}
	return unit
}

func TestSystemdUnit(t *testing.T) {
	unit := unitFile(t, "systemd/opsbot.service")
	svc := unit["Service"]
	if svc == nil {
		t.Fatal("no [Service] section")
	}
	one := func(k string) string {
		if len(svc[k]) != 1 {
			t.Errorf("[Service] %s: %q, want exactly one", k, svc[k])
			return ""
		}
		return svc[k][0]
	}
	for k, want := range map[string]string{
		"EnvironmentFile":   "/etc/opsbot/secrets.env",
		"StateDirectory":    "opsbot",
		"ProtectSystem":     "strict",
		"NoNewPrivileges":   "yes",
		"Restart":           "on-failure",
		"ProtectHome":       "yes",
		"PrivateTmp":        "yes",
		"PrivateDevices":    "yes",
		"RestrictSUIDSGID":  "yes",
		"KillSignal":        "SIGTERM",
		"WorkingDirectory":  "/var/lib/opsbot",
		"LockPersonality":   "yes",
		"RestrictRealtime":  "yes",
		"ProtectKernelLogs": "yes",
	} {
		if got := one(k); got != want {
			t.Errorf("[Service] %s=%s, want %s", k, got, want)
		}
	}
	if v := svc["CapabilityBoundingSet"]; len(v) != 1 || v[0] != "" {
		t.Errorf("CapabilityBoundingSet=%q, want empty (no capabilities)", v)
	}
	if one("DynamicUser") != "yes" {
		if u := svc["User"]; len(u) != 1 || u[0] == "" || u[0] == "root" || u[0] == "0" {
			t.Errorf("neither DynamicUser=yes nor a non-root User=: %q", u)
		}
	}
	// The Prometheus process collector reads /proc/stat: ProcSubset=pid
	// would make every /metrics scrape fail.
	if v := svc["ProcSubset"]; len(v) > 0 && v[0] == "pid" {
		t.Error("ProcSubset=pid hides /proc/stat, which the metrics' process collector needs")
	}

	execStart := strings.Fields(one("ExecStart"))
	if len(execStart) == 0 || !filepath.IsAbs(execStart[0]) || filepath.Base(execStart[0]) != "opsbot-appservice" {
		t.Fatalf("ExecStart %q, want an absolute path to opsbot-appservice", execStart)
	}
	i := slices.Index(execStart, "-c")
	if i < 0 || i+1 >= len(execStart) || execStart[i+1] != configPath {
		t.Errorf("ExecStart %q, want -c %s", execStart, configPath)
	}
	drain := defaultDrain
	for j, a := range execStart {
		if v, ok := strings.CutPrefix(a, "-drain-timeout"); ok {
			v = strings.TrimPrefix(v, "=")
			if v == "" && j+1 < len(execStart) {
				v = execStart[j+1]
			}
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Errorf("ExecStart -drain-timeout %q: %v", v, err)
			}
			drain = d
		}
	}
	stop, err := time.ParseDuration(one("TimeoutStopSec"))
	if err != nil || stop <= drain {
		t.Errorf("TimeoutStopSec=%s must be longer than the drain timeout %v", svc["TimeoutStopSec"], drain)
	}

	// opsbot accepts ExecStart's flags: run them with generate-registration
	// on the example config (the one generate-config prints).
	example, _, err := runOpsbot(t, nil, "generate-config")
	if err != nil {
		t.Fatalf("generate-config: %v", err)
	}
	cfgFile := filepath.Join(t.TempDir(), "opsbot.yaml")
	if err := os.WriteFile(cfgFile, []byte(example), 0o600); err != nil {
		t.Fatal(err)
	}
	args := slices.Clone(execStart[1:])
	args[i] = cfgFile
	if _, stderr, err := runOpsbot(t, nil, append(args, "generate-registration")...); err != nil {
		t.Errorf("opsbot rejects ExecStart's flags %q: %v\n%s", execStart[1:], err, stderr)
	}

	if !slices.ContainsFunc(unit["Unit"]["After"], func(s string) bool { return strings.Contains(s, "network-online.target") }) {
		t.Error("[Unit] After= lacks network-online.target")
	}
	if w := unit["Install"]["WantedBy"]; len(w) != 1 || w[0] != "multi-user.target" {
		t.Errorf("[Install] WantedBy=%q, want multi-user.target", w)
	}
}

// ---------------------------------------------------------------------------
// Grafana.

// opsbotMetrics are the metrics opsbot exports and their labels, as defined
// in appservice/metrics/metrics.go. Keep the two in step: this test checks
// the dashboard against this list; the main module checks the reverse.
var opsbotMetrics = map[string]struct {
	histogram bool
	labels    []string
}{
	"opsbot_transactions_total":         {false, []string{"outcome"}},
	"opsbot_events_total":               {false, []string{"type"}},
	"opsbot_event_handling_seconds":     {true, []string{"type"}},
	"opsbot_inbox_backlog":              {false, nil},
	"opsbot_decryptions_total":          {false, []string{"bot", "outcome"}},
	"opsbot_encryptions_total":          {false, []string{"outcome"}},
	"opsbot_to_device_events_total":     {false, []string{"outcome"}},
	"opsbot_skill_invocations_total":    {false, []string{"skill", "outcome"}},
	"opsbot_skill_duration_seconds":     {true, []string{"skill"}},
	"opsbot_homeserver_requests_total":  {false, []string{"op", "outcome"}},
	"opsbot_homeserver_request_seconds": {true, []string{"op"}},
	"opsbot_build_info":                 {false, []string{"version"}},
	"opsbot_bot_devices":                {false, nil},
	"opsbot_leader":                     {false, nil},
	"opsbot_ready":                      {false, nil},
	"opsbot_one_time_keys":              {false, []string{"bot"}},
	"opsbot_bot_cross_signed":           {false, []string{"bot"}},
	"opsbot_key_backup_uploaded_total":  {false, []string{"bot"}},
	"opsbot_key_backup_failures_total":  {false, []string{"bot", "stage"}},
	"opsbot_verifications_total":        {false, []string{"outcome"}},
	"opsbot_verifications_waiting":      {false, nil},
	"opsbot_bot_key_delivery":           {false, []string{"bot"}},
	"opsbot_leader_epoch":               {false, nil},
	"opsbot_parked_rooms":               {false, nil},
	"opsbot_parked_oldest_seconds":      {false, nil},
}

// targetLabels are the labels Prometheus adds when it scrapes (kubernetes
// service discovery and the Prometheus Operator).
var targetLabels = []string{"job", "instance", "pod", "namespace", "service", "container", "endpoint"}

var metricName = regexp.MustCompile(`\bopsbot_[a-z0-9_]+`)

// metricOf maps a series name used in PromQL to the metric that exports it.
func metricOf(name string) (string, bool) {
	if _, ok := opsbotMetrics[name]; ok {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && opsbotMetrics[base].histogram {
			return base, true
		}
	}
	return "", false
}

func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana/opsbot-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var dash map[string]any
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	for _, k := range []string{"uid", "title", "schemaVersion", "panels", "templating"} {
		if dash[k] == nil {
			t.Errorf("dashboard has no %q", k)
		}
	}

	// Every opsbot_ name anywhere in the dashboard (queries, variables,
	// descriptions) must be something opsbot exports.
	used := map[string]bool{}
	for _, name := range metricName.FindAllString(string(data), -1) {
		base, ok := metricOf(name)
		if !ok {
			t.Errorf("the dashboard uses %s, which opsbot does not export (appservice/metrics/metrics.go)", name)
			continue
		}
		used[base] = true
	}
	for _, name := range []string{
		"opsbot_transactions_total", "opsbot_event_handling_seconds", "opsbot_inbox_backlog",
		"opsbot_decryptions_total", "opsbot_skill_invocations_total", "opsbot_skill_duration_seconds",
		"opsbot_homeserver_requests_total", "opsbot_homeserver_request_seconds", "opsbot_bot_devices", "opsbot_leader",
	} {
		if !used[name] {
			t.Errorf("the dashboard does not show %s", name)
		}
	}

	// Panels: unique ids, a place on the grid, the datasource variable, and
	// queries whose labels the metrics have.
	panels, _ := dash["panels"].([]any)
	if len(panels) < 10 {
		t.Fatalf("%d panels", len(panels))
	}
	ids := map[float64]bool{}
	exprs := 0
	for _, p := range panels {
		panel := p.(map[string]any)
		title, _ := panel["title"].(string)
		id, _ := panel["id"].(float64)
		if id == 0 || ids[id] {
			t.Errorf("panel %q: id %v missing or repeated", title, panel["id"])
		}
		ids[id] = true
		if gp, ok := panel["gridPos"].(map[string]any); !ok || gp["w"] == nil || gp["h"] == nil || gp["x"] == nil || gp["y"] == nil {
			t.Errorf("panel %q: no gridPos", title)
		}
		if panel["type"] == "row" {
			continue
		}
		if ds, _ := panel["datasource"].(map[string]any); ds == nil || ds["uid"] != "${datasource}" {
			t.Errorf("panel %q: datasource %v, want the ${datasource} variable", title, panel["datasource"])
		}
		targets, _ := panel["targets"].([]any)
		if len(targets) == 0 {
			t.Errorf("panel %q: no queries", title)
		}
		for _, tg := range targets {
			target := tg.(map[string]any)
			expr, _ := target["expr"].(string)
			legend, _ := target["legendFormat"].(string)
			exprs++
			checkPromQL(t, title, expr, legend)
		}
	}
	if exprs < 15 {
		t.Errorf("only %d queries", exprs)
	}
}

var (
	byClause     = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matcher      = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
	legendLabel  = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
	quantileFunc = regexp.MustCompile(`histogram_quantile\(`)
)

// checkPromQL checks what can be checked without a PromQL parser: balanced
// brackets, metric names, the labels used in matchers, by-clauses and the
// legend, and that histogram_quantile reads buckets by le.
func checkPromQL(t *testing.T, panel, expr, legend string) {
	t.Helper()
	if strings.TrimSpace(expr) == "" {
		t.Errorf("panel %q: empty query", panel)
		return
	}
	var stack []rune
	inString := false
	for _, r := range expr {
		switch {
		case r == '"':
			inString = !inString
		case inString:
		case r == '(' || r == '{' || r == '[':
			stack = append(stack, r)
		case r == ')' || r == '}' || r == ']':
			open := map[rune]rune{')': '(', '}': '{', ']': '['}[r]
			if len(stack) == 0 || stack[len(stack)-1] != open {
				t.Errorf("panel %q: unbalanced %q in %s", panel, r, expr)
				return
			}
			stack = stack[:len(stack)-1]
		}
	}
	if len(stack) > 0 || inString {
		t.Errorf("panel %q: unclosed brackets or string in %s", panel, expr)
	}
	allowed := slices.Clone(targetLabels)
	names := metricName.FindAllString(expr, -1)
	if len(names) == 0 {
		t.Errorf("panel %q: query reads no opsbot metric: %s", panel, expr)
	}
	buckets := false
	for _, n := range names {
		base, ok := metricOf(n)
		if !ok {
			continue // reported by the caller
		}
		allowed = append(allowed, opsbotMetrics[base].labels...)
		if strings.HasSuffix(n, "_bucket") {
			buckets = true
			allowed = append(allowed, "le")
		}
	}
	var labels []string
	for _, m := range byClause.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(m[1], ",") {
			labels = append(labels, strings.TrimSpace(l))
		}
	}
	for _, m := range matcher.FindAllStringSubmatch(expr, -1) {
		labels = append(labels, m[1])
	}
	for _, m := range legendLabel.FindAllStringSubmatch(legend, -1) {
		labels = append(labels, m[1])
	}
	for _, l := range labels {
		if l != "" && !slices.Contains(allowed, l) {
			t.Errorf("panel %q: label %q is not a label of %v: %s", panel, l, names, expr)
		}
	}
	if quantileFunc.MatchString(expr) && (!buckets || !regexp.MustCompile(`by \([^)]*\ble\b`).MatchString(expr)) {
		t.Errorf("panel %q: histogram_quantile needs _bucket series summed by le: %s", panel, expr)
	}
}
