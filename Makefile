# nod — build, test and benchmark entry points. `make check` is what CI runs.

SHELL := /bin/bash
CARGO ?= cargo
FUZZ_SECONDS ?= 15

.PHONY: all build run check fmt-check clippy test fuzz-smoke bench clean

all: build

build:
	$(CARGO) build --workspace

# Build and run the agent in the foreground with defaults.
run:
	$(CARGO) run --release --bin nod -- agent

# Everything CI checks: formatting, lints, a short fuzz run, unit + end-to-end tests.
check: fmt-check clippy fuzz-smoke test

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The end-to-end tests exec the built binaries and pam_nod.so, so build them first.
# The last line totals every test binary's result.
test: build
	@set -o pipefail; $(CARGO) test --workspace 2>&1 | tee target/test.log
	@awk '/^test result:/ { p += $$4; f += $$6; i += $$8 } \
		END { printf "%d passed, %d failed, %d skipped\n", p, f, i; exit (p == 0 || f > 0) }' target/test.log

# Each fuzz target for FUZZ_SECONDS on a scratch copy of its committed corpus.
fuzz-smoke:
	@if ! $(CARGO) fuzz --version >/dev/null 2>&1; then \
		if [ "$$CI" = "true" ]; then echo "cargo-fuzz is missing (CI=true: not skipping)"; exit 1; fi; \
		echo "SKIPPED fuzz-smoke: cargo install cargo-fuzz"; exit 0; \
	fi; \
	set -e; cd fuzz; for t in $$($(CARGO) fuzz list); do \
		tmp=$$(mktemp -d); cp -r corpus/$$t/. $$tmp/; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t $$tmp -- -max_total_time=$(FUZZ_SECONDS) -max_len=8192 2>&1 | tail -n 2; \
		rm -rf $$tmp; \
	done

# Side-by-side benchmarks; prints ratios against the peers measured in the same run.
bench:
	$(CARGO) build --release --workspace
	NOD_BIN_DIR=$(CURDIR)/target/release $(CARGO) run --release -p nod-e2e --bin nod-bench
	NOD_BIN_DIR=$(CURDIR)/target/release $(CARGO) run --release -p nod-e2e --bin nod-secrets-bench

clean:
	$(CARGO) clean
