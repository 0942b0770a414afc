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
# The S3-compatible servers that the integration tests start on loopback
# (moto and Garage, see tests/common/servers.rs): installed into
# $USDCOP_DR_TOOLS, and skipped when already there at the pinned versions.
# On a fresh machine this builds Garage from crates.io (about 15-20 min).
# Also the PostgreSQL 15 server and client tools (Debian's postgresql-15 and
# postgresql-client-15, installed when missing; see tests/common/postgres.rs),
# and, when root, a `postgres` system user to run initdb as.
export USDCOP_DR_TOOLS=${USDCOP_DR_TOOLS:-/opt/usdcop-dr-tools}
bash scripts/install-test-deps.sh

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export PROPTEST_CASES=${PROPTEST_CASES:-64}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo build --locked --tests --bins
# Doc-tests are skipped (the crate has none): their empty "0 passed" line
# would otherwise be the run's last word.
status=0
cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
