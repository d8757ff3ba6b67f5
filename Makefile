# The two entry points (see README.md): `make demo` and `make test`. Each does
# all of its own set-up on a fresh Debian machine: packages, Go tools, build.
SHELL := /bin/bash
export GOTOOLCHAIN := local
export PATH := /usr/local/go/bin:$(PATH)

GO          ?= go
# Go tools, pinned by a module version the Go module proxy serves (not by a
# release name such as staticcheck's 2026.2.2), installed into the checkout
# so that nothing depends on what a machine has in ~/go/bin.
TOOLS       := $(CURDIR)/bin/tools
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Debian packages. The demo needs the test machines' tools only; the tests
# also need Nix for golden vectors, OpenSSH and sudo for the SSH tests, and
# what the benchmarks and fault injection use.
DEMO_PACKAGES := debootstrap debian-archive-keyring systemd-container iproute2 util-linux mount ca-certificates
TEST_PACKAGES := $(DEMO_PACKAGES) nix-bin openssh-server openssh-client sudo nftables procps bc zsh fish chromium-headless-shell
# The MinIO server for the binary cache tests: built from source once per
# machine (about 3 minutes on 2 cores), cached by version outside the
# checkout; the tests find it through DEPLOY_MINIO.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
TOOLS_CACHE   ?= /var/cache/deploy-tools
MINIO         := $(TOOLS_CACHE)/minio-$(MINIO_VERSION)/minio
export DEPLOY_MINIO := $(MINIO)
# The Prometheus server for the metric gate tests: Debian's package (the
# release's candidate, 2.42 in bookworm), downloaded and unpacked
# (apt-get download + dpkg-deb -x), never installed: its postinst starts a
# daemon through the init script where PID 1 is not systemd. Cached outside
# the checkout with the package's version beside it; the tests find it
# through DEPLOY_PROMETHEUS and start their own.
PROMETHEUS         := $(TOOLS_CACHE)/prometheus-debian/prometheus
export DEPLOY_PROMETHEUS := $(PROMETHEUS)
# The power-loss tests' qemu host (make test-powerloss only).
QEMU_PACKAGES := $(DEMO_PACKAGES) qemu-system-x86 e2fsprogs
FUZZTIME    ?= 30s

.PHONY: all build deps deps-demo tools minio prometheus lint tidy-check test test-unit test-powerloss fuzz bench demo clean

all: build

# apt-packages installs the Debian packages in $(1) that are missing (a
# package removed with its configuration kept counts as missing: `dpkg -s`
# would call it present).
define apt-packages
	@missing=""; for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q '^install ok installed$$' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "make: need root to install$$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

# What the demo needs: the test machines' packages and the Go modules.
deps-demo:
	$(call apt-packages,$(DEMO_PACKAGES))
	$(GO) mod download

# What the tests need: every package, the Go modules and the Go tools.
deps:
	$(call apt-packages,$(TEST_PACKAGES))
	$(GO) mod download
	$(MAKE) --no-print-directory tools minio prometheus

tools:
	GOBIN=$(TOOLS) $(GO) install $(STATICCHECK)

minio:
	@if [ ! -x $(MINIO) ]; then \
		echo "make: building the MinIO server $(MINIO_VERSION) for the cache tests (once per machine, about 3 minutes)"; \
		tmp=$$(mktemp -d) && GOBIN=$$tmp $(GO) install github.com/minio/minio@$(MINIO_VERSION) && \
		mkdir -p $(dir $(MINIO)) && mv $$tmp/minio $(MINIO) && rmdir $$tmp; \
	fi

prometheus:
	@if [ ! -x $(PROMETHEUS) ]; then \
		echo "make: unpacking Debian's prometheus for the metric gate tests (not installed, no daemon)"; \
		tmp=$$(mktemp -d) && chmod 755 $$tmp && (cd $$tmp && apt-get download -qq prometheus 2>/dev/null || \
			{ apt-get update -qq && apt-get download -qq prometheus; }) && \
		dpkg-deb -x $$tmp/prometheus_*.deb $$tmp/root && mkdir -p $(dir $(PROMETHEUS)) && \
		dpkg-deb -f $$tmp/prometheus_*.deb Version >$(dir $(PROMETHEUS))VERSION && \
		mv $$tmp/root/usr/bin/prometheus $(PROMETHEUS) && rm -rf $$tmp; \
	fi

build:
	mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./cmd/deploy ./cmd/deploy-agent

lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...
	nix-instantiate --parse flake.nix >/dev/null
	scripts/flake-vendor-hash --check
	$(MAKE) --no-print-directory tidy-check

# go.mod and go.sum are what `go mod tidy` makes of them.
tidy-check:
	@$(GO) mod tidy -diff || { echo "go mod tidy would change go.mod/go.sum (above): run it" >&2; exit 1; }

test-unit:
	$(GO) test -count=1 -timeout 20m ./...

# The power-loss tests: a qemu host (TCG, about 20 s a boot) reset without a
# flush during copies and activations (vmtest/qemu.go, agentclient/powerloss_test.go).
# Long (about 15 minutes, and 2 more the first time to build its image), so
# not part of `make test`; see docs/vmtest.md.
test-powerloss: build
	$(call apt-packages,$(QEMU_PACKAGES))
	DEPLOY_QEMU=1 $(GO) test -p 1 -count=1 -timeout 60m -v -run '^(TestQEMUHost|TestPowerLoss)$$' ./vmtest ./agentclient

# A bounded fuzzing run of the NAR reader.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRestore$$' -fuzztime $(FUZZTIME) ./closure/nar

test: deps build lint test-unit fuzz

bench: deps build
	bench/nar.sh

# The main job on a built-in local default: two test hosts, the quickstart
# fleet deployed, changed, broken (rolls back), rolled back, cleaned up.
# bin/deploy-demo boots the hosts and drives bin/deploy (found beside it),
# which ships without the test-host harness.
demo: deps-demo build
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./cmd/deploy-demo
	bin/deploy-demo

clean:
	rm -rf bin
