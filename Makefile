# The two entry points (see README.md): `make demo` and `make test`. Each does
# all of its own set-up on a fresh Debian machine: packages, Go tools, build.
SHELL := /bin/bash
export GOTOOLCHAIN := local
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)

GO          ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@2026.2.2
# Debian packages the tests use: Nix for golden vectors, the test machines'
# tools (debootstrap, systemd-nspawn, iproute2, nftables), OpenSSH.
APT_PACKAGES := nix-bin debootstrap debian-archive-keyring systemd-container openssh-server openssh-client sudo \
	iproute2 nftables util-linux procps ca-certificates bc
FUZZTIME    ?= 30s

.PHONY: all build deps lint test test-unit fuzz bench demo clean

all: build

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "make: need root to install$$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(GO) mod download
	@command -v staticcheck >/dev/null || $(GO) install $(STATICCHECK)

build:
	mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./cmd/deploy ./cmd/deploy-agent

lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...
	nix-instantiate --parse flake.nix >/dev/null
	scripts/flake-vendor-hash --check

test-unit:
	$(GO) test -count=1 -timeout 20m ./...

# A bounded fuzzing run of the NAR reader.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRestore$$' -fuzztime $(FUZZTIME) ./closure/nar

test: deps build lint test-unit fuzz

bench: deps build
	bench/nar.sh

# The main job on a built-in local default: two test hosts, the quickstart
# fleet deployed, changed, broken (rolls back), rolled back, cleaned up.
demo: deps build
	bin/deploy demo

clean:
	rm -rf bin
