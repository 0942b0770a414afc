#!/usr/bin/env bash
# Benchmark: PostgreSQL backups and restores, usdcop-dr vs restic 0.14, in the same run.
#
# Usage: scripts/bench-postgres.sh [BARS]     (default 900000 five-minute bars)
#
# A throwaway PostgreSQL 15 server (initdb in a temporary directory, loopback only, fsync
# off) is loaded with a USDCOP-like database (tests/data/usdcop_like.sql, the data set
# of tests/common/postgres.rs): BARS bars in usdcop_m5_ohlcv, 2 x BARS rows in features,
# 1,000 pipeline runs, 8 models with incompressible bytea artifacts. Then, with each
# command under /usr/bin/time (wall, CPU, peak RSS):
#
#   dump      pg_dump -Fc -Z0 > /dev/null                       (what the dump itself costs)
#   backup1   usdcop-dr backup postgres | pg_dump -Fc -Z0 | restic backup --stdin
#   backup2   the same, database unchanged; then usdcop-dr once more with
#             --checksum-max-rows 0 (counts only), to separate the checksum pass's cost
#   backup3   the same, after UPDATE of the latest 0.5 % of the bars + INSERT of 288 bars
#   backup4   the same, after UPDATE of 1 % of the bars and of the features chosen at random;
#             and what delta compression against the parent chunk would store for that
#             change (examples/delta_estimate.rs on the dumps before and after it, untimed)
#   restore   pg_restore from a file (baseline) | usdcop-dr restore postgres --create
#             (its verification pass included) | restic dump latest | pg_restore
#             | usdcop-dr restore postgres --jobs 2
#
# Environment:
#   BENCH_DIR            parent of the work directory (default /tmp/usdcop-bench-pg)
#   BENCH_RESTIC_GZ=0    skip the extra restic repository fed pg_dump's default (compressed)
#                        -Fc, which shows what compression inside the dump costs dedup
#   BENCH_JOBS2=0        skip `usdcop-dr restore postgres --jobs 2` and its baseline,
#                        `pg_restore -j 2` of a local file
#   BENCH_DELTA=0        skip the delta-compression estimate of backup4 (two dumps to files)
#   BENCH_LIVE_PAIRS=N   first, N alternating pairs of `pg_dump -Fc -Z0 > /dev/null` and a first
#                        `usdcop-dr backup postgres` (into a fresh repository each time): each
#                        pair's ratio and the median, the steadier figure on a shared machine
#   BENCH_LIVE_ONLY=1    stop after those pairs (with BENCH_LIVE_PAIRS; no restic, no restores)
#   BENCH_SKIP_BUILD=1   do not run `cargo build --release` first
#   BENCH_KEEP=1         keep the work directory (repositories, logs); the server is stopped
#   BENCH_WAIT_IDLE=N    before each timed command wait up to N seconds (default 0) for the
#                        1-minute load average to fall below BENCH_IDLE_LOAD (default 1.0)
#   USDCOP_DR_BIN        usdcop-dr binary (default <repo>/target/release/usdcop-dr)
#   RESTIC_BIN           restic binary (default: restic on PATH)
#   BORG_BIN             borg binary (default: borg on PATH; its backups run when it is there)
#   USDCOP_DR_PG_BIN     PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin, else
#                        `pg_config --bindir`)
#
# This is a benchmark, not a test: it prints a Markdown report to stdout (progress goes to
# stderr) and exits non-zero if any step failed or a restored database differs from the
# source. See docs/BENCHMARKS.md.
set -euo pipefail

log() { printf '[bench-pg] %s\n' "$*" >&2; }
die() { printf '[bench-pg] error: %s\n' "$*" >&2; exit 2; }

# 900,000 keeps usdcop_m5_ohlcv (BARS, then BARS + 288 rows) under usdcop-dr's default
# --checksum-max-rows (1,000,000) in every backup, so each takes the same picture.
BARS="${1:-900000}"
[[ "$BARS" =~ ^[1-9][0-9]*$ ]] || die "BARS must be a positive integer, got '$BARS'"
((BARS >= 1000)) || die "BARS too small (minimum 1000)"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/tmp/usdcop-bench-pg}"
USDCOP_BIN="${USDCOP_DR_BIN:-$REPO_ROOT/target/release/usdcop-dr}"
RESTIC_BIN="${RESTIC_BIN:-restic}"
BORG_BIN="${BORG_BIN:-borg}"
SOURCE_NAME="pg-usdcop"
DB="usdcop_trading"
STDIN_NAME="$DB.dump"
PASSPHRASE="bench-passphrase-not-secret"
RESTIC_GZ="${BENCH_RESTIC_GZ:-1}"
JOBS2="${BENCH_JOBS2:-1}"

# ---------------------------------------------------------------- prerequisites
need_pkg() { # need_pkg COMMAND-PATH DEBIAN-PACKAGE
    if [[ "$1" == /* ]]; then [[ -x "$1" ]] && return 0; else command -v "$1" >/dev/null && return 0; fi
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        log "$1 missing: installing Debian package $2"
        { apt-get install -y -q "$2" || { apt-get update -q && apt-get install -y -q "$2"; }; } >&2 \
            || die "could not install $2"
    else
        die "$1 missing: install the Debian package '$2' (apt-get install -y $2)"
    fi
}
need_pkg /usr/bin/time time
need_pkg python3 python3
if [[ "$RESTIC_BIN" == restic ]]; then need_pkg restic restic; fi

PG_BIN="${USDCOP_DR_PG_BIN:-}"
if [[ -z "$PG_BIN" ]]; then
    if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
        PG_BIN=/usr/lib/postgresql/15/bin
    elif command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        PG_BIN="$(pg_config --bindir)"
    else
        need_pkg /usr/lib/postgresql/15/bin/initdb postgresql-15
        PG_BIN=/usr/lib/postgresql/15/bin
    fi
fi
for t in initdb pg_ctl postgres psql pg_dump pg_restore; do
    [[ -x "$PG_BIN/$t" ]] || die "$PG_BIN/$t missing (set USDCOP_DR_PG_BIN to the PostgreSQL 15 binaries)"
done
PG_VERSION="$("$PG_BIN/postgres" --version)"

# initdb refuses root: as root, the server runs as the `postgres` system user.
AS_SERVER=()
if [[ $EUID -eq 0 ]]; then
    if ! id -u postgres >/dev/null 2>&1; then
        log "creating the postgres system user"
        useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
            --shell /bin/bash postgres || die "useradd postgres failed"
    fi
    AS_SERVER=(runuser -u postgres --)
fi

if [[ -z "${USDCOP_DR_BIN:-}" && "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    log "building usdcop-dr (cargo build --release)"
    (cd "$REPO_ROOT" && cargo build --release >&2) || die "cargo build --release failed"
    if [[ "${BENCH_DELTA:-1}" == 1 ]]; then
        (cd "$REPO_ROOT" && cargo build --release --example delta_estimate >&2) \
            || die "cargo build --release --example delta_estimate failed"
    fi
fi
[[ -x "$USDCOP_BIN" ]] || die "usdcop-dr binary not found at $USDCOP_BIN"
RESTIC_VERSION="$("$RESTIC_BIN" version)"
[[ "$RESTIC_VERSION" == "restic 0.14."* ]] || log "warning: expected restic 0.14.x, found: $RESTIC_VERSION"

# Rough disk need: database + dump ~ 1.5 KB per bar, times (source, 3-4 restored copies,
# dump file, staged dump, repositories).
mkdir -p "$BENCH_DIR"
AVAIL_BYTES=$(($(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }') * 1024))
NEED_BYTES=$((BARS * 8000 + (1 << 30)))
# Only the live pairs: the database and one repository at a time.
if [[ "${BENCH_LIVE_ONLY:-0}" == 1 ]]; then NEED_BYTES=$((BARS * 1000 + (1 << 30))); fi
((AVAIL_BYTES >= NEED_BYTES)) || die "$BENCH_DIR has $((AVAIL_BYTES >> 20)) MiB free; $BARS bars need about $((NEED_BYTES >> 20)) MiB"

WORK="$(mktemp -d "$BENCH_DIR/run.XXXXXX")"
chmod 0711 "$WORK" # the server user must reach its directory below
PGDIR="$WORK/pg"
PGDATA_DIR="$PGDIR/data"
cleanup() {
    if [[ -f "$PGDATA_DIR/postmaster.pid" ]]; then
        log "stopping the PostgreSQL server"
        "${AS_SERVER[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w -t 30 stop >/dev/null 2>&1 || {
            local pid
            pid="$(head -n 1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true)"
            if [[ "$pid" =~ ^[0-9]+$ ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
        }
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
        rm -rf "$PGDIR"
        log "work directory kept (server data removed): $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log "work directory: $WORK"

# Keep the caller's environment from redirecting any tool elsewhere.
unset USDCOP_DR_REPO USDCOP_DR_PASSWORD_FILE USDCOP_DR_PG_DSN USDCOP_DR_PG_TARGET_DSN \
    RESTIC_REPOSITORY RESTIC_REPOSITORY_FILE RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND \
    RESTIC_COMPRESSION RESTIC_PACK_SIZE BORG_REPO BORG_PASSCOMMAND BORG_PASSPHRASE_FD \
    PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE \
    PGOPTIONS PGSSLMODE PGREQUIRESSL PGGSSENCMODE PGTARGETSESSIONATTRS PGCLIENTENCODING \
    PGAPPNAME PGDATESTYLE PGDATA PGSYSCONFDIR
export USDCOP_DR_PASSWORD="$PASSPHRASE" RESTIC_PASSWORD="$PASSPHRASE" BORG_PASSPHRASE="$PASSPHRASE"
export RESTIC_CACHE_DIR="$WORK/restic-cache"
export BORG_BASE_DIR="$WORK/borg-base" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export USDCOP_DR_PG_BIN="$PG_BIN"
export PGTZ=UTC PGCONNECT_TIMEOUT=10 PGPASSFILE="$WORK/no-pgpass"

# ---------------------------------------------------------------- the server
PG_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
mkdir -p "$PGDIR"
(umask 077 && printf '%s\n' "$PG_PASSWORD" >"$PGDIR/pwfile")
if ((${#AS_SERVER[@]})); then chown -R postgres:postgres "$PGDIR"; fi
log "initdb ($PG_VERSION)"
"${AS_SERVER[@]}" "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=scram-sha-256 \
    --pwfile="$PGDIR/pwfile" -E UTF8 --locale=C --no-sync --no-instructions >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
rm -f "$PGDIR/pwfile"
# The password reaches clients only through the environment, never argv.
export PGPASSWORD="$PG_PASSWORD"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
started=0
for attempt in 1 2 3 4 5; do
    PORT="$(free_port)"
    # autovacuum off: the benchmark vacuums itself, so no background work lands in a timing.
    if "${AS_SERVER[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDIR/postgres.log" -w -t 60 \
        -o "-p $PORT -k '$PGDIR' -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
            -c synchronous_commit=off -c shared_buffers=128MB -c maintenance_work_mem=256MB \
            -c max_wal_size=4GB -c autovacuum=off -c TimeZone=UTC -c log_timezone=UTC" \
        start >"$WORK/pg_ctl.log" 2>&1; then
        started=1
        break
    fi
    log "server did not start on port $PORT (attempt $attempt)"
    tail -n 5 "$PGDIR/postgres.log" >&2 || true
done
((started)) || die "PostgreSQL did not start"
PM_PID="$(head -n 1 "$PGDATA_DIR/postmaster.pid")"
log "PostgreSQL listening on 127.0.0.1:$PORT (postmaster pid $PM_PID)"

dsn() { echo "postgresql://postgres@127.0.0.1:$PORT/$1"; }
psql_db() { # psql_db DB [psql args...]: SQL on stdin or via -c
    local db=$1
    shift
    "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -d "$(dsn "$db")" "$@"
}

psql_db postgres -c "CREATE DATABASE $DB" || die "CREATE DATABASE $DB failed"
log "loading $BARS bars ($((3 * BARS + 1008)) rows)"
load_start=$SECONDS
# The test data set (tests/data/usdcop_like.sql, which tests/common/postgres.rs loads too),
# with BARS bars and the harness's other parameters.
sed -e "s/{bars}/$BARS/g" -e "s/{pipeline_rows}/1000/g" -e "s/{per_bar}/2/g" \
    -e "s/{sizes}/102400,262144,1048573,524288,131071,786432,0,-1/g" \
    "$REPO_ROOT/tests/data/usdcop_like.sql" | psql_db "$DB" -f - >&2 \
    || die "loading the database failed"
psql_db "$DB" -c "VACUUM (FREEZE, ANALYZE)" >&2 || die "VACUUM failed"
DB_SIZE="$(psql_db "$DB" -c "SELECT pg_database_size(current_database())")"
log "loaded in $((SECONDS - load_start)) s; database size $((DB_SIZE >> 20)) MiB"

# ---------------------------------------------------------------- measurement helpers
declare -A SECS RSS CPU SCPU LOAD NOTE BYTES REPO_BYTES NEW_BYTES
FAILED=0
CLK_TCK="$(getconf CLK_TCK)"

# CPU ticks of the server: the postmaster and every backend it has reaped.
server_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$PM_PID/stat"; }
sleep 1 # the loading session's backend has exited
BG_PROCS="$(pgrep -c -P "$PM_PID" || true)"
wait_backends() { # until the backends of the last command have exited and been reaped
    local _
    for _ in $(seq 1 100); do
        (($(pgrep -c -P "$PM_PID" || true) <= BG_PROCS)) && return 0
        sleep 0.1
    done
}

wait_idle() {
    local limit=$((SECONDS + ${BENCH_WAIT_IDLE:-0})) load
    while ((SECONDS < limit)); do
        load="$(cut -d' ' -f1 /proc/loadavg)"
        awk -v l="$load" -v t="${BENCH_IDLE_LOAD:-1.0}" 'BEGIN { exit !(l < t) }' && return 0
        sleep 5
    done
}

# run_timed KEY OUT CMD...: runs CMD under /usr/bin/time, stdout to OUT; sets SECS, RSS, CPU
# (user+sys of CMD and its children: pg_dump/pg_restore included) and SCPU (server CPU).
run_timed() {
    local key=$1 out=$2 rc=0 e m u s t0 t1
    shift 2
    local tf="$WORK/time.$key" errf="$WORK/stderr.$key"
    sync
    wait_idle
    wait_backends
    LOAD[$key]="$(cut -d' ' -f1 /proc/loadavg)"
    t0="$(server_ticks)"
    /usr/bin/time -f '%e %M %U %S' -o "$tf" "$@" </dev/null >"$out" 2>"$errf" || rc=$?
    wait_backends
    t1="$(server_ticks)"
    read -r e m u s < <(tail -n 1 "$tf")
    SECS[$key]=$e
    RSS[$key]=$m
    CPU[$key]="$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')"
    SCPU[$key]="$(awk -v a="$t0" -v b="$t1" -v h="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / h }')"
    if ((rc != 0)); then
        log "FAILED ($key, exit $rc): $*"
        sed 's/^/    /' "$errf" | tail -n 20 >&2
        NOTE[$key]=FAIL
        FAILED=1
    else
        log "$key: ${SECS[$key]} s, CPU ${CPU[$key]} s (+ server ${SCPU[$key]} s), peak RSS $((RSS[$key] / 1024)) MiB"
    fi
    return "$rc"
}

json_field() { # json_field FILE FIELD: FIELD of the last JSON object (line) in FILE that has it
    python3 - "$1" "$2" <<'PYEOF'
import json, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
try:
    objs = [json.loads(text)]
except ValueError:
    objs = []
    for line in text.splitlines():
        try:
            objs.append(json.loads(line))
        except ValueError:
            pass
val = None
for obj in objs:
    if isinstance(obj, dict):
        cur = obj
        for part in sys.argv[2].split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is not None:
            val = cur
if val is None:
    sys.exit(1)
print(val)
PYEOF
}
repo_bytes() { du -sb "$1" | cut -f1; }

REPO_DR="$WORK/repo-usdcop-dr"
REPO_RESTIC="$WORK/repo-restic"
REPO_RESTIC_GZ="$WORK/repo-restic-gz"
REPO_BORG="$WORK/repo-borg"
TOOLS=(usdcop-dr restic)
if [[ "$RESTIC_GZ" == 1 ]]; then TOOLS+=(restic-gz); fi
# borg 1.2 (repokey, zstd,3, its default chunker) for the backups' bytes, when installed.
if command -v "$BORG_BIN" >/dev/null; then TOOLS+=(borg); fi
repo_of() { case $1 in usdcop-dr) echo "$REPO_DR" ;; restic) echo "$REPO_RESTIC" ;; restic-gz) echo "$REPO_RESTIC_GZ" ;; borg) echo "$REPO_BORG" ;; esac; }

"$USDCOP_BIN" --repo "$REPO_DR" init >"$WORK/init.usdcop-dr.log" 2>&1 \
    || { cat "$WORK/init.usdcop-dr.log" >&2; die "usdcop-dr init failed"; }
if [[ " ${TOOLS[*]} " == *" borg "* ]]; then
    "$BORG_BIN" init --encryption repokey "$REPO_BORG" >"$WORK/init.borg.log" 2>&1 \
        || { cat "$WORK/init.borg.log" >&2; die "borg init failed"; }
fi
for r in "$REPO_RESTIC" "$REPO_RESTIC_GZ"; do
    [[ "$r" == "$REPO_RESTIC_GZ" && "$RESTIC_GZ" != 1 ]] && continue
    "$RESTIC_BIN" -r "$r" init --repository-version 2 >"$WORK/init.restic.log" 2>&1 \
        || { cat "$WORK/init.restic.log" >&2; die "restic init failed"; }
done

# Commands, with the DSN (no password) in argv and the password in PGPASSWORD only.
# shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
{
PIPE_RESTIC='set -o pipefail; "$1" -Fc -Z0 -d "$2" | "$3" -r "$4" backup --json --stdin --stdin-filename "$5"'
PIPE_RESTIC_GZ='set -o pipefail; "$1" -Fc -d "$2" | "$3" -r "$4" backup --json --stdin --stdin-filename "$5"'
PIPE_BORG='set -o pipefail; "$1" -Fc -Z0 -d "$2" | "$3" create --json --compression zstd,3 --stdin-name "$5" "$4::$6" -'
PIPE_RESTORE='set -o pipefail; "$1" -r "$2" dump latest "$3" | "$4" --exit-on-error -d "$5"'
}

do_backup() { # do_backup TOOL STEP
    local tool=$1 step=$2 key="$1,$2" repo before out
    repo="$(repo_of "$tool")"
    out="$WORK/out.$tool.$step.json"
    before="$(repo_bytes "$repo")"
    log "$tool: $step"
    case $tool in
        usdcop-dr)
            run_timed "$key" "$out" "$USDCOP_BIN" --repo "$repo" --json backup postgres \
                --source "$SOURCE_NAME" --dsn "$(dsn "$DB")" || return 0
            BYTES[$key]="$(json_field "$out" bytes_in || echo '?')"
            NEW_BYTES[$key]="$(json_field "$out" bytes_stored_new || echo '?')"
            NOTE[$key,checksummed]="$(json_field "$out" postgres.tables_checksummed || echo '?')"
            NOTE[$key,rows]="$(json_field "$out" postgres.rows || echo '?')"
            ;;
        restic | restic-gz)
            local pipe=$PIPE_RESTIC
            [[ $tool == restic-gz ]] && pipe=$PIPE_RESTIC_GZ
            run_timed "$key" "$out" bash -c "$pipe" bench "$PG_BIN/pg_dump" "$(dsn "$DB")" \
                "$RESTIC_BIN" "$repo" "$STDIN_NAME" || return 0
            BYTES[$key]="$(json_field "$out" total_bytes_processed || echo '?')"
            NEW_BYTES[$key]="$(json_field "$out" data_added || echo '?')"
            ;;
        borg)
            run_timed "$key" "$out" bash -c "$PIPE_BORG" bench "$PG_BIN/pg_dump" "$(dsn "$DB")" \
                "$BORG_BIN" "$repo" "$STDIN_NAME" "$step" || return 0
            BYTES[$key]="$(json_field "$out" archive.stats.original_size || echo '?')"
            NEW_BYTES[$key]="$(json_field "$out" archive.stats.deduplicated_size || echo '?')"
            ;;
    esac
    REPO_BYTES[$key]="$(repo_bytes "$repo")"
    REPO_BYTES[$key,growth]=$((REPO_BYTES[$key] - before))
}

do_dump_baseline() { # do_dump_baseline STEP
    log "baseline: pg_dump -Fc -Z0 > /dev/null ($1)"
    run_timed "dump,$1" /dev/null "$PG_BIN/pg_dump" -Fc -Z0 -d "$(dsn "$DB")" || true
}

# ---------------------------------------------------------------- the run
# usdcop-dr's picture as plain SQL (src/postgres/inspect.rs): count(*) and the
# hashtextextended checksum for tables of at most 1,000,000 rows, count(*) only for bigger
# ones. (usdcop-dr reads a table twice, count then checksum, only when the planner's
# estimate is within a factor of 2 of the limit.)
PICTURE_SQL="$(psql_db "$DB" <<'SQLEOF'
SELECT string_agg(format(
    CASE WHEN n <= 1000000
         THEN 'SELECT count(*), sum(hashtextextended(ROW(r.*)::text, 0)::numeric) FROM %I.%I AS r;'
         ELSE 'SELECT count(*) FROM %I.%I;' END, schemaname, relname), ' ')
FROM (SELECT schemaname, relname, n_live_tup AS n FROM pg_stat_user_tables) t;
SQLEOF
)"
log "the picture's queries by hand on the source database"
run_timed "picture,source" /dev/null "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 \
    -d "$(dsn "$DB")" -c "$PICTURE_SQL" || true

mib() { [[ "$1" =~ ^-?[0-9]+$ ]] && awk -v k="$1" -v d="$2" 'BEGIN { printf "%.1f", k / d }' || echo "n/a"; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s <= 0) s = 0.01; printf "%.1f", b / 1e6 / s }'; }
cell() { # cell KEY BYTES: "s, MB/s, RSS"
    local k=$1
    if [[ -n "${NOTE[$k]:-}" ]]; then echo "${NOTE[$k]}"; return; fi
    if [[ -z "${SECS[$k]:-}" ]]; then echo "n/a"; return; fi
    printf '%s s, %s MB/s, %s MiB' "${SECS[$k]}" "$(mbps "$2" "${SECS[$k]}")" "$(mib "${RSS[$k]}" 1024)"
}
ratio() { # ratio KEY-A KEY-B: SECS[A] / SECS[B]
    awk -v a="${SECS[$1]:-x}" -v b="${SECS[$2]:-x}" -v na="${NOTE[$1]:-}" -v nb="${NOTE[$2]:-}" \
        'BEGIN { if (na == "" && nb == "" && a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }'
}
cpu_cell() { [[ -n "${CPU[$1]:-}" ]] && echo "${CPU[$1]} + ${SCPU[$1]}" || echo "n/a"; }


# Alternating pairs: the machine's speed drifts by tens of percent over minutes, so the
# ratio of a dump and a backup run back to back is steadier than any one wall time.
LIVE_PAIRS="${BENCH_LIVE_PAIRS:-0}"
if ((LIVE_PAIRS > 0)); then
    ratios=()
    echo "## Live backup against pg_dump alone, $BARS bars, $LIVE_PAIRS pairs"
    echo
    echo "usdcop-dr $(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown); each pair: \`pg_dump -Fc -Z0 > /dev/null\`, then a first \`usdcop-dr backup postgres\` into a fresh repository."
    echo
    echo "| pair | pg_dump s | usdcop-dr s | ratio | usdcop-dr CPU s (+ server) | peak RSS MiB |"
    echo "|---:|---:|---:|---:|---:|---:|"
    for i in $(seq 1 "$LIVE_PAIRS"); do
        do_dump_baseline "pair$i"
        rm -rf "$WORK/repo-pair"
        "$USDCOP_BIN" --repo "$WORK/repo-pair" init >/dev/null 2>&1 || die "usdcop-dr init failed"
        run_timed "usdcop-dr,pair$i" /dev/null "$USDCOP_BIN" --repo "$WORK/repo-pair" backup postgres \
            --source "$SOURCE_NAME" --dsn "$(dsn "$DB")" || true
        r="$(ratio "usdcop-dr,pair$i" "dump,pair$i")"
        [[ "$r" != n/a ]] && ratios+=("$r")
        printf '| %s | %s | %s | %s | %s | %s |\n' "$i" "${SECS[dump,pair$i]:-n/a}" "${SECS[usdcop-dr,pair$i]:-n/a}" \
            "$r" "$(cpu_cell "usdcop-dr,pair$i")" "$(mib "${RSS[usdcop-dr,pair$i]:-x}" 1024)"
    done
    rm -rf "$WORK/repo-pair"
    echo
    echo "Median ratio: $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }') (goal ≤ 1.10)."
    echo
    if [[ "${BENCH_LIVE_ONLY:-0}" == 1 ]]; then
        exit "$FAILED"
    fi
fi

DELTA_BIN="$(dirname "$USDCOP_BIN")/examples/delta_estimate"
for step in backup1 backup2 backup3 backup4; do
    if [[ $step == backup4 ]]; then
        if [[ "${BENCH_DELTA:-1}" == 1 ]]; then
            "$PG_BIN/pg_dump" -Fc -Z0 -d "$(dsn "$DB")" -f "$WORK/parent.dump" || die "pg_dump to a file failed"
        fi
        log "changing 1 % of the bars and of the features at random (UPDATE ... WHERE random() < 0.01)"
        psql_db "$DB" >&2 <<SQLEOF || die "changing the database failed"
SELECT setseed(0.14);
UPDATE usdcop_m5_ohlcv SET close = close + 0.0001 WHERE random() < 0.01;
UPDATE features SET value = value * 1.0001 WHERE random() < 0.01;
VACUUM ANALYZE usdcop_m5_ohlcv;
VACUUM ANALYZE features;
SQLEOF
        if [[ "${BENCH_DELTA:-1}" == 1 ]]; then
            "$PG_BIN/pg_dump" -Fc -Z0 -d "$(dsn "$DB")" -f "$WORK/child.dump" || die "pg_dump to a file failed"
            if [[ -x "$DELTA_BIN" ]]; then
                log "delta estimate: the random change against its parent, zstd level 1 (untimed)"
                DELTA_REPORT="$("$DELTA_BIN" "$WORK/parent.dump" "$WORK/child.dump" 1 2>&1)" \
                    || { log "delta estimate failed: $DELTA_REPORT"; DELTA_REPORT=""; }
            else
                log "no $DELTA_BIN (cargo build --release --example delta_estimate): delta estimate skipped"
            fi
            rm -f "$WORK/parent.dump" "$WORK/child.dump"
        fi
    fi
    if [[ $step == backup3 ]]; then
        log "changing ~1 % of the bars: UPDATE of the latest $((BARS / 200)), INSERT of 288"
        psql_db "$DB" >&2 <<SQLEOF || die "changing the database failed"
UPDATE usdcop_m5_ohlcv SET close = close + 0.0001
 WHERE time > (SELECT max(time) FROM usdcop_m5_ohlcv) - interval '5 minutes' * $((BARS / 200));
INSERT INTO usdcop_m5_ohlcv (time, symbol, open, high, low, close, volume)
SELECT max_t + g * interval '5 minutes', 'USD/COP', 4000, 4001, 3999, 4000.5, g
  FROM (SELECT max(time) AS max_t FROM usdcop_m5_ohlcv) m, generate_series(1, 288) g;
VACUUM ANALYZE usdcop_m5_ohlcv;
SQLEOF
    fi
    do_dump_baseline "$step"
    for tool in "${TOOLS[@]}"; do do_backup "$tool" "$step"; done
    if [[ $step == backup2 ]]; then
        log "usdcop-dr: backup2 --checksum-max-rows 0 (counts only)"
        run_timed "usdcop-dr,backup2-counts" "$WORK/out.usdcop-dr.backup2-counts.json" "$USDCOP_BIN" \
            --repo "$REPO_DR" --json backup postgres --source "$SOURCE_NAME" --dsn "$(dsn "$DB")" \
            --checksum-max-rows 0 || true
    fi
done
DUMP_BYTES="${BYTES[restic,backup4]:-${BYTES[usdcop-dr,backup4]:-0}}"
DUMP1_BYTES="${BYTES[restic,backup1]:-${BYTES[usdcop-dr,backup1]:-0}}"
SOURCE_ROWS="$(psql_db "$DB" -c "SELECT (SELECT count(*) FROM usdcop_m5_ohlcv) + (SELECT count(*) FROM features)
    + (SELECT count(*) FROM pipeline_status) + (SELECT count(*) FROM model_registry)")"

# Restores, all of the latest snapshot (the changed database), each into a new database.
# Baseline: pg_restore of the same dump from a local file (written untimed).
log "writing the dump to a file for the pg_restore baseline"
"$PG_BIN/pg_dump" -Fc -Z0 -d "$(dsn "$DB")" -f "$WORK/$STDIN_NAME" || die "pg_dump to a file failed"
createdb_() { psql_db postgres -c "CREATE DATABASE $1 TEMPLATE template0 ENCODING 'UTF8'"; }
createdb_ restored_base
log "baseline: pg_restore from a file"
run_timed "restore,base" /dev/null "$PG_BIN/pg_restore" --exit-on-error -d "$(dsn restored_base)" \
    "$WORK/$STDIN_NAME" || true
if [[ "$JOBS2" == 1 ]]; then
    # The baseline of `usdcop-dr restore postgres --jobs 2`: pg_restore -j 2 of the file.
    createdb_ restored_base_j2
    log "baseline: pg_restore -j 2 from a file"
    run_timed "restore,base-j2" /dev/null "$PG_BIN/pg_restore" --exit-on-error -j 2 \
        -d "$(dsn restored_base_j2)" "$WORK/$STDIN_NAME" || true
fi
rm -f "$WORK/$STDIN_NAME"

log "usdcop-dr: restore postgres --create (streamed, with verification)"
out="$WORK/out.usdcop-dr.restore.json"
if run_timed "usdcop-dr,restore" "$out" "$USDCOP_BIN" --repo "$REPO_DR" --json restore postgres \
    --source "$SOURCE_NAME" --target-dsn "$(dsn restored_dr)" --create; then
    NOTE[usdcop-dr,restore,checksummed]="$(json_field "$out" tables_checksummed || echo '?')"
    NOTE[usdcop-dr,restore,diff]="$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["differences"]))' "$out" || echo '?')"
fi

createdb_ restored_restic
log "restic: dump latest | pg_restore"
run_timed "restic,restore" /dev/null bash -c "$PIPE_RESTORE" bench "$RESTIC_BIN" "$REPO_RESTIC" \
    "$STDIN_NAME" "$PG_BIN/pg_restore" "$(dsn restored_restic)" || true

if [[ "$JOBS2" == 1 ]]; then
    mkdir -p "$WORK/staging"
    log "usdcop-dr: restore postgres --create --jobs 2 (staged, with verification)"
    run_timed "usdcop-dr,restore-j2" "$WORK/out.usdcop-dr.restore-j2.json" "$USDCOP_BIN" --repo "$REPO_DR" \
        --json restore postgres --source "$SOURCE_NAME" --target-dsn "$(dsn restored_dr_j2)" --create \
        --jobs 2 --staging-dir "$WORK/staging" || true
fi

# What usdcop-dr's verification pass costs: its count/checksum queries, run by hand with
# psql on the restic-restored database.
log "the picture's queries by hand on the restic-restored database"
run_timed "picture,restored" /dev/null "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 \
    -d "$(dsn restored_restic)" -c "$PICTURE_SQL" || true

# Every restored database must hold what the source holds (row counts and content checksums
# of every table; the restore timings are already taken).
fingerprint() {
    psql_db "$1" <<'SQLEOF'
SELECT string_agg(fp, ' ' ORDER BY fp) FROM (
  SELECT 'usdcop_m5_ohlcv:' || count(*) || ':' || coalesce(sum(('x' || substr(md5(r::text), 1, 15))::bit(60)::int8::numeric), 0) AS fp FROM usdcop_m5_ohlcv r
  UNION ALL SELECT 'features:' || count(*) || ':' || coalesce(sum(('x' || substr(md5(r::text), 1, 15))::bit(60)::int8::numeric), 0) FROM features r
  UNION ALL SELECT 'pipeline_status:' || count(*) || ':' || coalesce(sum(('x' || substr(md5(r::text), 1, 15))::bit(60)::int8::numeric), 0) FROM pipeline_status r
  UNION ALL SELECT 'model_registry:' || count(*) || ':' || coalesce(sum(('x' || substr(md5(r::text), 1, 15))::bit(60)::int8::numeric), 0) FROM model_registry r
) t;
SQLEOF
}
log "checking the restored databases against the source (untimed)"
SRC_FP="$(fingerprint "$DB")"
declare -A RESTORED_OK
for pair in base:restored_base usdcop-dr:restored_dr restic:restored_restic usdcop-dr-j2:restored_dr_j2 \
    base-j2:restored_base_j2; do
    who=${pair%%:*} db=${pair#*:}
    [[ ($who == usdcop-dr-j2 || $who == base-j2) && "$JOBS2" != 1 ]] && continue
    if [[ "$(fingerprint "$db" 2>/dev/null || echo none)" == "$SRC_FP" ]]; then
        RESTORED_OK[$who]=yes
    else
        RESTORED_OK[$who]=NO
        log "FAILED: $db differs from $DB"
        FAILED=1
    fi
done

# ---------------------------------------------------------------- report
cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "## PostgreSQL: usdcop-dr vs restic, $BARS bars"
echo
echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)."
echo "Server: $PG_VERSION (fsync off, autovacuum off, shared_buffers 128MB), on the same machine, loopback."
echo "restic: $RESTIC_VERSION, repository version 2, compression auto."
echo "usdcop-dr: $("$USDCOP_BIN" --version 2>/dev/null || echo "$USDCOP_BIN"), binary of $(date -u -r "$USDCOP_BIN" '+%Y-%m-%d %H:%M UTC'), source now $(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)."
echo "Database: $SOURCE_ROWS rows after the change (usdcop_m5_ohlcv $BARS + 288 bars, features $((2 * BARS)), pipeline_status 1000, model_registry 8),"
echo "pg_database_size $(mib "$DB_SIZE" 1048576) MiB before the change; pg_dump -Fc -Z0 dump $(mib "$DUMP1_BYTES" 1048576) MiB ($DUMP1_BYTES bytes),"
echo "$(mib "$DUMP_BYTES" 1048576) MiB after the change$(if [[ "$RESTIC_GZ" == 1 ]]; then echo "; default compressed -Fc dump $(mib "${BYTES[restic-gz,backup1]:-x}" 1048576) MiB"; fi)."
# shellcheck disable=SC2054 # the keys contain commas
LOAD_KEYS=(picture,source dump,backup1 usdcop-dr,backup1 restic,backup1 restic-gz,backup1 dump,backup2
    usdcop-dr,backup2 restic,backup2 restic-gz,backup2 usdcop-dr,backup2-counts dump,backup3 usdcop-dr,backup3
    restic,backup3 restic-gz,backup3 dump,backup4 usdcop-dr,backup4 restic,backup4 restic-gz,backup4 restore,base restore,base-j2 usdcop-dr,restore restic,restore usdcop-dr,restore-j2
    picture,restored)
echo "Load average (1 min) before each timed command (tool,step load):$(for k in "${LOAD_KEYS[@]}"; do
    if [[ -n "${LOAD[$k]:-}" ]]; then printf ' %s %s' "$k" "${LOAD[$k]}"; fi; done)."
echo "(the machine has $(nproc) CPUs; above that, other work competed for the CPUs and the wall-clock figures are noisy)."
echo
echo "MB/s = 10^6 bytes of the -Z0 dump (the database's logical size) per wall-clock second; peak RSS = max resident set"
echo "of the command and its children (pg_dump / pg_restore included); ratio = restic seconds / usdcop-dr seconds (>1: usdcop-dr faster)."
echo
echo "| step | pg_dump / pg_restore alone | usdcop-dr | restic (pg_dump -Fc -Z0 \\| restic) | ratio |"
echo "|---|---|---|---|---:|"
row() { # row TITLE BASE-KEY DR-KEY RESTIC-KEY BYTES
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$( [[ -n $2 ]] && cell "$2" "$5" || echo "—")" \
        "$(cell "$3" "$5")" "$(cell "$4" "$5")" "$(ratio "$4" "$3")"
}
row "1. first backup" dump,backup1 usdcop-dr,backup1 restic,backup1 "$DUMP1_BYTES"
row "2. second backup, unchanged database" dump,backup2 usdcop-dr,backup2 restic,backup2 "$DUMP1_BYTES"
row "2b. second backup, usdcop-dr --checksum-max-rows 0 (counts only)" "" usdcop-dr,backup2-counts restic,backup2 "$DUMP1_BYTES"
row "3. backup after ~1 % of the bars changed" dump,backup3 usdcop-dr,backup3 restic,backup3 "$DUMP_BYTES"
row "3b. backup after 1 % of the rows updated at random" dump,backup4 usdcop-dr,backup4 restic,backup4 "$DUMP_BYTES"
row "4. restore into a new database (usdcop-dr: with verification)" restore,base usdcop-dr,restore restic,restore "$DUMP_BYTES"
if [[ "$JOBS2" == 1 ]]; then
    row "4b. restore, pg_restore -j 2 of a file / usdcop-dr --jobs 2 (staged) / restic streamed" restore,base-j2 \
        usdcop-dr,restore-j2 restic,restore "$DUMP_BYTES"
fi
echo
echo "| CPU seconds, client (tool + pg_dump/pg_restore, user+sys) + server | pg_dump / pg_restore alone | usdcop-dr | restic |"
echo "|---|---:|---:|---:|"
printf '| 1. first backup | %s | %s | %s |\n' "$(cpu_cell dump,backup1)" "$(cpu_cell usdcop-dr,backup1)" "$(cpu_cell restic,backup1)"
printf '| 2. second backup | %s | %s | %s |\n' "$(cpu_cell dump,backup2)" "$(cpu_cell usdcop-dr,backup2)" "$(cpu_cell restic,backup2)"
printf '| 2b. second backup, --checksum-max-rows 0 | | %s | |\n' "$(cpu_cell usdcop-dr,backup2-counts)"
printf '| 3. backup after the change | %s | %s | %s |\n' "$(cpu_cell dump,backup3)" "$(cpu_cell usdcop-dr,backup3)" "$(cpu_cell restic,backup3)"
printf '| 3b. backup after the random change | %s | %s | %s |\n' "$(cpu_cell dump,backup4)" "$(cpu_cell usdcop-dr,backup4)" "$(cpu_cell restic,backup4)"
printf '| 4. restore | %s | %s | %s |\n' "$(cpu_cell restore,base)" "$(cpu_cell usdcop-dr,restore)" "$(cpu_cell restic,restore)"
if [[ "$JOBS2" == 1 ]]; then
    printf '| 4b. restore --jobs 2 / pg_restore -j 2 | %s | %s | |\n' "$(cpu_cell restore,base-j2)" "$(cpu_cell usdcop-dr,restore-j2)"
fi
printf '| the picture'"'"'s queries by hand (psql), source / restic-restored database | %s / %s | | |\n' \
    "$(cpu_cell picture,source)" "$(cpu_cell picture,restored)"
echo
HAS_BORG=0
if [[ " ${TOOLS[*]} " == *" borg "* ]]; then HAS_BORG=1; fi
echo "| repository | usdcop-dr | restic (-Z0 dump) |$(if [[ "$RESTIC_GZ" == 1 ]]; then echo " restic (compressed -Fc dump) |"; fi)$(if ((HAS_BORG)); then echo " borg (-Z0 dump) |"; fi)"
echo "|---|---:|---:|$(if [[ "$RESTIC_GZ" == 1 ]]; then echo "---:|"; fi)$(if ((HAS_BORG)); then echo "---:|"; fi)"
repo_row() { # repo_row TITLE KEY-SUFFIX [new]
    local t line="| $1 |"
    for t in "${TOOLS[@]}"; do
        if [[ "${3:-}" == new ]]; then line+=" $(mib "${NEW_BYTES[$t,$2]:-x}" 1048576) |"
        else line+=" $(mib "${REPO_BYTES[$t,$2]:-x}" 1048576) |"; fi
    done
    echo "$line"
}
repo_row "size after the first backup, MiB (du -sb)" "backup1"
repo_row "growth from the second backup (unchanged), MiB" "backup2,growth"
repo_row "growth from the third backup (~1 % changed), MiB" "backup3,growth"
repo_row "new data reported by the tool, third backup, MiB" "backup3" new
repo_row "growth from the fourth backup (1 % of rows updated at random), MiB" "backup4,growth"
repo_row "new data reported by the tool, fourth backup, MiB" "backup4" new
if [[ "$RESTIC_GZ" == 1 ]]; then
    echo
    echo "restic fed pg_dump's default compressed -Fc (\`pg_dump -Fc | restic backup --stdin\`), wall seconds:"
    echo "first backup ${SECS[restic-gz,backup1]:-n/a}, second ${SECS[restic-gz,backup2]:-n/a}, third ${SECS[restic-gz,backup3]:-n/a}"
    echo "(ratio to usdcop-dr $(ratio restic-gz,backup1 usdcop-dr,backup1), $(ratio restic-gz,backup2 usdcop-dr,backup2), $(ratio restic-gz,backup3 usdcop-dr,backup3))."
fi
if ((HAS_BORG)); then
    echo
    echo "borg ($("$BORG_BIN" --version 2>/dev/null), \`pg_dump -Fc -Z0 | borg create --compression zstd,3 --stdin-name\`), wall seconds:"
    echo "first backup ${SECS[borg,backup1]:-n/a}, second ${SECS[borg,backup2]:-n/a}, third ${SECS[borg,backup3]:-n/a}, fourth (random) ${SECS[borg,backup4]:-n/a}"
    echo "(ratio to usdcop-dr $(ratio borg,backup1 usdcop-dr,backup1), $(ratio borg,backup2 usdcop-dr,backup2), $(ratio borg,backup3 usdcop-dr,backup3), $(ratio borg,backup4 usdcop-dr,backup4))."
fi
echo
echo "usdcop-dr's picture: ${NOTE[usdcop-dr,backup3,rows]:-?} rows counted in the third backup, ${NOTE[usdcop-dr,backup3,checksummed]:-?} of 4 tables"
echo "checksummed (tables above --checksum-max-rows, default 1,000,000 rows, are counted only); first backup: ${NOTE[usdcop-dr,backup1,checksummed]:-?} checksummed."
echo "Its restore verified ${NOTE[usdcop-dr,restore,checksummed]:-?} checksummed tables, ${NOTE[usdcop-dr,restore,diff]:-?} differences."
echo "The picture's count/checksum queries run by hand with psql took ${SECS[picture,source]:-n/a} s on the source database"
echo "and ${SECS[picture,restored]:-n/a} s on the restic-restored one."
echo "Restored databases identical to the source (count and md5 checksum of every table, checked afterwards):"
echo "pg_restore baseline ${RESTORED_OK[base]:-?}$(if [[ "$JOBS2" == 1 ]]; then echo " (-j 2: ${RESTORED_OK[base-j2]:-?})"; fi), usdcop-dr ${RESTORED_OK[usdcop-dr]:-?}, restic ${RESTORED_OK[restic]:-?}$(if [[ "$JOBS2" == 1 ]]; then echo ", usdcop-dr --jobs 2 ${RESTORED_OK[usdcop-dr-j2]:-?}"; fi)."

if [[ -n "${DELTA_REPORT:-}" ]]; then
    echo
    echo "Delta compression against the parent chunk, estimated on the dumps before and after the random"
    echo "change (examples/delta_estimate.rs; not what the repository stores):"
    echo
    echo '```'
    echo "$DELTA_REPORT"
    echo '```'
fi

if ((FAILED)); then
    log "one or more steps FAILED (see above)"
    exit 1
fi
log "all steps succeeded; every restored database matches the source"
