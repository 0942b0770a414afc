#!/usr/bin/env bash
# Benchmark: restore throughput from an S3 store ~40 ms away (Garage on loopback behind a
# relay that holds every request DELAY_MS), usdcop-dr (one or more builds) against restic.
#
# Usage: scripts/bench-restore-latency.sh
#
# Environment:
#   BENCH_DIR        parent of the work directory (default /tmp/usdcop-bench-restore)
#   DELAY_MS         added to every request (default 40)
#   LARGE_FILES, LARGE_MIB   large files and their size (default 4 x 256 MiB)
#   SMALL_FILES      small files, 1-128 KiB each (default 10000, ~640 MB)
#   USDCOP_DR_BINS   space-separated LABEL=BINARY[,EXTRA-RESTORE-ARGS] to compare, e.g.
#                    "before=/tmp/usdcop-dr-main after=target/release/usdcop-dr
#                     after-c8=target/release/usdcop-dr,--read-concurrency,8"
#                    (default: after=target/release/usdcop-dr, built here; the first one
#                    makes the repository)
#   BENCH_DATA=DIR   keep the data set in DIR and reuse it when it is there (default: made
#                    in the work directory each run)
#   BENCH_RESTIC=0   leave restic out (default: restic's restore of the same data)
#   BENCH_LOCAL=0    leave out the baseline: the first build's restore of the same data from
#                    a repository in a local directory (issue 14: S3 at 40 ms within 20 %)
#   BENCH_SKIP_BUILD=1  do not run cargo build --release
#   LATENCY_PROXY_BIN   the relay (default: target/release/examples/latency_proxy, built here)
#   BENCH_KEEP=1     keep the work directory
#   USDCOP_DR_TOOLS  where Garage is installed (default /opt/usdcop-dr-tools; bin/garage)
#
# Each restore goes into a fresh directory through the relay; the backups go to Garage
# directly (they are not what is measured). Every restore is compared with the source
# (diff -r) and the run fails (exit 1) if one differs. A Markdown table goes to stdout,
# progress to stderr. See docs/BENCHMARKS.md, "Restore from S3 with 40 ms latency".
set -euo pipefail

log() { printf '[bench-restore] %s\n' "$*" >&2; }
die() { printf '[bench-restore] error: %s\n' "$*" >&2; exit 2; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/tmp/usdcop-bench-restore}"
DELAY_MS="${DELAY_MS:-40}"
LARGE_FILES="${LARGE_FILES:-4}"
LARGE_MIB="${LARGE_MIB:-256}"
SMALL_FILES="${SMALL_FILES:-10000}"
TOOLS_DIR="${USDCOP_DR_TOOLS:-/opt/usdcop-dr-tools}"
GARAGE="$TOOLS_DIR/bin/garage"
PASSPHRASE="bench-passphrase-not-secret"

command -v python3 >/dev/null || die "python3 missing"
[[ -x /usr/bin/time ]] || die "/usr/bin/time missing (apt-get install -y time)"
[[ -x "$GARAGE" ]] || die "Garage not found at $GARAGE (scripts/install-test-deps.sh installs it)"
if [[ "${BENCH_RESTIC:-1}" != 0 ]]; then
    command -v restic >/dev/null || die "restic missing (apt-get install -y restic)"
fi

if [[ -z "${USDCOP_DR_BINS:-}" ]]; then
    USDCOP_DR_BINS="after=$REPO_ROOT/target/release/usdcop-dr"
    if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
        log "building usdcop-dr (cargo build --release)"
        (cd "$REPO_ROOT" && cargo build --release >&2) || die "cargo build --release failed"
    fi
fi
PROXY_BIN="${LATENCY_PROXY_BIN:-$REPO_ROOT/target/release/examples/latency_proxy}"
if [[ -z "${LATENCY_PROXY_BIN:-}" && ( "${BENCH_SKIP_BUILD:-0}" != 1 || ! -x "$PROXY_BIN" ) ]]; then
    log "building the latency relay (cargo build --release --example latency_proxy)"
    (cd "$REPO_ROOT" && cargo build --release --example latency_proxy >&2) || die "building latency_proxy failed"
fi
# Cargo may put the example under CARGO_TARGET_DIR.
if [[ ! -x "$PROXY_BIN" && -n "${CARGO_TARGET_DIR:-}" ]]; then
    PROXY_BIN="$CARGO_TARGET_DIR/release/examples/latency_proxy"
fi
[[ -x "$PROXY_BIN" ]] || die "latency_proxy not found"

mkdir -p "$BENCH_DIR"
WORK="$(mktemp -d "$BENCH_DIR/run.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ "${BENCH_KEEP:-0}" != 1 ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- Garage
PORT="$(free_port)"; RPC_PORT="$(free_port)"
ACCESS_KEY="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SECRET_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mkdir -p "$WORK/garage"
cat >"$WORK/garage/garage.toml" <<EOF
metadata_dir = "$WORK/garage/meta"
data_dir = "$WORK/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$PORT"
root_domain = ".s3.garage.localhost"
EOF
GARAGE_DEFAULT_ACCESS_KEY="$ACCESS_KEY" GARAGE_DEFAULT_SECRET_KEY="$SECRET_KEY" RUST_LOG=garage=warn \
    "$GARAGE" -c "$WORK/garage/garage.toml" server --single-node --default-access-key \
    >"$WORK/garage/log" 2>&1 &
PIDS+=($!)
export AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY"
export AWS_REGION=garage AWS_DEFAULT_REGION=garage
DIRECT="http://127.0.0.1:$PORT"
create_bucket() { # signed CreateBucket (SigV4) with Python's standard library only
    python3 - "$DIRECT" "$1" <<'PY'
import datetime, hashlib, hmac, os, sys, urllib.request
ep, bucket = sys.argv[1], sys.argv[2]
ak, sk, region = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], "garage"
host = ep.split("://")[1]
t = datetime.datetime.now(datetime.timezone.utc)
amz, day = t.strftime("%Y%m%dT%H%M%SZ"), t.strftime("%Y%m%d")
ph = hashlib.sha256(b"").hexdigest()
canon = f"PUT\n/{bucket}\n\nhost:{host}\nx-amz-content-sha256:{ph}\nx-amz-date:{amz}\n\nhost;x-amz-content-sha256;x-amz-date\n{ph}"
scope = f"{day}/{region}/s3/aws4_request"
sts = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canon.encode()).hexdigest()}"
k = ("AWS4" + sk).encode()
for m in (day, region, "s3", "aws4_request"):
    k = hmac.new(k, m.encode(), hashlib.sha256).digest()
sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
req = urllib.request.Request(f"{ep}/{bucket}", method="PUT", headers={
    "x-amz-date": amz, "x-amz-content-sha256": ph,
    "Authorization": f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}"})
urllib.request.urlopen(req, timeout=10).read()
PY
}
for _ in $(seq 100); do create_bucket bench 2>/dev/null && break; sleep 0.2; done
create_bucket bench 2>/dev/null || true
log "Garage on $DIRECT"

"$PROXY_BIN" "$DIRECT" "$DELAY_MS" >"$WORK/proxy.endpoint" 2>"$WORK/proxy.log" &
PIDS+=($!)
for _ in $(seq 50); do [[ -s "$WORK/proxy.endpoint" ]] && break; sleep 0.1; done
RELAY="$(head -1 "$WORK/proxy.endpoint")"
[[ "$RELAY" == http://* ]] || die "the latency relay did not start: $(cat "$WORK/proxy.log")"
log "relay with ${DELAY_MS} ms per request on $RELAY"

# ---------------------------------------------------------------- data set
SRC="${BENCH_DATA:-$WORK/src}"
SHAPE="$LARGE_FILES x $LARGE_MIB MiB + $SMALL_FILES small files"
if [[ -f "$SRC/.complete" && "$(cat "$SRC/.complete")" == "$SHAPE" ]]; then
    log "reusing the data set in $SRC ($SHAPE)"
else
rm -rf "$SRC"
log "writing the data set: $SHAPE"
python3 - "$SRC" "$LARGE_FILES" "$LARGE_MIB" "$SMALL_FILES" <<'PY'
import os, random, sys
src, nl, mib, ns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(20261202)
os.makedirs(f"{src}/large", exist_ok=True)
for i in range(nl):
    # Half incompressible, half CSV-like text (compresses ~4:1), in 1 MiB pieces.
    with open(f"{src}/large/file{i}.bin", "wb") as f:
        for j in range(mib):
            if j % 2 == 0:
                f.write(rng.randbytes(1 << 20))
            else:
                rows = []
                size = 0
                while size < (1 << 20):
                    r = f"2026-12-02T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z,USDCOP,{4000 + rng.random() * 500:.2f},{rng.randrange(1, 10**6)}\n"
                    rows.append(r)
                    size += len(r)
                f.write("".join(rows).encode()[: 1 << 20])
for i in range(ns):
    d = f"{src}/small/d{i // 500:03d}"
    os.makedirs(d, exist_ok=True)
    n = rng.randrange(1 << 10, 128 << 10)
    with open(f"{d}/f{i:05d}", "wb") as f:
        f.write(rng.randbytes(n // 2) + (b"%d," % i) * (n // 2 // len(b"%d," % i)))
PY
printf '%s' "$SHAPE" >"$SRC/.complete"
fi
TOTAL_BYTES="$(du -sb --exclude=.complete "$SRC" | cut -f1)"
log "data set: $TOTAL_BYTES bytes"

printf '%s' "$PASSPHRASE" >"$WORK/pass"
export USDCOP_DR_PASSWORD_FILE="$WORK/pass" RESTIC_PASSWORD_FILE="$WORK/pass"

# ---------------------------------------------------------------- backups (direct)
read -r -a BINS <<<"$USDCOP_DR_BINS"
FIRST_BIN="${BINS[0]#*=}"; FIRST_BIN="${FIRST_BIN%%,*}"
log "usdcop-dr: init + backup (direct to Garage)"
AWS_ENDPOINT_URL="$DIRECT" "$FIRST_BIN" --quiet --repo s3://bench/usdcop init >&2
AWS_ENDPOINT_URL="$DIRECT" "$FIRST_BIN" --quiet --repo s3://bench/usdcop backup files --source bench "$SRC" >&2
if [[ "${BENCH_LOCAL:-1}" != 0 ]]; then
    log "usdcop-dr: init + backup into a local directory (the baseline)"
    "$FIRST_BIN" --quiet --repo "$WORK/local-repo" init >&2
    "$FIRST_BIN" --quiet --repo "$WORK/local-repo" backup files --source bench "$SRC" >&2
fi
if [[ "${BENCH_RESTIC:-1}" != 0 ]]; then
    log "restic: init + backup (direct to Garage)"
    export RESTIC_CACHE_DIR="$WORK/restic-cache-backup"
    restic -q -r "s3:$DIRECT/bench/restic" init --repository-version 2 >&2
    restic -q -r "s3:$DIRECT/bench/restic" backup "$SRC" >&2
fi

# ---------------------------------------------------------------- restores (through the relay)
RESULTS=()
timed() { # timed LABEL TARGET COMMAND... -> appends "label seconds rss_kib" to RESULTS
    local label="$1" target="$2"; shift 2
    sync
    log "$label: restoring"
    /usr/bin/time -f '%e %M' -o "$WORK/time.$label" "$@" >"$WORK/out.$label" 2>"$WORK/err.$label" \
        || { cat "$WORK/err.$label" >&2; die "$label: restore failed"; }
    diff -r -q "$SRC" "$target$SRC" >&2 || { log "$label: restored tree differs from the source"; exit 1; }
    read -r secs rss <"$WORK/time.$label"
    RESULTS+=("$label $secs $rss")
    log "$label: ${secs} s, peak RSS ${rss} KiB; identical"
    rm -rf "$target"
}
for b in "${BINS[@]}"; do
    label="${b%%=*}"; spec="${b#*=}"
    IFS=',' read -r -a parts <<<"$spec"
    bin="${parts[0]}"; extra=("${parts[@]:1}")
    timed "$label" "$WORK/restore.$label" env AWS_ENDPOINT_URL="$RELAY" \
        "$bin" --quiet --repo s3://bench/usdcop restore --snapshot latest \
        --target "$WORK/restore.$label" "${extra[@]}"
done
if [[ "${BENCH_LOCAL:-1}" != 0 ]]; then
    timed local "$WORK/restore.local" "$FIRST_BIN" --quiet --repo "$WORK/local-repo" restore \
        --snapshot latest --target "$WORK/restore.local"
fi
if [[ "${BENCH_RESTIC:-1}" != 0 ]]; then
    # A cold cache, as usdcop-dr has none: both read every index and tree from the store.
    export RESTIC_CACHE_DIR="$WORK/restic-cache-restore"
    timed restic "$WORK/restore.restic" restic -q -r "s3:$RELAY/bench/restic" restore latest \
        --target "$WORK/restore.restic"
fi

# ---------------------------------------------------------------- report
RESTIC_SECS=""
LOCAL_SECS=""
for r in "${RESULTS[@]}"; do
    read -r l s _ <<<"$r"
    [[ "$l" == restic ]] && RESTIC_SECS="$s"
    [[ "$l" == local ]] && LOCAL_SECS="$s"
done
echo "Restore of $TOTAL_BYTES bytes ($LARGE_FILES x $LARGE_MIB MiB + $SMALL_FILES files of 1-128 KiB) from Garage with ${DELAY_MS} ms added per request; nproc $(nproc)"
echo
echo "(local: the first build restoring the same data from a repository in a local directory, no relay;"
echo "time vs local = the run's seconds / local's: the goal is at most 1.20)"
echo
echo "| run | seconds | MB/s | vs restic | time vs local | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|"
for r in "${RESULTS[@]}"; do
    read -r l s rss <<<"$r"
    python3 - "$l" "$s" "$rss" "$TOTAL_BYTES" "$RESTIC_SECS" "$LOCAL_SECS" <<'PY'
import sys
l, s, rss, total, rs, ls = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
ratio = f"{float(rs) / s:.2f}x" if rs else "-"
vs_local = f"{s / float(ls):.2f}" if ls and l not in ("restic", "local") else "-"
print(f"| {l} | {s:.1f} | {total / s / 1e6:.0f} | {ratio} | {vs_local} | {rss / 1024:.0f} |")
PY
done
