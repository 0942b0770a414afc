#!/usr/bin/env bash
# Benchmark: physical base backup and its restore, usdcop-dr vs pgBackRest, in the same run,
# and the cost of archiving one WAL segment.
#
# Usage: scripts/bench-pitr.sh [SCALE]      (pgbench scale, default 100: about 1.5 GB)
#
# A throwaway PostgreSQL 15 cluster (loopback only, fsync off) archives every WAL segment to
# both tools (archive_command = usdcop-dr wal-push %p && pgbackrest archive-push %p) and is
# filled with `pgbench -i -s SCALE`. Then, each command under /usr/bin/time (wall, peak RSS):
#
#   base1     usdcop-dr backup postgres-base        | pgbackrest backup --type=full
#   base2     the same again, nothing changed (usdcop-dr deduplicates every relation file;
#             pgBackRest takes a second full backup)
#   restore   usdcop-dr restore postgres --point-in-time latest --pgdata D (files written,
#             recovery settings; no replay) | pgbackrest restore --pg1-path D
#   wal-push  per-segment wall time of `usdcop-dr wal-push` (median of 20 fresh segments)
#
# Both tools compress with zstd level 3 and encrypt (pgBackRest: aes-256-cbc), use two
# processes/cores, request a fast checkpoint and keep their repository on the same disk.
#
# Environment:
#   BENCH_DIR          parent of the work directory (default /tmp/usdcop-bench-pitr)
#   BENCH_SKIP_BUILD=1 do not run `cargo build --release` first
#   USDCOP_DR_BIN      usdcop-dr binary (default <repo>/target/release/usdcop-dr)
#
# A benchmark, not a test: a Markdown report on stdout, progress on stderr; non-zero exit if
# a step failed. See docs/BENCHMARKS.md.
set -euo pipefail

log() { printf '[bench-pitr] %s\n' "$*" >&2; }
die() { printf '[bench-pitr] error: %s\n' "$*" >&2; exit 2; }

SCALE="${1:-100}"
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || die "SCALE must be a positive integer"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/tmp/usdcop-bench-pitr}"
USDCOP_BIN="${USDCOP_DR_BIN:-$REPO_ROOT/target/release/usdcop-dr}"
PG_BIN="${USDCOP_DR_PG_BIN:-/usr/lib/postgresql/15/bin}"

[[ $EUID -eq 0 ]] || die "run as root (the cluster runs as the postgres system user)"
for p in time pgbackrest; do
    command -v "$p" >/dev/null || apt-get install -y -q "$p" >&2 || die "cannot install $p"
done
[[ -x "$PG_BIN/initdb" ]] || die "$PG_BIN/initdb missing (PostgreSQL 15)"
id -u postgres >/dev/null 2>&1 || useradd --system --user-group --no-create-home postgres
if [[ -z "${USDCOP_DR_BIN:-}" && "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    log "building usdcop-dr (cargo build --release)"
    (cd "$REPO_ROOT" && cargo build --release --bin usdcop-dr >&2) || die "build failed"
fi
[[ -x "$USDCOP_BIN" ]] || die "no usdcop-dr at $USDCOP_BIN"

mkdir -p "$BENCH_DIR"
WORK="$(mktemp -d "$BENCH_DIR/run.XXXXXX")"
chmod 0755 "$WORK"
BIN="$WORK/usdcop-dr"
cp "$USDCOP_BIN" "$BIN" # readable and runnable by postgres
AS=(runuser -u postgres --)
PGDATA="$WORK/data"
SOCK="$WORK/sock"
PORT=$((20000 + RANDOM % 20000))
cleanup() {
    [[ -f "$PGDATA/postmaster.pid" ]] && "${AS[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
    [[ "${BENCH_KEEP:-0}" == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$SOCK" "$WORK/pgbr" "$WORK/state" "$WORK/restore"
echo "bench-passphrase-not-secret" >"$WORK/pass"
chmod 0600 "$WORK/pass"
cat >"$WORK/usdcop-dr.toml" <<EOF
[repository]
url = "$WORK/repo"
password_file = "$WORK/pass"

[[source]]
name = "bench"
kind = "postgres"
dsn = "host=$SOCK port=$PORT user=postgres dbname=postgres"

[wal]
source = "bench"
EOF
cat >"$WORK/pgbackrest.conf" <<EOF
[global]
repo1-path=$WORK/pgbr
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-passphrase-not-secret
compress-type=zst
compress-level=3
process-max=2
start-fast=y
archive-check=y
log-level-console=warn
log-level-file=off
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool

[bench]
pg1-path=$PGDATA
pg1-socket-path=$SOCK
pg1-port=$PORT
EOF
chown -R postgres:postgres "$WORK"
export USDCOP_DR_STATE_DIR="$WORK/state"
DR=("${AS[@]}" env USDCOP_DR_STATE_DIR="$WORK/state" "$BIN" --config "$WORK/usdcop-dr.toml")
BR=("${AS[@]}" pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)

log "initdb, start (port $PORT)"
"${AS[@]}" "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$SOCK'
port = $PORT
fsync = off
wal_level = replica
archive_mode = on
archive_command = 'USDCOP_DR_STATE_DIR=$WORK/state $BIN --config $WORK/usdcop-dr.toml wal-push %p && pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench archive-push %p'
max_wal_size = 4GB
EOF
"${AS[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$WORK/pg.log" -w start >/dev/null
"${DR[@]}" init >/dev/null
"${BR[@]}" stanza-create >/dev/null
log "pgbench -i -s $SCALE"
"${AS[@]}" "$PG_BIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
"${AS[@]}" "$PG_BIN/psql" -h "$SOCK" -p "$PORT" -U postgres -qAtc "CHECKPOINT; SELECT pg_switch_wal()" postgres >/dev/null
SIZE=$(du -sb --exclude=pg_wal "$PGDATA" | cut -f1)
log "data directory: $((SIZE >> 20)) MiB (without pg_wal)"

# timed NAME CMD...: wall seconds and peak RSS (KiB) into $WORK/NAME.t
timed() {
    local name="$1"; shift
    /usr/bin/time -f '%e %M' -o "$WORK/$name.t" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" \
        || { cat "$WORK/$name.err" >&2; die "$name failed"; }
}
wall() { cut -d' ' -f1 "$WORK/$1.t"; }
rss() { echo $(( $(cut -d' ' -f2 "$WORK/$1.t") / 1024 )); }
mbs() { python3 -c "print(f'{$SIZE / 1e6 / $(wall "$1"):.0f}')"; }

log "base backup 1"
timed dr1 "${DR[@]}" --quiet backup postgres-base --source bench
timed br1 "${BR[@]}" backup --type=full
log "base backup 2 (nothing changed)"
timed dr2 "${DR[@]}" --quiet backup postgres-base --source bench
timed br2 "${BR[@]}" backup --type=full
log "restores"
timed drr "${DR[@]}" --quiet restore postgres --point-in-time latest --pgdata "$WORK/restore/dr"
timed brr "${BR[@]}" restore --pg1-path="$WORK/restore/br"
RESTORED=$(du -sb "$WORK/restore/dr" | cut -f1)
STORED_DR=$(du -sb "$WORK/repo/data" | cut -f1)
STORED_BR=$(du -sb "$WORK/pgbr/backup" | cut -f1)

log "wal-push per segment"
SEG=$(ls "$PGDATA/pg_wal" | grep -E '^[0-9A-F]{24}$' | head -n 1)
mkdir -p "$WORK/segs" && chown postgres "$WORK/segs"
times=()
for i in $(seq 1 20); do
    name=$(printf '00000001000000FE%08X' "$i")
    cp "$PGDATA/pg_wal/$SEG" "$WORK/segs/$name" && chown postgres "$WORK/segs/$name"
    s=$(date +%s.%N)
    "${DR[@]}" wal-push "$WORK/segs/$name" >/dev/null 2>&1 || die "wal-push failed"
    e=$(date +%s.%N)
    times+=("$(python3 -c "print($e - $s)")")
done
PUSH=$(printf '%s\n' "${times[@]}" | sort -n | sed -n '10p')

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
cat <<EOF
## Base backup and restore: usdcop-dr vs pgBackRest $(pgbackrest version | cut -d' ' -f2) (same run)

$(nproc) cores; pgbench scale $SCALE: data directory $((SIZE >> 20)) MiB (pg_wal excluded); $("$PG_BIN/postgres" --version).

| step | usdcop-dr | pgBackRest | usdcop-dr speed / pgBackRest |
|---|---|---|---|
| base backup (first) | $(wall dr1) s, $(mbs dr1) MB/s, $(rss dr1) MiB RSS | $(wall br1) s, $(mbs br1) MB/s, $(rss br1) MiB RSS | $(ratio "$(wall br1)" "$(wall dr1)")x |
| base backup (unchanged) | $(wall dr2) s, $(mbs dr2) MB/s, $(rss dr2) MiB RSS | $(wall br2) s, $(mbs br2) MB/s, $(rss br2) MiB RSS | $(ratio "$(wall br2)" "$(wall dr2)")x |
| restore (files, no replay) | $(wall drr) s, $(mbs drr) MB/s, $(rss drr) MiB RSS | $(wall brr) s, $(mbs brr) MB/s, $(rss brr) MiB RSS | $(ratio "$(wall brr)" "$(wall drr)")x |
| stored after both backups | $((STORED_DR >> 20)) MiB | $((STORED_BR >> 20)) MiB | |

wal-push of one 16 MiB segment (process start to durable, local repository, key cache): median of 20: $(python3 -c "print(f'{$PUSH:.3f}')") s.
Restored data directory: $((RESTORED >> 20)) MiB.
EOF
