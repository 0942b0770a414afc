#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# then runs them. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
  echo "error: cargo (Rust toolchain) is required: https://rustup.rs" >&2
  exit 2
fi
# Nothing else to install yet: the repository core's tests use a local-
# directory backend in temporary directories. Later sources (PostgreSQL,
# S3-compatible servers) add their installs here.

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export PROPTEST_CASES=${PROPTEST_CASES:-64}
cargo build --locked --tests --bins
cargo test --locked --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
