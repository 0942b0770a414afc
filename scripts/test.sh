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
threads=${TEST_THREADS:-4}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# cargo-nextest runs every test in its own process with a deadline
# (.config/nextest.toml): a hung test fails with its name and output
# instead of eating CI's whole budget. Installed when missing; if that is
# impossible (offline), plain `cargo test` still runs the suite, without
# per-test deadlines (run_cmd's per-command deadline still holds).
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found: cargo install cargo-nextest --locked" >&2
  cargo install cargo-nextest --locked >&2 || echo "warning: cannot install cargo-nextest; running cargo test without per-test deadlines" >&2
fi

status=0
# Doc-tests first (nextest does not run them; the crate has none today, but
# one added later must not be skipped silently), so the test run's summary
# stays the last word.
cargo test --locked --doc 2>&1 | tee "$log" || status=$?
docs_passed=$(awk '/^test result:/ { p += $4 } END { print p + 0 }' "$log")
docs_failed=$(awk '/^test result:/ { f += $6 } END { print f + 0 }' "$log")

if cargo nextest --version >/dev/null 2>&1; then
  # Unit tests (--lib), the binary's tests and every integration test.
  cargo nextest run --locked --no-fail-fast --lib --bins --tests \
    --test-threads="$threads" 2>&1 | tee "$log" || status=$?
  # nextest's own closing line, e.g.
  #   Summary [ 301.2s] 84 tests run: 84 passed (2 slow), 1 skipped
  # (CI reads it). No such line means nothing ran (a build failure): never
  # report that as success.
  line=$(grep -E '^ *Summary \[' "$log" | tail -n 1 || true)
  if [ -z "$line" ]; then
    echo "summary: no test ran (see the errors above)"
    exit $((status == 0 ? 1 : status))
  fi
  # (awk, not grep: a count that is absent must not stop the script under
  # `set -e -o pipefail`)
  count() { awk -v re="$1" '{ for (i = 2; i <= NF; i++) if ($i ~ re) n += $(i - 1) } END { print n + 0 }' <<<"$line"; }
  passed=$(count '^passed')
  failed=$(( $(count '^failed') + $(count '^timed') ))
  skipped=$(count '^skipped')
  printf 'summary: %d passed, %d failed, %d skipped (%d doc-tests passed, %d failed)\n' \
    "${passed:-0}" "$failed" "${skipped:-0}" "$docs_passed" "$docs_failed"
else
  cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads="$threads" 2>&1 | tee "$log" || status=$?
  awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
fi
exit "$status"
