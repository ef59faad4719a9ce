# opsbot — see README.md. Everything builds pure Go (CGO_ENABLED=0, goolm);
# the race detector needs cgo, so unit tests run with cgo on.

GO        ?= go
BIN       := .build/bin
OPSBOT    := $(BIN)/opsbot-appservice
DENDRITE  := $(BIN)/dendrite
SYNAPSE   := .build/synapse-root
# The homeserver make demo runs: dendrite (quick to start) or synapse.
HOMESERVER ?= dendrite
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.Version=$(VERSION)
UNIT_PKGS := ./appservice/... ./skills/... ./cmd/...

.PHONY: all build build-cgo dendrite synapse demo test lint unit examples rules-test rules-update integration deploy-test bench bench-peer bench-e2e fuzz fuzz-short soak clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -tags goolm -trimpath -ldflags '$(LDFLAGS)' -o $(OPSBOT) ./cmd/opsbot-appservice

# The cgo build (libolm instead of goolm) must keep compiling too.
build-cgo:
	CGO_ENABLED=1 $(GO) build -o /dev/null ./...

# Dendrite v0.13.8, pinned in integration/tools/go.mod, for tests and the demo.
dendrite:
	cd integration/tools && GOWORK=off $(GO) build -o ../../$(DENDRITE) github.com/matrix-org/dendrite/cmd/dendrite

# Synapse from Debian's unstable suite in a chroot (integration/tools/synapse-root.sh;
# about a minute, 550 MB, needs root), for the tests and make demo HOMESERVER=synapse.
synapse:
	integration/tools/synapse-root.sh $(SYNAPSE)

# A local homeserver (Dendrite, or HOMESERVER=synapse) and opsbot on SQLite,
# a demo user and room; Ctrl-C stops it.
demo: build $(HOMESERVER)
	$(GO) run ./integration/demo -opsbot $(OPSBOT) -homeserver $(HOMESERVER)

# The whole suite: formatting, vet, unit tests with the race detector on both
# databases, the alert rules' tests, and the integration tests against a real
# Dendrite, a real Synapse, Postgres and Prometheus.
test: lint build build-cgo dendrite synapse unit examples rules-test fuzz-short integration deploy-test

lint:
	@out=$$(gofmt -l appservice skills cmd integration deploy examples); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags goolm ./...
	CGO_ENABLED=1 $(GO) vet ./...

# The module of docs/skills.md "Your own skills, your own binary": opsbot
# with a skill of its own, built against this checkout (its go.mod replaces
# the opsbot module with ../..). The integration tests run the binary.
examples:
	cd examples/hello && $(GO) vet -tags goolm ./... && CGO_ENABLED=1 $(GO) test -race -count=1 -tags goolm ./...

unit:
	CGO_ENABLED=1 $(GO) test -race -count=1 -tags goolm $(UNIT_PKGS)

# The Prometheus alert rules in deploy/prometheus/ and their unit tests
# (promtool, from Debian's prometheus package; deploy/prometheus/README.md).
rules-test:
	promtool check rules deploy/prometheus/opsbot-alerts.yaml
	promtool test rules deploy/prometheus/tests/*.yaml

# Regenerate the Helm chart's and kustomize's copies of the alert rules
# after editing deploy/prometheus/opsbot-alerts.yaml.
rules-update:
	cd deploy && $(GO) test -count=1 -run TestPrometheusRuleCopies . -update

integration:
	DENDRITE_BIN=$(CURDIR)/$(DENDRITE) SYNAPSE_ROOT=$(CURDIR)/$(SYNAPSE) $(GO) test -count=1 -timeout 25m -tags goolm ./integration/...

# The deployment files in deploy/ (their own Go module: Helm chart,
# kustomize, Dockerfile, systemd unit, Grafana dashboard). The first run
# builds Helm, which takes minutes.
deploy-test:
	cd deploy && $(GO) test -count=1 ./...

# Fuzz targets (package:Fuzzer); seeds are in the code, and any crasher go
# test finds is written to the package's testdata/fuzz, to be committed.
FUZZERS := ./appservice/intake:FuzzTransaction ./appservice/config:FuzzParse \
	./appservice/discovery:FuzzParseWellKnown ./skills:FuzzCommand ./skills:FuzzParse \
	./skills/internal/cron:FuzzParse ./skills/builtin/webhook:FuzzWebhook ./skills/external:FuzzParseAnswer \
	./appservice/sanitize:FuzzHTML
FUZZTIME ?= 60s

fuzz:
	@for f in $(FUZZERS); do pkg=$${f%%:*}; fn=$${f##*:}; \
		echo "fuzz $$fn in $$pkg for $(FUZZTIME)"; \
		$(GO) test -tags goolm -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; done

# A short run of every fuzzer, part of make test. A fixed number of inputs
# rather than a duration: under load, a timed run can end while a worker is
# still busy and go test reports that as "context deadline exceeded".
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=5000x

# The long fault-injection run: SIGKILL at random moments during 1,000
# commands, then every command must be answered exactly once
# (OPSBOT_SOAK_COMMANDS and OPSBOT_SOAK_KILLS change the load), a 60 s
# homeserver outage, and ten rounds of the four failover faults (SIGKILL,
# database session terminated, SIGSTOP beyond the lease, SIGTERM) on two
# replicas. make test runs one round of each. Not part of make test.
soak: build dendrite synapse
	DENDRITE_BIN=$(CURDIR)/$(DENDRITE) SYNAPSE_ROOT=$(CURDIR)/$(SYNAPSE) OPSBOT_OUTAGE_SECONDS=60 OPSBOT_FAILOVER_ROUNDS=10 \
		$(GO) test -count=1 -timeout 60m -tags goolm,soak \
		-run 'TestKillUnderLoad|TestHomeserverOutage|TestFailoverFaults' -v ./integration/

# End-to-end latency through Dendrite and memory footprint
# (integration/bench_test.go; about five minutes).
bench-e2e: build dendrite synapse
	DENDRITE_BIN=$(CURDIR)/$(DENDRITE) SYNAPSE_ROOT=$(CURDIR)/$(SYNAPSE) $(GO) test -count=1 -timeout 30m -tags goolm,bench -run 'TestBench' -v ./integration/ | grep -E 'RESULT|^(ok|FAIL|---)'

bench: bench-peer
	@mkdir -p .build
	@echo "Benchmarks (docs/performance.md): a few minutes on 2 cores; needs Postgres on 127.0.0.1:5432 like the tests. Output also in .build/bench.txt"
	@{ CGO_ENABLED=0 $(GO) test -run '^$$' -bench . -benchtime 3s -count 1 -timeout 20m -tags goolm ./integration/bench/ 2>&1; echo $$? >.build/bench.rc; } | tee .build/bench.txt; exit $$(cat .build/bench.rc)

# The peer BenchmarkPeer runs (integration/bench/peer): matrix-bot-sdk, pinned by
# its lockfile, installed again when the lockfile changes. Install scripts off:
# the download of its native crypto module cannot run here, and the peer is
# plaintext. A failed install fails make bench.
PEER := integration/bench/peer
bench-peer: $(PEER)/node_modules/.package-lock.json

$(PEER)/node_modules/.package-lock.json: $(PEER)/package-lock.json
	npm ci --prefix $(PEER) --ignore-scripts --no-audit --no-fund --loglevel=error

clean:
	rm -rf .build
