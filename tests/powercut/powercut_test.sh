#!/usr/bin/env bash
# Power cuts (issue 27): the crash harness's writer (upserts, deletes, flushes, compactions
# at tiny thresholds) runs on nlpowerfs, a FUSE file system that keeps only what was made
# durable by fsync; each round kills the writer, cuts the power (every unsynced write and
# name operation undone), reopens the database and checks every acknowledged write and
# nearline's verify. Usage: powercut_test.sh NLPOWERFS CRASH_HARNESS ROUNDS [SEED].
# Skips (exit 0, a message) where FUSE cannot be mounted.
set -uo pipefail
FS=$1 HARNESS=$2 ROUNDS=$3 SEED=${4:-$(date +%s)}
if [ ! -e /dev/fuse ] || ! command -v fusermount3 >/dev/null; then
  echo "SKIP: no /dev/fuse or fusermount3"; exit 0
fi
W=$(mktemp -d /tmp/nl-powercut.XXXXXX)
mkdir -p "$W/backing" "$W/mnt"
cleanup() {
  fusermount3 -u "$W/mnt" 2>/dev/null || umount -l "$W/mnt" 2>/dev/null
  [ -n "${FSPID:-}" ] && kill "$FSPID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
"$FS" "$W/backing" "$W/mnt" 2>"$W/fs.log" &
FSPID=$!
for _ in $(seq 1 50); do
  mountpoint -q "$W/mnt" && break
  sleep 0.1
done
if ! mountpoint -q "$W/mnt"; then
  echo "SKIP: cannot mount FUSE here: $(tail -2 "$W/fs.log")"; exit 0
fi
"$HARNESS" "$W/mnt/db" --rounds "$ROUNDS" --seed "$SEED" --log "$W/ops.log" --powercut "$W/mnt/.powercut"
rc=$?
echo "nlpowerfs: $(grep -c 'power cut' "$W/fs.log") cuts; last: $(grep 'power cut' "$W/fs.log" | tail -1)"
[ $rc -ne 0 ] && tail -40 "$W/fs.log"
exit $rc
