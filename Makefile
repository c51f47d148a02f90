# vvfs — see README.md. `make run` and `make test` set up what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# chromium: the web view's browser tests (driven by playwright-core, which downloads no browser).
# iproute2: ip netns, veth and tc for the remote-storage link-cut test and bench.
DEBIAN_PACKAGES := libfuse3-dev pkg-config fuse attr e2fsprogs util-linux chromium iproute2 etcd-server
BENCH_PACKAGES := fio qemu-system-common qemu-utils

.PHONY: bench-ha help setup deps build run test lint typecheck bench clean soak

help:
	@echo "make run    - set up, then run the daemon in the foreground (state ./.vvfs, volumes in ./mnt, web view at http://$(VVFS_HTTP)/)"
	@echo "make test   - set up, then run the whole test suite"
	@echo "make soak   - set up, then the long runs of the kill tests (replication: 500 kill points)"
	@echo "make bench  - set up, then run the benchmarks (installs fio and qemu-system-common; then remote storage: bench/remote.ts; then replication: bench/replication.ts)"

# Debian packages, only those missing (apt-get update first, as a fresh machine needs).
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

node_modules/.installed: package.json package-lock.json patches/*.patch scripts/build-native.mjs native/powercut/powercut.c native/peercred/peercred.c native/peercred/binding.gyp native/flock/flock.c native/flock/binding.gyp
	npm ci --no-audit --no-fund
	@touch $@

dist/.built: node_modules/.installed tsconfig.json tsconfig.build.json $(shell find lib bench -name '*.ts' 2>/dev/null)
	npx tsc -p tsconfig.build.json
	@touch $@

build: dist/.built

setup: deps build

# The web view of `make run` (loopback only; VVFS_HTTP=127.0.0.1:PORT to move it).
VVFS_HTTP ?= 127.0.0.1:8620

run: setup
	@echo "vvfs web view: http://$(VVFS_HTTP)/"
	node bin/vvfs daemon --state ./.vvfs --mount ./mnt --demo --http $(VVFS_HTTP)

typecheck: node_modules/.installed
	npx tsc -p tsconfig.json

lint: node_modules/.installed
	npx eslint .

test: setup typecheck lint
	npx vitest run

# issue 13: the replication prefix-consistency test with 500 kill points instead of make test's 30.
soak: setup
	VVFS_SOAK=1 VVFS_REPL_KILLS=500 VVFS_REPL_CUTS=100 npx vitest run test/replication/prefix-kills.test.ts
	# issue 13.4: kills of the primary while it migrates a1 ⇄ a2 (handoffs), 60 rounds instead of make test's 5.
	VVFS_HANDOFF_KILLS=60 npx vitest run test/replication/handoff-kills.test.ts

bench: setup
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	node dist/bench/run.js
	node dist/bench/remote.js
	node dist/bench/replication.js

# Issue 15: relays in a cluster — failover time, etcd vs file catalog throughput, graceful volume move gap (BENCH_HA_RUNS, BENCH_HA_TTL_MS, BENCH_SECONDS, BENCH_HA_MOVES).
bench-ha: setup
	node dist/bench/ha.js

clean:
	rm -rf dist node_modules
