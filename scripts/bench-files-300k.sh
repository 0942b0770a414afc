#!/bin/bash
# 300,000 files (1.2 GB, 100 B–8 KB each, 3,000 directories): first backup,
# no-change backup, `snapshots` and a restore into an empty directory — peak
# RSS, time and repository growth — for usdcop-dr, restic and (when
# installed) borg on the same tree (issues 9 and 14). usdcop-dr restores
# three times: `--sync end` (the default: one syncfs at the end), `--sync
# none` and `--sync file` (an fsync per file); restic and borg do not sync
# restored files at all.
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
# Each restore below goes into a directory of its own, removed only at the
# end of the run, and the restores wait until 5 minutes have passed since
# the last removal: ext4 without a journal skips inodes freed in the last
# 5 minutes when it allocates (recently_deleted), which made a restore right
# after an `rm -rf` of 300,000 files up to twice as slow, whichever tool
# ran; and removing a million files just before a backup slowed the backup.
# (Outputs of a run that was stopped early: removed now.)
if ls -d ${WORK:-/tmp/bench-300k}/out-* >/dev/null 2>&1; then
  rm -rf ${WORK:-/tmp/bench-300k}/out-*; sync; date +%s > ${WORK:-/tmp/bench-300k}/removed-at
fi
DELETED=$(cat ${WORK:-/tmp/bench-300k}/removed-at 2>/dev/null || echo 0)
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

drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
aged() {
  local left=$(( DELETED + 310 - $(date +%s) ))
  if [ $left -gt 0 ]; then echo "waiting ${left} s for the freed inodes to age" >&2; sleep $left; fi
}
aged
for mode in end none file; do
  drop; echo "usdcop-dr restore --sync $mode:"; t $B --repo $R restore --target ${WORK}/out-$mode --sync $mode
done
drop; echo "restic restore:"; t restic --repo $RR restore latest --target ${WORK}/out-restic
outs="out-end out-none out-file out-restic"
if command -v borg >/dev/null; then
  export BORG_PASSPHRASE=pw BORG_REPO=${WORK}/borg
  rm -rf $BORG_REPO; borg init -e repokey $BORG_REPO >/dev/null
  echo "borg create:"; t borg create ::a $T
  echo "borg no-change create:"; t borg create ::b $T
  mkdir -p ${WORK}/out-borg; drop
  echo "borg extract:"; (cd ${WORK}/out-borg && t borg extract ::a)
  outs="$outs out-borg"
fi
# Every restore holds the tree.
status=0
for d in $outs; do
  if diff -r $T ${WORK}/$d$T >/dev/null; then echo "$d: identical"; else echo "$d: DIFFERS"; status=1; fi
done
rm -rf ${WORK}/out-*; sync; date +%s > ${WORK}/removed-at
exit $status
