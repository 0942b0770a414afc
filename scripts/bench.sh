#!/usr/bin/env bash
# Benchmark: usdcop-dr vs restic 0.14 and borg 1.2 on the same single-stream input.
#
# Usage: scripts/bench.sh [SIZE_GIB]        (default 3; fractions such as 0.25 are accepted)
#
# Environment:
#   BENCH_DIR          parent of the work directory (default /tmp/usdcop-bench)
#   BENCH_TOOLS        tools to run, in order (default "usdcop-dr restic borg"; borg only
#                      when installed)
#   BENCH_SEED         seed of the deterministic input generator (default 20240501)
#   BENCH_SKIP_BUILD=1 do not run `cargo build --release` first
#   BENCH_KEEP=1       keep the work directory (input, repositories) afterwards
#   BENCH_RSS_GIB      stream sizes for the peak-RSS steps (default "1 10"; "" skips them): each
#                      tool backs up and restores a stream of that many GiB made of copies of
#                      the input with every line changed per copy (nothing dedups), fed through
#                      a pipe, never stored on disk
#   BENCH_WAIT_IDLE=N  before each timed command wait up to N seconds (default 0) for the
#                      1-minute load average to fall below BENCH_IDLE_LOAD (default 1.0)
#   USDCOP_DR_BIN      usdcop-dr binary (default <repo>/target/release/usdcop-dr)
#   RESTIC_BIN         restic binary (default: restic on PATH)
#   BORG_BIN           borg binary (default: borg on PATH)
#
# This is a benchmark, not a test: it prints a Markdown table to stdout (progress goes to
# stderr) and exits non-zero if any step failed or a restore did not reproduce the input.
# See docs/BENCHMARKS.md.
set -euo pipefail

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 2; }

SIZE_GIB="${1:-3}"
[[ "$SIZE_GIB" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "SIZE_GIB must be a positive number, got '$SIZE_GIB'"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/tmp/usdcop-bench}"
BENCH_SEED="${BENCH_SEED:-20240501}"
DEFAULT_TOOLS="usdcop-dr restic"
if command -v "${BORG_BIN:-borg}" >/dev/null; then DEFAULT_TOOLS+=" borg"; fi
read -r -a TOOLS <<<"${BENCH_TOOLS:-$DEFAULT_TOOLS}"
USDCOP_BIN="${USDCOP_DR_BIN:-$REPO_ROOT/target/release/usdcop-dr}"
RESTIC_BIN="${RESTIC_BIN:-restic}"
BORG_BIN="${BORG_BIN:-borg}"
SOURCE_NAME="pg-usdcop"
STDIN_NAME="usdcop_trading.pgdump"
PASSPHRASE="bench-passphrase-not-secret"

for t in "${TOOLS[@]}"; do
    [[ "$t" == usdcop-dr || "$t" == restic || "$t" == borg ]] || die "unknown tool '$t' in BENCH_TOOLS"
done

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
need_pkg sha256sum coreutils
for t in "${TOOLS[@]}"; do
    if [[ "$t" == restic && "$RESTIC_BIN" == restic ]]; then need_pkg restic restic; fi
    if [[ "$t" == borg && "$BORG_BIN" == borg ]]; then need_pkg borg borgbackup; fi
done

SIZE_BYTES="$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 2**30))' "$SIZE_GIB")"
((SIZE_BYTES >= 64 * 1024 * 1024)) || die "SIZE_GIB too small (minimum 64 MiB)"

mkdir -p "$BENCH_DIR"
AVAIL_BYTES=$(($(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }') * 1024))
if ((AVAIL_BYTES < 4 * SIZE_BYTES)); then
    die "$BENCH_DIR has $((AVAIL_BYTES >> 20)) MiB free; a ${SIZE_GIB} GiB run needs at least 4 x size = $(((4 * SIZE_BYTES) >> 20)) MiB"
fi

for t in "${TOOLS[@]}"; do
    if [[ "$t" == usdcop-dr && -z "${USDCOP_DR_BIN:-}" && "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
        log "building usdcop-dr (cargo build --release)"
        (cd "$REPO_ROOT" && cargo build --release >&2) || die "cargo build --release failed"
    fi
    if [[ "$t" == usdcop-dr ]]; then [[ -x "$USDCOP_BIN" ]] || die "usdcop-dr binary not found at $USDCOP_BIN"; fi
    if [[ "$t" == restic ]]; then
        RESTIC_VERSION="$("$RESTIC_BIN" version)"
        [[ "$RESTIC_VERSION" == "restic 0.14."* ]] || log "warning: expected restic 0.14.x, found: $RESTIC_VERSION"
    fi
    if [[ "$t" == borg ]]; then BORG_VERSION="$("$BORG_BIN" --version)"; fi
done

WORK="$(mktemp -d "$BENCH_DIR/run.XXXXXX")"
cleanup() {
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log "work directory: $WORK"

# Keep the caller's environment from redirecting either tool elsewhere.
unset USDCOP_DR_REPO USDCOP_DR_PASSWORD_FILE RESTIC_REPOSITORY RESTIC_REPOSITORY_FILE \
    RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND RESTIC_COMPRESSION RESTIC_PACK_SIZE \
    BORG_REPO BORG_PASSCOMMAND BORG_PASSPHRASE_FD
export USDCOP_DR_PASSWORD="$PASSPHRASE" RESTIC_PASSWORD="$PASSPHRASE" BORG_PASSPHRASE="$PASSPHRASE"
export RESTIC_CACHE_DIR="$WORK/restic-cache" USDCOP_DR_CACHE_DIR="$WORK/usdcop-cache"
export BORG_BASE_DIR="$WORK/borg-base" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes

# ---------------------------------------------------------------- input generator
# Deterministic (seeded) synthetic dump stream of a trading system's PostgreSQL database:
# ~70 % pg_dump COPY / CSV text of 5-minute USD/COP OHLCV bars (prices around 4000-4500 COP
# per USD), ~30 % incompressible random bytes standing for already-compressed artefacts
# (zstd'd parquet / model files) stored in the same dump.
cat >"$WORK/gen.py" <<'PYEOF'
import datetime, itertools, multiprocessing, os, random, sys

BASE = 200000  # price table index 0 = 2000.00
PRICES = ["%d.%02d" % divmod(i, 100) for i in range(BASE, 700001)]
SLOTS = ["%02d:%02d:00-05" % divmod(m, 60) for m in range(0, 1440, 5)]
SERIES = [(s, v) for s in ("USDCOP", "USDCOP_NDF1M", "USDCOP_NDF3M", "USDCOP_TRM")
          for v in ("SET-FX", "BLOOMBERG", "REFINITIV", "BANREP", "BROKER-A", "BROKER-B")]
COLS = "bar_ts, symbol, source, open, high, low, close, volume"


SEGMENT = 64 << 20      # generated independently (and in parallel), seeded by index
SEGMENT_DAYS = 100      # calendar days each series advances per segment
TABLES = None


def tables(seed):
    """Price-step, wick and volume tables shared by every segment of one seed."""
    global TABLES
    if TABLES is None:
        rng = random.Random(seed)
        TABLES = ([int(round(rng.gauss(0, 120) / 5)) * 5 for _ in range(256)],  # hundredths
                  [int(rng.expovariate(1 / 60) / 5) * 5 for _ in range(256)],
                  [str(int(rng.lognormvariate(13, 1.0))) for _ in range(65536)])
    return TABLES


class Gen:
    def __init__(self, seed, segment, purpose="input"):
        self.step, self.wick, self.vol = tables(seed)
        self.rng = rng = random.Random("%s/%d/%d" % (purpose, seed, segment))
        day0 = datetime.date(2010, 1, 4) + datetime.timedelta(days=SEGMENT_DAYS * segment)
        self.state = {k: [day0, rng.randrange(400000, 450000) - BASE] for k in SERIES}
        self.blob_no = segment * 1000

    def rows(self, series, days, sep):
        """`days` days of 5-minute bars of one series, as text with separator `sep`."""
        rng, st = self.rng, self.state[series]
        fmt = "%s%s" + sep + series[0] + sep + series[1] + (sep + "%s") * 5 + "\n"
        out = []
        ap = out.append
        day, close = st
        P, W, V, S = PRICES, self.wick, self.vol, self.step
        one_day = datetime.timedelta(days=1)
        for _ in range(days):
            # overnight gap with 2 %/day mean reversion towards 4250 COP
            close += (425000 - BASE - close) // 50 + S[rng.randrange(256)]
            rb = rng.randbytes(288 * 3)
            closes = list(itertools.accumulate((S[b] for b in rb[:288]), initial=close))
            hw, lw = rb[288:576], rb[576:]
            vols = memoryview(rng.randbytes(576)).cast("H")
            ds = day.isoformat() + " "
            for j in range(288):
                o, c = closes[j], closes[j + 1]
                hi, lo = (o, c) if o > c else (c, o)
                ap(fmt % (ds, SLOTS[j], P[o], P[hi + W[hw[j]]], P[lo - W[lw[j]]], P[c], V[vols[j]]))
            close = closes[-1]
            day += one_day
            if day.weekday() == 5:  # markets closed on weekends
                day += 2 * one_day
        st[0], st[1] = day, close
        return "".join(out).encode()

    def text_section(self):
        rng = self.rng
        series = SERIES[rng.randrange(len(SERIES))]
        days = rng.randrange(20, 120)
        if rng.random() < 0.75:  # pg_dump COPY block (text format)
            d = self.state[series][0]
            head = ("--\n-- Data for Name: ohlcv_5m_%d; Type: TABLE DATA; Schema: market; Owner: usdcop\n--\n\n"
                    "COPY market.ohlcv_5m_%d (%s) FROM stdin;\n" % (d.year, d.year, COLS)).encode()
            return head + self.rows(series, days, "\t") + b"\\.\n\n\n"
        head = ("-- csv export: market.ohlcv_5m %s/%s\n%s\n" % (series[0], series[1], COLS.replace(" ", ""))).encode()
        return head + self.rows(series, days, ",")

    def blob_section(self):
        self.blob_no += 1
        n = self.rng.randrange(256 << 10, 4 << 20)
        head = ("-- blob %d: artefacts/usdcop_model_%05d.parquet.zst (%d bytes)\n"
                % (self.blob_no, self.blob_no, n)).encode()
        return head + self.rng.randbytes(n) + b"\n"


HEADER = (b"--\n-- PostgreSQL database dump\n--\n\n-- Dumped from database version 15.6\n"
          b"-- Dumped by pg_dump version 15.6\n\nSET statement_timeout = 0;\nSET lock_timeout = 0;\n"
          b"SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\n"
          b"CREATE TABLE market.ohlcv_5m (\n    bar_ts timestamp with time zone NOT NULL,\n"
          b"    symbol text NOT NULL,\n    source text NOT NULL,\n    open numeric(12,2),\n"
          b"    high numeric(12,2),\n    low numeric(12,2),\n    close numeric(12,2),\n"
          b"    volume bigint\n) PARTITION BY RANGE (bar_ts);\n\n")


def segment(args):
    """Write segment `k` of the stream (bytes [k*SEGMENT, min(size, (k+1)*SEGMENT)))."""
    path, size, seed, k = args
    g = Gen(seed, k)
    n = min(SEGMENT, size - k * SEGMENT)
    parts, written, rand = [HEADER if k == 0 else b""], 0, 0
    written = len(parts[0])
    while written < n:
        if written and rand < 0.3 * written:
            chunk = g.blob_section()
            rand += len(chunk)
        else:
            chunk = g.text_section()
        parts.append(chunk)
        written += len(chunk)
    data = b"".join(parts)[:n]
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, k * SEGMENT)
    finally:
        os.close(fd)
    return n


def generate(size, seed, path):
    with open(path, "wb") as f:
        f.truncate(size)
    jobs = [(path, size, seed, k) for k in range((size + SEGMENT - 1) // SEGMENT)]
    with multiprocessing.Pool(os.cpu_count() or 1) as pool:
        assert sum(pool.imap_unordered(segment, jobs)) == size


def modify(src, dst, seed):
    """Copy src to dst with ~1 % of the bytes changed at six places: four in-place
    rewrites of rows, one insertion of new rows and one deletion."""
    g = Gen(seed, 0, "modify")
    rng = g.rng
    src.seek(0, 2)
    size = src.tell()
    src.seek(0)
    edit = size // 100 // 6
    kinds = ["replace", "insert", "replace", "delete", "replace", "replace"]
    offsets = sorted(rng.randrange(i * size // 6, (i + 1) * size // 6 - edit) for i in range(6))
    pos = 0
    for off, kind in zip(offsets, kinds):
        while pos < off:
            buf = src.read(min(8 << 20, off - pos))
            dst.write(buf)
            pos += len(buf)
        new = b""
        while len(new) < edit:
            new += g.rows(SERIES[rng.randrange(len(SERIES))], 10, "\t")
        new = new[:edit]
        if kind in ("replace", "insert"):
            dst.write(new)
        if kind in ("replace", "delete"):
            src.seek(edit, 1)
            pos += edit
    while True:
        buf = src.read(8 << 20)
        if not buf:
            break
        dst.write(buf)


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        generate(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        with open(sys.argv[2], "rb") as s, open(sys.argv[3], "wb", buffering=8 << 20) as d:
            modify(s, d, int(sys.argv[4]))
PYEOF

INPUT="$WORK/input.pgdump"
MODIFIED="$WORK/modified.pgdump"
log "generating ${SIZE_GIB} GiB input ($SIZE_BYTES bytes, seed $BENCH_SEED)"
gen_start=$SECONDS
python3 "$WORK/gen.py" gen "$SIZE_BYTES" "$BENCH_SEED" "$INPUT"
sha256sum "$INPUT" >"$WORK/input.sha256" &
sha_pid=$!
python3 "$WORK/gen.py" modify "$INPUT" "$MODIFIED" "$BENCH_SEED"
wait "$sha_pid"
INPUT_SHA="$(cut -d' ' -f1 "$WORK/input.sha256")"
MODIFIED_BYTES="$(stat -c %s "$MODIFIED")"
log "input generated in $((SECONDS - gen_start)) s: sha256 $INPUT_SHA; modified stream $MODIFIED_BYTES bytes"
log "input compresses to $(python3 -c '
import sys, zlib
with open(sys.argv[1], "rb") as f:
    f.seek(int(sys.argv[2]) // 2)
    b = f.read(32 << 20)
print("%.1f %%" % (100 * len(zlib.compress(b, 6)) / len(b)))' "$INPUT" "$SIZE_BYTES") with zlib -6 (32 MiB sample)"

# ---------------------------------------------------------------- measurement helpers
declare -A MBS RSS SECS CPU LOAD NOTE REPO_BYTES SNAP NEW_BYTES
FAILED=0

# run_timed TOOL STEP STDIN STDOUT CMD...: runs CMD under /usr/bin/time; sets SECS/RSS.
run_timed() {
    local tool=$1 step=$2 in=$3 out=$4 rc=0 e m u s
    shift 4
    local tf="$WORK/time.$tool.$step" errf="$WORK/stderr.$tool.$step"
    wait_idle
    LOAD[$tool,$step]="$(cut -d' ' -f1 /proc/loadavg)"
    /usr/bin/time -f '%e %M %U %S' -o "$tf" "$@" <"$in" >"$out" 2>"$errf" || rc=$?
    read -r e m u s < <(tail -n 1 "$tf")
    SECS[$tool,$step]=$e
    RSS[$tool,$step]=$m
    CPU[$tool,$step]="$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')"
    if ((rc != 0)); then
        log "FAILED ($tool, $step, exit $rc): $*"
        sed 's/^/    /' "$errf" | tail -n 20 >&2
    fi
    return "$rc"
}

wait_idle() {
    local limit=$((SECONDS + ${BENCH_WAIT_IDLE:-0})) load
    while ((SECONDS < limit)); do
        load="$(cut -d' ' -f1 /proc/loadavg)"
        awk -v l="$load" -v t="${BENCH_IDLE_LOAD:-1.0}" 'BEGIN { exit !(l < t) }' && return 0
        sleep 5
    done
}

mbps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s <= 0) s = 0.01; printf "%.1f", b / 1e6 / s }'; }
repo_bytes() { du -sb "$1" | cut -f1; }
repo_of() { echo "$WORK/repo-$1"; }

prepare() { # make the runs comparable: input hot in the page cache, no pending writeback
    cat "$1" >/dev/null
    sync
}

json_field() { # json_field FILE FIELD: FIELD of the last JSON object line in FILE
    python3 - "$1" "$2" <<'PYEOF'
import json, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
try:  # one (possibly pretty-printed) JSON document ...
    objs = [json.loads(text)]
except ValueError:  # ... or one JSON object per line (restic --json)
    objs = []
    for line in text.splitlines():
        try:
            objs.append(json.loads(line))
        except ValueError:
            pass
def get(obj, path):  # "a.b.c": nested keys (borg --json nests its figures)
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj
val = None
for obj in objs:
    v = get(obj, sys.argv[2])
    if v is not None:
        val = v
if val is None:
    sys.exit(1)
print(val)
PYEOF
}

do_init() { # do_init TOOL [REPO]: a fresh repository (default: the tool's main one)
    local tool=$1 repo=${2:-}
    [[ -n "$repo" ]] || repo="$(repo_of "$tool")"
    case $tool in
        usdcop-dr) "$USDCOP_BIN" --repo "$repo" init ;;
        restic) "$RESTIC_BIN" -r "$repo" init --repository-version 2 ;;
        borg) "$BORG_BIN" init --encryption repokey "$repo" ;;
    esac >"$WORK/init.$tool.log" 2>&1 || {
        log "FAILED ($tool, init):"
        sed 's/^/    /' "$WORK/init.$tool.log" | tail -n 20 >&2
        return 1
    }
}

# do_backup TOOL STEP INPUT
do_backup() {
    local tool=$1 step=$2 in=$3 repo out bytes before
    repo="$(repo_of "$tool")"
    out="$WORK/out.$tool.$step.json"
    bytes="$(stat -c %s "$in")"
    before="$(repo_bytes "$repo")"
    prepare "$in"
    case $tool in
        usdcop-dr)
            run_timed "$tool" "$step" "$in" "$out" "$USDCOP_BIN" --repo "$repo" --json backup stdin \
                --source "$SOURCE_NAME" --stdin-name "$STDIN_NAME" || return 1
            NEW_BYTES[$tool,$step]="$(json_field "$out" bytes_stored_new || echo '?')"
            local bin
            bin="$(json_field "$out" bytes_in || echo '?')"
            if [[ "$bin" != "$bytes" ]]; then
                log "warning: usdcop-dr reported bytes_in=$bin for a $bytes-byte stream ($step)"
                NOTE[$tool,$step]="bytes_in=$bin"
            fi
            ;;
        restic)
            run_timed "$tool" "$step" "$in" "$out" "$RESTIC_BIN" -r "$repo" backup --json \
                --stdin --stdin-filename "$STDIN_NAME" || return 1
            NEW_BYTES[$tool,$step]="$(json_field "$out" data_added || echo '?')"
            ;;
        borg)
            run_timed "$tool" "$step" "$in" "$out" "$BORG_BIN" create --json --compression zstd,3 \
                --stdin-name "$STDIN_NAME" "$repo::$step" - || return 1
            NEW_BYTES[$tool,$step]="$(json_field "$out" archive.stats.deduplicated_size || echo '?')"
            ;;
    esac
    if [[ $tool == borg ]]; then
        SNAP[$tool,$step]="$(json_field "$out" archive.name || echo '')"
    else
        SNAP[$tool,$step]="$(json_field "$out" snapshot_id || echo '')"
    fi
    if [[ -z "${SNAP[$tool,$step]}" ]]; then
        log "FAILED ($tool, $step): no snapshot_id in the JSON output"
        return 1
    fi
    MBS[$tool,$step]="$(mbps "$bytes" "${SECS[$tool,$step]}")"
    REPO_BYTES[$tool,$step]="$(repo_bytes "$repo")"
    REPO_BYTES[$tool,$step,growth]=$((REPO_BYTES[$tool,$step] - before))
}

do_restore() {
    local tool=$1 step=$2 snap=$3 repo out sha
    repo="$(repo_of "$tool")"
    out="$WORK/restored.$tool"
    sync
    case $tool in
        usdcop-dr)
            run_timed "$tool" "$step" /dev/null "$out" "$USDCOP_BIN" --repo "$repo" restore \
                --snapshot "$snap" --source "$SOURCE_NAME" --stdout || return 1
            ;;
        restic)
            run_timed "$tool" "$step" /dev/null "$out" "$RESTIC_BIN" -r "$repo" dump "$snap" \
                "$STDIN_NAME" || return 1
            ;;
        borg)
            run_timed "$tool" "$step" /dev/null "$out" "$BORG_BIN" extract --stdout "$repo::$snap" \
                "$STDIN_NAME" || return 1
            ;;
    esac
    MBS[$tool,$step]="$(mbps "$(stat -c %s "$out")" "${SECS[$tool,$step]}")"
    sha="$(sha256sum "$out" | cut -d' ' -f1)"
    rm -f "$out"
    if [[ "$sha" != "$INPUT_SHA" ]]; then
        log "FAILED ($tool, $step): restored stream sha256 $sha != input $INPUT_SHA"
        NOTE[$tool,$step]="MISMATCH"
        return 1
    fi
}

# ---------------------------------------------------------------- the run
# Every step runs the tools one after the other in the BENCH_TOOLS order, each with the
# input hot in the page cache and after a sync; caches are not dropped.
declare -A BROKEN
STEPS=(backup1 backup2 backup3 restore1)
STEP_TITLE=(
    [0]="1. first backup"
    [1]="2. second backup, same stream (dedup)"
    [2]="3. backup of modified stream (~1 % changed)"
    [3]="4. restore of first snapshot"
)

mark_failed() { # mark_failed TOOL STEP [fatal]
    FAILED=1
    NOTE[$1,$2]="${NOTE[$1,$2]:-FAIL}"
    if [[ "${3:-}" == fatal ]]; then BROKEN[$1]=1; fi
}

for tool in "${TOOLS[@]}"; do
    log "$tool: init"
    if ! do_init "$tool"; then
        mark_failed "$tool" init fatal
        for step in "${STEPS[@]}"; do NOTE[$tool,$step]="init FAIL"; done
    fi
done
for step in backup1 backup2 backup3; do
    in="$INPUT"
    [[ $step == backup3 ]] && in="$MODIFIED"
    for tool in "${TOOLS[@]}"; do
        if [[ -n "${BROKEN[$tool]:-}" ]]; then NOTE[$tool,$step]="${NOTE[$tool,$step]:-skipped}"; continue; fi
        log "$tool: $step"
        if do_backup "$tool" "$step" "$in"; then
            log "$tool: $step: ${SECS[$tool,$step]} s, ${MBS[$tool,$step]} MB/s, peak RSS ${RSS[$tool,$step]} KiB"
        else
            mark_failed "$tool" "$step" "$([[ $step == backup1 ]] && echo fatal)"
        fi
    done
done
rm -f "$MODIFIED"
for tool in "${TOOLS[@]}"; do
    step=restore1
    if [[ -n "${BROKEN[$tool]:-}" ]]; then NOTE[$tool,$step]="${NOTE[$tool,$step]:-skipped}"; continue; fi
    log "$tool: $step (snapshot ${SNAP[$tool,backup1]})"
    if do_restore "$tool" "$step" "${SNAP[$tool,backup1]}"; then
        log "$tool: $step: ${SECS[$tool,$step]} s, ${MBS[$tool,$step]} MB/s, peak RSS ${RSS[$tool,$step]} KiB, sha256 ok"
    else
        mark_failed "$tool" "$step"
    fi
done

# ---------------------------------------------------------------- peak RSS, 1 and 10 GiB
# A stream of GIB GiB: copies of the input, each with the first character of every line
# replaced by the copy number (so every chunk is new and the text stays as compressible),
# produced by sed into a pipe. Backup then restore to /dev/null, each tool into a fresh
# repository; peak RSS must not grow with the stream.
declare -A RSS_BIG
big_stream() { # big_stream GIB: the stream on stdout
    local bytes copies i
    bytes="$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 2**30))' "$1")"
    copies=$(((bytes + SIZE_BYTES - 1) / SIZE_BYTES))
    for ((i = 0; i < copies; i++)); do
        # head closes the pipe after the last byte it wants: stop there
        # (sed then dies of SIGPIPE, which is not a failure here).
        LC_ALL=C sed "s/^./$((i % 10))/" "$INPUT" || break
    done | head -c "$bytes"
}
read -r -a RSS_SIZES <<<"${BENCH_RSS_GIB-1 10}"
for gib in "${RSS_SIZES[@]}"; do
    for tool in "${TOOLS[@]}"; do
        [[ -n "${BROKEN[$tool]:-}" ]] && continue
        repo="$WORK/rss-$tool"
        rm -rf "$repo"
        do_init "$tool" "$repo" || { FAILED=1; continue; }
        log "$tool: peak RSS, ${gib} GiB stream"
        tf="$WORK/time.$tool.rss$gib"
        case $tool in
            usdcop-dr) big_stream "$gib" | /usr/bin/time -f '%e %M' -o "$tf" "$USDCOP_BIN" --repo "$repo" \
                backup stdin --source "$SOURCE_NAME" --stdin-name "$STDIN_NAME" ;;
            restic) big_stream "$gib" | /usr/bin/time -f '%e %M' -o "$tf" "$RESTIC_BIN" -r "$repo" \
                backup -q --stdin --stdin-filename "$STDIN_NAME" ;;
            borg) big_stream "$gib" | /usr/bin/time -f '%e %M' -o "$tf" "$BORG_BIN" create \
                --compression zstd,3 --stdin-name "$STDIN_NAME" "$repo::big" - ;;
        esac >/dev/null 2>"$WORK/stderr.$tool.rss$gib" || { log "FAILED ($tool, rss $gib GiB backup)"; FAILED=1; continue; }
        RSS_BIG[$tool,$gib,backup]="$(tail -n 1 "$tf" | cut -d' ' -f2)"
        case $tool in
            usdcop-dr) /usr/bin/time -f '%e %M' -o "$tf" "$USDCOP_BIN" --repo "$repo" restore \
                --source "$SOURCE_NAME" --stdout ;;
            restic) /usr/bin/time -f '%e %M' -o "$tf" "$RESTIC_BIN" -r "$repo" dump latest "$STDIN_NAME" ;;
            borg) /usr/bin/time -f '%e %M' -o "$tf" "$BORG_BIN" extract --stdout "$repo::big" "$STDIN_NAME" ;;
        esac 2>>"$WORK/stderr.$tool.rss$gib" | wc -c >"$WORK/rss-bytes" || { log "FAILED ($tool, rss $gib GiB restore)"; FAILED=1; }
        RSS_BIG[$tool,$gib,restore]="$(tail -n 1 "$tf" | cut -d' ' -f2)"
        log "$tool: ${gib} GiB: backup peak RSS ${RSS_BIG[$tool,$gib,backup]} KiB, restore ${RSS_BIG[$tool,$gib,restore]} KiB ($(cat "$WORK/rss-bytes") bytes back)"
        rm -rf "$repo"
    done
done

# ---------------------------------------------------------------- report
cell() { # cell ARRAY-VALUE-OR-EMPTY TOOL STEP
    if [[ -n "${NOTE[$2,$3]:-}" && "${NOTE[$2,$3]}" != bytes_in=* ]]; then echo "${NOTE[$2,$3]}"
    elif [[ -n "$1" ]]; then echo "$1"
    else echo "n/a"; fi
}
has() { local t; for t in "${TOOLS[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mib() { [[ "$1" =~ ^-?[0-9]+$ ]] && awk -v k="$1" -v d="$2" 'BEGIN { printf "%.1f", k / d }' || echo "n/a"; }
val() { # val TOOL STEP KIND
    local t=$1 s=$2
    has "$t" || { echo "n/a"; return; }
    case $3 in
        mbs) cell "${MBS[$t,$s]:-}" "$t" "$s" ;;
        rss) if [[ -n "${RSS[$t,$s]:-}" ]]; then mib "${RSS[$t,$s]}" 1024; else cell "" "$t" "$s"; fi ;;
        secs) cell "${SECS[$t,$s]:-}" "$t" "$s" ;;
        cpu) cell "${CPU[$t,$s]:-}" "$t" "$s" ;;
        load) cell "${LOAD[$t,$s]:-}" "$t" "$s" ;;
    esac
}

cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
ANCHORS=()
for t in "${TOOLS[@]}"; do [[ $t == usdcop-dr ]] || ANCHORS+=("$t"); done
# best TOOL-VALUES...: the best anchor figure of one row (KIND max or min)
best() {
    local kind=$1 b="" v
    shift
    for v in "$@"; do
        [[ "$v" =~ ^[0-9.]+$ ]] || continue
        if [[ -z "$b" ]] || awk -v v="$v" -v b="$b" -v k="$kind" 'BEGIN { exit !((k == "max" && v > b) || (k == "min" && v < b)) }'; then b=$v; fi
    done
    echo "${b:-n/a}"
}
row() { # row TITLE KIND(max|min) CELL-FN ARGS...: one table row, usdcop-dr, the anchors, the ratio to the best
    local title=$1 kind=$2 fn=$3 t u line vals=()
    shift 3
    line="| $title |"
    for t in "${TOOLS[@]}"; do
        u="$($fn "$t" "$@")"
        line+=" $u |"
        [[ $t == usdcop-dr ]] || vals+=("$u")
    done
    if has usdcop-dr && ((${#ANCHORS[@]})); then
        line+=" $(ratio "$($fn usdcop-dr "$@")" "$(best "$kind" "${vals[@]}")") |"
    fi
    echo "$line"
}
header() { # header FIRST-COLUMN RATIO-TITLE
    local line="| $1 |" sep="|---|" t
    for t in "${TOOLS[@]}"; do line+=" $t |"; sep+="---:|"; done
    if has usdcop-dr && ((${#ANCHORS[@]})); then line+=" $2 |"; sep+="---:|"; fi
    echo "$line"
    echo "$sep"
}
echo "## usdcop-dr vs ${ANCHORS[*]:-nothing}: ${SIZE_GIB} GiB stream ($SIZE_BYTES bytes)"
echo
echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)."
if has restic; then echo "restic: ${RESTIC_VERSION:-?}, repository version 2, default compression (auto)."; fi
if has borg; then echo "borg: ${BORG_VERSION:-?}, repokey encryption, --compression zstd,3, default chunker."; fi
if has usdcop-dr; then
    echo "usdcop-dr: $("$USDCOP_BIN" --version 2>/dev/null || echo "$USDCOP_BIN"), source $(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)."
fi
echo "Input: seed $BENCH_SEED, sha256 $INPUT_SHA; ~70 % pg_dump/CSV text of 5-minute USD/COP bars, ~30 % random bytes."
echo "Each step runs the tools in the order ${TOOLS[*]} with the input hot in the page cache after a sync"
echo "(a backup from RAM); caches are not dropped. MB/s = 10^6 bytes of stream per wall-clock second"
echo "(/usr/bin/time %e), peak RSS = max resident set (/usr/bin/time %M)."
echo
printf 'Load average (1 min) before each timed command (%s):' "${TOOLS[*]}"
for s in "${STEPS[@]}"; do
    printf ' %s' "$s"
    for t in "${TOOLS[@]}"; do printf ' %s' "$(val "$t" "$s" load)"; done
    printf ';'
done
echo
echo "(the machine has $(nproc) CPUs; a load above that means other work competed for the CPUs and the wall-clock figures are noisy)."
echo
mbs_of() { val "$1" "$2" mbs; }
rss_of() { val "$1" "$2" rss; }
secs_of() { val "$1" "$2" secs; }
cpu_of() { val "$1" "$2" cpu; }
repo_of_mib() { if [[ "${REPO_BYTES[$1,$2]:-x}" =~ ^[0-9]+$ ]]; then mib "${REPO_BYTES[$1,$2]}" 1048576; else echo n/a; fi; }
new_of_mib() { if [[ "${NEW_BYTES[$1,$2]:-x}" =~ ^[0-9]+$ ]]; then mib "${NEW_BYTES[$1,$2]}" 1048576; else echo n/a; fi; }
header "MB/s (higher is better)" "usdcop-dr / best anchor"
for i in "${!STEPS[@]}"; do row "${STEP_TITLE[$i]}" max mbs_of "${STEPS[$i]}"; done
echo
header "peak RSS MiB" "usdcop-dr / lowest anchor"
for i in "${!STEPS[@]}"; do row "${STEP_TITLE[$i]}" min rss_of "${STEPS[$i]}"; done
echo
header "seconds: wall-clock / CPU (user+sys)" "usdcop-dr / best anchor"
for i in "${!STEPS[@]}"; do
    row "${STEP_TITLE[$i]}: wall-clock s" min secs_of "${STEPS[$i]}"
    row "${STEP_TITLE[$i]}: CPU s" min cpu_of "${STEPS[$i]}"
done
echo
header "repository, MiB (lower is better)" "usdcop-dr / smallest anchor"
row "size after first backup" min repo_of_mib backup1
row "growth from second backup (same stream)" min repo_of_mib "backup2,growth"
row "growth from modified-stream backup" min repo_of_mib "backup3,growth"
row "new bytes reported, first backup" min new_of_mib backup1
row "new bytes reported, modified backup" min new_of_mib backup3
echo
echo "(usdcop-dr: bytes_stored_new; restic: data_added, which restic 0.14 counts before compression;"
echo "borg: the archive's deduplicated_size (compressed). Repository sizes are du -sb of the repository"
echo "directory; the tools' caches are not counted.)"
if ((${#RSS_SIZES[@]})); then
    echo
    header "peak RSS MiB by stream size (sed-made stream through a pipe)" "usdcop-dr / lowest anchor"
    rss_big_of() { if [[ "${RSS_BIG[$1,$2,$3]:-x}" =~ ^[0-9]+$ ]]; then mib "${RSS_BIG[$1,$2,$3]}" 1024; else echo n/a; fi; }
    for gib in "${RSS_SIZES[@]}"; do
        row "backup, ${gib} GiB" min rss_big_of "$gib" backup
        row "restore, ${gib} GiB" min rss_big_of "$gib" restore
    done
fi

if ((FAILED)); then
    log "one or more steps FAILED (see above)"
    exit 1
fi
log "all steps succeeded; restores matched the input"
