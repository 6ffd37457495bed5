# nod — build, test and benchmark entry points. `make check` is what CI runs.

SHELL := /bin/bash
CARGO ?= cargo
FUZZ_SECONDS ?= 15
# Cargo's target directory, as cargo itself resolves it: CARGO_TARGET_DIR, a cargo config's
# build.target-dir, else target/ here. Every path below into the build output starts from it.
TARGET_DIR := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
ifeq ($(TARGET_DIR),)
TARGET_DIR := $(CURDIR)/target
endif

.PHONY: all build run check fmt-check clippy test soak fuzz-smoke bench clean assets package-deb package-rpm package-test openssh-regress

all: build

build:
	$(CARGO) build --workspace --bins --examples

# Build and run the agent in the foreground with defaults.
run:
	$(CARGO) run --release --bin nod -- agent

# Everything CI checks: formatting, lints, a short fuzz run, unit + end-to-end tests, and the
# packages built from the debug build and installed on this (throwaway CI) machine.
check: fmt-check clippy fuzz-smoke package-test test soak openssh-regress

fmt-check:
	$(CARGO) fmt --all -- --check

# incompatible_msrv: no standard library item newer than Cargo.toml's rust-version.
clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings -W clippy::incompatible_msrv

# The end-to-end tests exec the built binaries and pam_nod.so, so build them first.
# The last line totals every test binary's result.
test: build
	@mkdir -p $(TARGET_DIR); set -o pipefail; $(CARGO) test --workspace 2>&1 | tee $(TARGET_DIR)/test.log
	@awk '/^test result:/ { p += $$4; f += $$6; i += $$8 } \
		END { printf "%d passed, %d failed, %d skipped\n", p, f, i; exit (p == 0 || f > 0) }' $(TARGET_DIR)/test.log

# OpenSSH's own agent regress tests (Debian's openssh-tests) against `nod ssh-agent`, each on
# its own as a non-root user with passwordless sudo, under a timeout; prints a pass/fail table.
# It adds that user for the run, so it runs only as root with CI=true or NOD_OPENSSH_REGRESS=1
# (under CI=true, not being able to run is a failure). See tests/openssh-regress/run.
openssh-regress: build
	tests/openssh-regress/run $(TARGET_DIR)/debug/nod

# Each fuzz target for FUZZ_SECONDS on a scratch copy of its committed corpus.
fuzz-smoke:
	@if ! $(CARGO) fuzz --version >/dev/null 2>&1; then \
		if [ "$$CI" = "true" ]; then echo "cargo-fuzz is missing (CI=true: not skipping)"; exit 1; fi; \
		echo "SKIPPED fuzz-smoke: cargo install cargo-fuzz"; exit 0; \
	fi; \
	set -eo pipefail; cd fuzz; targets=$$($(CARGO) fuzz list); \
	if [ -z "$$targets" ]; then echo "cargo fuzz list found no fuzz targets"; exit 1; fi; \
	for t in $$targets; do \
		tmp=$$(mktemp -d); cp -r corpus/$$t/. $$tmp/; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t $$tmp -- -max_total_time=$(FUZZ_SECONDS) -max_len=8192 2>&1 | tail -n 2; \
		rm -rf $$tmp; \
	done

# Floods, stalls and descriptor exhaustion against a real agent (debug build), with every
# legitimate request served and memory bounded; about a minute.
soak: build
	$(CARGO) build -p nod-e2e --bin nod-soak
	NOD_BIN_DIR=$(TARGET_DIR)/debug $(TARGET_DIR)/debug/nod-soak

# Side-by-side benchmarks; prints ratios against the peers measured in the same run.
# The soak suite runs here too, against the release build (make check runs it on the debug one).
bench:
	$(CARGO) build --release --workspace --bins --examples
	NOD_BIN_DIR=$(TARGET_DIR)/release $(CARGO) run --release -p nod-e2e --bin nod-bench
	NOD_BIN_DIR=$(TARGET_DIR)/release $(CARGO) run --release -p nod-e2e --bin nod-secrets-bench
	NOD_BIN_DIR=$(TARGET_DIR)/release $(TARGET_DIR)/release/nod-soak

# Packages. PROFILE=dev reuses the debug build (CI's package test); the default is release.
PROFILE ?= release
BIN_DIR := $(TARGET_DIR)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
# Next to the binaries, so that the packagers' `target/release/` prefix (which they map to the
# real target directory and profile) finds them: see [package.metadata.deb] in the crates.
ASSETS := $(BIN_DIR)/assets
# Debian's multiarch triplet for the PAM directory (/usr/lib/<triplet>/security).
MULTIARCH ?= $(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || echo $$(uname -m)-linux-gnu)
PKG_DIR := $(TARGET_DIR)/packages

# Into $(ASSETS): the man pages and bash/zsh/fish completions of both packages, the docs
# (gzipped for the .deb; the .rpm ships them as they are, as RPM distributions do), and the
# PAM module, stripped (also under its multiarch directory, for the .deb).
assets:
	$(CARGO) build --profile $(PROFILE) -p nod -p nod-tpm -p nod-helper -p pam-nod
	rm -rf $(ASSETS)
	$(BIN_DIR)/nod generate-man $(ASSETS)/man/nod
	$(BIN_DIR)/nod-helper generate-man $(ASSETS)/man/nod-helper
	gzip -9n $(ASSETS)/man/*/*.[158]
	for sh in bash zsh fish; do \
		$(BIN_DIR)/nod generate-completions $$sh $(ASSETS)/completions && \
		$(BIN_DIR)/nod-helper generate-completions $$sh $(ASSETS)/completions || exit 1; \
	done
	install -d $(ASSETS)/doc/protocol
	install -m 0644 README.md docs/*.md $(ASSETS)/doc/
	install -m 0644 docs/protocol/*.md $(ASSETS)/doc/protocol/
	gzip -9n $(ASSETS)/doc/*.md $(ASSETS)/doc/protocol/*.md
	install -m 0644 $(BIN_DIR)/libpam_nod.so $(ASSETS)/pam_nod.so
	strip --strip-unneeded $(ASSETS)/pam_nod.so
	install -D -m 0644 $(ASSETS)/pam_nod.so $(ASSETS)/pam/$(MULTIARCH)/security/pam_nod.so

package-deb: assets
	mkdir -p $(PKG_DIR)
	$(CARGO) deb --no-build --profile $(PROFILE) -p nod-helper -o $(PKG_DIR)/
	$(CARGO) deb --no-build --profile $(PROFILE) -p nod -o $(PKG_DIR)/
	packaging/add-md5sums $(PKG_DIR)/nod-helper_*.deb $(PKG_DIR)/nod_*.deb

# The debug build's packages are only inspected, never shipped: gzip packs their 200 MB of
# unstripped binaries in seconds, where the default zstd takes minutes.
RPM_COMPRESS := $(if $(filter dev,$(PROFILE)),--payload-compress gzip)
package-rpm: assets
	mkdir -p $(PKG_DIR)
	$(CARGO) generate-rpm --profile $(PROFILE) $(RPM_COMPRESS) -p crates/nod-helper -o $(PKG_DIR)/
	$(CARGO) generate-rpm --profile $(PROFILE) $(RPM_COMPRESS) -p crates/nod -o $(PKG_DIR)/

# Builds both packages from the debug build, runs lintian on the .debs (any error or warning
# fails), installs them here (dpkg -i), checks --help, the man pages and pam_nod.so by bare
# name under pamtester, removes them again, and checks the .rpm file lists. Changes the
# machine, so it runs only with CI=true or NOD_PACKAGE_TEST=1 (and as root).
package-test:
	@if [ "$$CI" != "true" ] && [ "$$NOD_PACKAGE_TEST" != "1" ]; then \
		echo "SKIPPED package-test: it installs packages; set NOD_PACKAGE_TEST=1 (CI=true does)"; exit 0; \
	fi; \
	rm -rf $(PKG_DIR) && \
	$(MAKE) --no-print-directory package-deb package-rpm PROFILE=dev && \
	packaging/test-packages $(PKG_DIR) $(MULTIARCH)

clean:
	$(CARGO) clean
