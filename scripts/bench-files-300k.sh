#!/bin/bash
# 300,000 files (1.2 GB, 100 B–8 KB each, 3,000 directories): first backup,
# no-change backup and `snapshots` — peak RSS, time and repository growth —
# for usdcop-dr and restic on the same tree (issue 9 "Must show").
# Usage: USDCOP_DR_BIN=target/debug/usdcop-dr WORK=/tmp/bench-300k bash scripts/bench-files-300k.sh
set -e
B=${USDCOP_DR_BIN:-target/release/usdcop-dr}
T=${WORK:-/tmp/bench-300k}/tree; R=${WORK:-/tmp/bench-300k}/repo; RR=${WORK:-/tmp/bench-300k}/restic
export USDCOP_DR_PASSWORD=pw RESTIC_PASSWORD=pw USDCOP_DR_CACHE_DIR=${WORK:-/tmp/bench-300k}/cache
mkdir -p "$(dirname $T)"; export WORK=${WORK:-/tmp/bench-300k}
if [ ! -d $T ]; then
python3 - <<'PY'
import os, random
random.seed(1)
root=os.environ.get('WORK', '/tmp/bench-300k') + '/tree'
n=0
for a in range(300):
    for b in range(10):
        d=f'{root}/d{a:03}/e{b}'
        os.makedirs(d, exist_ok=True)
        for c in range(100):
            with open(f'{d}/f{c:03}.dat','wb') as f:
                f.write(os.urandom(random.randint(100, 8000)))
            n+=1
print(n)
PY
fi
rm -rf $R $RR ${WORK:-/tmp/bench-300k}/cache
$B init --repo $R >/dev/null 2>&1 || $B --repo $R init
t() { /usr/bin/time -f "%e s, %M KB maxrss" "$@" > /dev/null; }
echo "usdcop-dr backup:"; t $B --repo $R backup files $T --source tree
du -sb $R | cut -f1 > ${WORK:-/tmp/bench-300k}/size1
echo "usdcop-dr no-change backup:"; t $B --repo $R backup files $T --source tree
du -sb $R | cut -f1 > ${WORK:-/tmp/bench-300k}/size2
echo "repo growth on no-change: $(( $(cat ${WORK:-/tmp/bench-300k}/size2) - $(cat ${WORK:-/tmp/bench-300k}/size1) )) bytes; repo $(cat ${WORK:-/tmp/bench-300k}/size2)"
echo "usdcop-dr snapshots:"; t $B --repo $R snapshots
restic init --repo $RR >/dev/null
echo "restic backup:"; t restic --repo $RR backup $T -q
echo "restic no-change backup:"; t restic --repo $RR backup $T -q
echo "restic snapshots:"; t restic --repo $RR snapshots
echo "restic repo: $(du -sb $RR | cut -f1)"
