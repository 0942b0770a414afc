#!/usr/bin/env bash
# Installs the S3-compatible servers the integration tests start on loopback
# (tests/common/servers.rs), into $USDCOP_DR_TOOLS (default
# /opt/usdcop-dr-tools):
#
#   moto-venv/     a Python virtualenv with moto's S3 server (moto_server)
#                  and boto3 (the smoke test's client), and prometheus_client
#                  (its text-format parser checks the metrics files of
#                  tests/cli_nightly.rs)
#   bin/garage     Garage, built from crates.io with `cargo install`
#
# and the PostgreSQL 15 server and client tools that tests/common/postgres.rs
# runs (initdb, pg_ctl, postgres, psql, pg_dump, pg_restore): Debian's
# postgresql-15 and postgresql-client-15, when missing. Each test starts its
# own server with initdb in a temporary directory, so the package's own
# cluster service is not started. When run as root, a `postgres` system user
# is made if missing (initdb refuses to run as root).
#
# Idempotent: each tool is (re)installed only when it is missing or not the
# pinned version. Needs Python 3 (with venv; Debian's python3-venv is
# installed when it is missing) and cargo. Prints what it did; exits non-zero
# with a message naming the step that failed.
set -euo pipefail

MOTO_VERSION=5.2.1
PROMETHEUS_CLIENT_VERSION=0.26.0
GARAGE_VERSION=2.5.0

TOOLS=${USDCOP_DR_TOOLS:-/opt/usdcop-dr-tools}
VENV=$TOOLS/moto-venv
GARAGE=$TOOLS/bin/garage

say() { printf 'install-test-deps: %s\n' "$*"; }
die() { printf 'install-test-deps: error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1; }

apt_updated=0
apt_install() {
  need apt-get || die "Debian packages needed ($*), but apt-get is not available: install them by hand"
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

mkdir -p "$TOOLS/bin" || die "cannot create $TOOLS (set USDCOP_DR_TOOLS to a writable directory)"

# ---- moto ---------------------------------------------------------------

moto_ok() {
  [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/moto_server" ] || return 1
  local v
  v=$("$VENV/bin/python" -c 'import moto, flask, flask_cors, boto3; print(moto.__version__)' 2>/dev/null) || return 1
  [ "$v" = "$MOTO_VERSION" ]
}

if moto_ok; then
  say "moto $MOTO_VERSION: already installed in $VENV"
else
  start=$(date +%s)
  if ! need python3; then
    apt_install python3 python3-venv
  fi
  say "moto $MOTO_VERSION: creating $VENV with $(command -v python3) ($(python3 --version 2>&1))"
  rm -rf "$VENV"
  # Debian's own python3 makes virtualenvs only with python3-venv (ensurepip).
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed ($(command -v python3))"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "moto[s3,server]==$MOTO_VERSION" \
    || die "pip install moto[s3,server]==$MOTO_VERSION failed (is PyPI reachable?)"
  moto_ok || die "moto $MOTO_VERSION was installed into $VENV but does not import (moto, flask, flask_cors, boto3)"
  say "moto $MOTO_VERSION: installed in $(( $(date +%s) - start ))s"
fi

# ---- prometheus_client (the metrics tests' parser) -----------------------

promclient_ok() {
  local v
  v=$("$VENV/bin/python" -c 'from importlib.metadata import version; import prometheus_client.parser; print(version("prometheus_client"))' 2>/dev/null) || return 1
  [ "$v" = "$PROMETHEUS_CLIENT_VERSION" ]
}

if promclient_ok; then
  say "prometheus_client $PROMETHEUS_CLIENT_VERSION: already installed in $VENV"
else
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "prometheus-client==$PROMETHEUS_CLIENT_VERSION" \
    || die "pip install prometheus-client==$PROMETHEUS_CLIENT_VERSION failed (is PyPI reachable?)"
  promclient_ok || die "prometheus_client $PROMETHEUS_CLIENT_VERSION was installed into $VENV but does not import"
  say "prometheus_client $PROMETHEUS_CLIENT_VERSION: installed in $VENV"
fi

# ---- Garage -------------------------------------------------------------

# `garage --version` prints e.g. "garage cargo:2.5.0 [features: ...]".
garage_version() { "$GARAGE" --version 2>/dev/null | head -n1; }
garage_ok() {
  [ -x "$GARAGE" ] || return 1
  [ "$(garage_version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)" = "$GARAGE_VERSION" ]
}

if garage_ok; then
  say "garage $GARAGE_VERSION: already installed at $GARAGE"
else
  need cargo || die "cargo is needed to build Garage: https://rustup.rs"
  if [ -e "$GARAGE" ]; then
    say "garage: $GARAGE is '$(garage_version)', not $GARAGE_VERSION: reinstalling"
  fi
  # Garage links sqlite and lmdb from bundled C sources: it needs a C compiler.
  if ! need cc; then
    apt_install gcc libc6-dev
  fi
  start=$(date +%s)
  say "garage $GARAGE_VERSION: cargo install (a release build from crates.io; about 15-20 minutes on 2 cores)"
  cargo install --locked --force --quiet --root "$TOOLS" garage --version "$GARAGE_VERSION" \
    || die "cargo install garage --version $GARAGE_VERSION failed (see cargo's output above)"
  garage_ok || die "garage was installed at $GARAGE but reports '$(garage_version)', not $GARAGE_VERSION"
  say "garage $GARAGE_VERSION: installed in $(( $(date +%s) - start ))s"
fi

# ---- PostgreSQL ----------------------------------------------------------

PG_MAJOR=15
PG_TOOLS="initdb pg_ctl postgres psql pg_dump pg_restore"

# The bin dir with every tool the harness runs, as tests/common/postgres.rs
# looks for it: $USDCOP_DR_PG_BIN, Debian's versioned dir, `pg_config --bindir`.
pg_bindir() {
  local d t ok
  for d in "${USDCOP_DR_PG_BIN:-}" "/usr/lib/postgresql/$PG_MAJOR/bin" \
      "$(pg_config --bindir 2>/dev/null || true)"; do
    [ -n "$d" ] || continue
    ok=1
    for t in $PG_TOOLS; do
      [ -x "$d/$t" ] || { ok=0; break; }
    done
    if [ "$ok" = 1 ]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}

if [ -n "${USDCOP_DR_PG_BIN:-}" ] && [ "$(pg_bindir)" != "$USDCOP_DR_PG_BIN" ]; then
  die "USDCOP_DR_PG_BIN=$USDCOP_DR_PG_BIN lacks one of: $PG_TOOLS"
fi
if pg_bin=$(pg_bindir); then
  say "postgresql: server tools found in $pg_bin"
else
  start=$(date +%s)
  # Debian starts a "main" cluster when the server package is installed
  # (where a service manager runs); the tests never use it. policy-rc.d
  # keeps invoke-rc.d from starting it, and is restored afterwards.
  # An existing policy-rc.d is left as it is.
  policy=/usr/sbin/policy-rc.d
  policy_added=0
  if [ ! -e "$policy" ] && [ -w /usr/sbin ]; then
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    policy_added=1
  fi
  apt_install "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR"
  if [ "$policy_added" = 1 ]; then
    rm -f "$policy"
    trap - EXIT
  fi
  pg_bin=$(pg_bindir) \
    || die "postgresql-$PG_MAJOR was installed, but no directory has all of: $PG_TOOLS"
  say "postgresql: installed postgresql-$PG_MAJOR in $(( $(date +%s) - start ))s ($pg_bin)"
fi

if [ "$(id -u)" = 0 ]; then
  if id -u postgres >/dev/null 2>&1; then
    :
  else
    say "postgresql: creating the postgres system user (initdb refuses root)"
    useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
      --shell /bin/bash postgres \
      || id -u postgres >/dev/null 2>&1 \
      || die "cannot create the postgres system user (useradd failed)"
  fi
  need runuser || die "runuser (util-linux) is needed to run initdb as postgres"
  # libpq's default socket directory on Debian, as postgresql-common's
  # tmpfiles.d makes it at boot (absent where no service manager ran): the
  # socket tests use it to check `--dsn dbname=…` with no host at all.
  if [ ! -d /var/run/postgresql ]; then
    say "postgresql: creating /var/run/postgresql (libpq's default socket directory)"
    install -d -o postgres -g postgres -m 2775 /var/run/postgresql \
      || die "cannot create /var/run/postgresql"
  fi
fi

say "tools ready in $TOOLS; PostgreSQL in $pg_bin"
