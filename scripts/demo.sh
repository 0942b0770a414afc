#!/usr/bin/env bash
# The main job on the embedded default: back up the trading system's
# config files and a database-dump-like stream into a local-directory
# repository, list, verify and restore them, and prove the restore is
# byte-identical. Everything happens under a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet
bin=$PWD/target/release/usdcop-dr
work=$(mktemp -d "${TMPDIR:-/tmp}/usdcop-dr-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

export USDCOP_DR_REPO="$work/repo"
printf 'demo passphrase %s\n' "$RANDOM$RANDOM" > "$work/passphrase"
chmod 600 "$work/passphrase"
export USDCOP_DR_PASSWORD_FILE="$work/passphrase"

# A stand-in for the trading system's configuration.
src="$work/trading"
mkdir -p "$src/nginx" "$src/prometheus"
cat > "$src/docker-compose.yml" <<'YML'
services:
  postgres: {image: timescale/timescaledb:latest-pg15}
  minio: {image: minio/minio}
YML
printf 'POSTGRES_DB=usdcop_trading\nMINIO_ROOT_USER=admin\n' > "$src/.env"
chmod 600 "$src/.env"
printf 'events {}\nhttp { server { listen 80; } }\n' > "$src/nginx/nginx.conf"
printf 'scrape_configs:\n  - job_name: usdcop\n' > "$src/prometheus/prometheus.yml"

echo "== init"
"$bin" init
echo "== backup files (config)"
"$bin" backup files --source config "$src"
echo "== backup stdin (a 64 MiB dump-like stream)"
python3 - > "$work/dump.sql" <<'PY'
import random, sys
r = random.Random(7)
w = sys.stdout.write
w("COPY public.usdcop_m5_ohlcv (time, open, high, low, close, volume) FROM stdin;\n")
t = 1_700_000_000
for _ in range(1_300_000):
    o = 4000 + r.random() * 500
    w(f"{t}\t{o:.2f}\t{o+r.random()*5:.2f}\t{o-r.random()*5:.2f}\t{o+r.random()-0.5:.2f}\t{r.randint(1,10**6)}\n")
    t += 300
PY
"$bin" backup stdin --source pg-usdcop --stdin-name usdcop_trading.sql < "$work/dump.sql"
echo "== second backup of the same data (deduplicated)"
"$bin" backup stdin --source pg-usdcop --stdin-name usdcop_trading.sql < "$work/dump.sql"
echo "== snapshots"
"$bin" snapshots
echo "== verify --read-data"
"$bin" verify --read-data
echo "== restore"
"$bin" restore --snapshot latest --source config --target "$work/restore"
"$bin" restore --snapshot latest --source pg-usdcop --stdout > "$work/restored.sql"
diff -r "$src" "$work/restore$src"
cmp "$work/dump.sql" "$work/restored.sql"
"$bin" stats
echo "OK: restored files and stream are byte-identical to the originals"
