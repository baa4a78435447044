#!/usr/bin/env bash
# Integration test of the memory-bounded, resumable bulk import (issue 5), through the
# `nearline` command:
#  - the partitioned build killed (SIGKILL, by the NEARLINE_KILL_AT fault hook) after
#    the PQ phase, in the middle of the partition pass, after a partition's graph and in the
#    middle of the merge, then rerun: the resumed collection is byte-identical to an
#    uninterrupted one-thread build, passes verify, and leaves no checkpoints behind;
#  - a rerun with other parameters starts over instead of mixing checkpoints;
#  - peak RSS stays under --memory-budget;
#  - bad inputs (truncated file, a row of the wrong dimension, NaN, metadata with the wrong
#    number of lines or a malformed line) fail with the row or line named and leave neither
#    a collection nor checkpoints;
#  - fashion-mnist-60k with a budget forcing at least 4 partitions: recall@10 within 0.01
#    of the in-memory build (skipped without ../shared).
# Usage: cli_import_test.sh NEARLINE_BINARY DATA_DIR
set -u
NL=${1:?nearline binary}
DATA=${NEARLINE_DATA_DIR:-${2:-../shared/data}}
W=$(mktemp -d -p "${NL_TEST_TMP:-$PWD}" importtest.XXXXXX)
trap 'rm -rf "$W"' EXIT
. "$(dirname "$0")/lib.sh"

# ---- resume after SIGKILL at every phase -----------------------------------------------
"$NL" gen --n 100000 --dim 64 --type u8 --clusters 50 --seed 5 --out "$W/g.u8bin" --queries 200 \
  --queries-out "$W/gq.u8bin" --groundtruth-out "$W/ggt.ivecs" --gt-k 10 >/dev/null || bad "gen"
BUDGET=136M
ARGS=(--input "$W/g.u8bin" --R 16 --L 32 --single-pass --threads 1 --memory-budget $BUDGET --quiet)

"$NL" import --db "$W/ref" --collection g "${ARGS[@]}" >"$W/ref.json" 2>"$W/err"
parts=$(field "$W/ref.json" partitions)
if [ -n "$parts" ] && [ "$parts" -ge 4 ]; then ok "budget $BUDGET splits 100K rows into $parts partitions"
else bad "partitioned import: $(cat "$W/ref.json" "$W/err")"; fi
rss=$(field "$W/ref.json" peak_rss_bytes)
if [ -n "$rss" ] && le "$rss" $((136 * 1024 * 1024)); then ok "peak RSS $((rss >> 20)) MiB within the $BUDGET budget"
else bad "peak RSS $rss above $BUDGET"; fi

DB="$W/res"
for at in pq partition build:1 merge; do
  NEARLINE_KILL_AT=$at "$NL" import --db "$DB" --collection g "${ARGS[@]}" >/dev/null 2>"$W/err"
  rc=$?
  if [ $rc -eq 137 ] && [ ! -e "$DB/g" ] && [ -d "$DB/.import-g" ]; then ok "killed at $at: no collection, checkpoints kept"
  else bad "kill at $at: exit $rc, $(ls -A "$DB" 2>&1 | tr '\n' ' ') $(head -c 300 "$W/err")"; fi
done
"$NL" import --db "$DB" --collection g "${ARGS[@]}" >"$W/res.json" 2>"$W/err"
resumed=$(field "$W/res.json" resumed_checkpoints)
if [ -n "$resumed" ] && [ "$resumed" -ge 3 ]; then ok "rerun resumed from $resumed checkpoints"
else bad "rerun did not resume: $(cat "$W/res.json" "$W/err")"; fi
if cmp -s "$W/ref/g/0/seg-000001.nls" "$DB/g/0/seg-000001.nls"; then ok "resumed segment is byte-identical to the uninterrupted one"
else bad "resumed segment differs"; fi
[ ! -e "$DB/.import-g" ] && ok "checkpoints removed after publishing" || bad "checkpoints left: $(ls -A "$DB")"
"$NL" verify --db "$DB" >"$W/v" 2>&1 && ok "resumed collection passes verify" || bad "verify: $(cat "$W/v")"
"$NL" search --db "$DB" --collection g --queries "$W/gq.u8bin" --groundtruth "$W/ggt.ivecs" --k 10 --L 64 \
  --bound 0 >"$W/s1" 2>&1
"$NL" search --db "$W/ref" --collection g --queries "$W/gq.u8bin" --groundtruth "$W/ggt.ivecs" --k 10 --L 64 \
  --bound 0 >"$W/s2" 2>&1
# The segments are byte-identical (checked above); two searches of one index may still
# differ by a result: reads complete in the device's order. Which candidates the error
# bound skips depends most on that (measured: 0.9910 against 0.9860 with it), so these
# searches run without it, and the recall must agree within 0.002.
r1=$(field "$W/s1" recall_at_k); r2=$(field "$W/s2" recall_at_k)
if [ -n "$r1" ] && [ -n "$r2" ] && ge "$r1" 0.9 && ge "$r1" "$(awk -v r="$r2" 'BEGIN { print r - 0.002 }')" \
   && le "$r1" "$(awk -v r="$r2" 'BEGIN { print r + 0.002 }')"; then ok "resumed recall@10 $r1, uninterrupted $r2"
else bad "recall resumed $r1 vs uninterrupted $r2"; fi

# Checkpoints of another command are not reused.
NEARLINE_KILL_AT=build:0 "$NL" import --db "$W/other" --collection g "${ARGS[@]}" --seed 1 >/dev/null 2>&1
"$NL" import --db "$W/other" --collection g "${ARGS[@]}" --seed 2 >"$W/o.json" 2>"$W/err"
if [ "$(field "$W/o.json" resumed_checkpoints)" = 0 ]; then ok "a rerun with another seed starts over"
else bad "other seed: $(cat "$W/o.json" "$W/err")"; fi

# ---- bad inputs: row or line named, nothing left behind -----------------------------------
expect_clean_error() {
  local desc=$1 pat=$2 db=$3; shift 3
  "$NL" import --db "$db" --collection bad --memory-budget 256M "$@" --quiet >"$W/out" 2>"$W/err"; local rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -qi -- "$pat" "$W/err" && [ ! -e "$db/bad" ] && [ ! -e "$db/.import-bad" ]; then
    ok "$desc"
  else bad "$desc (exit $rc): $(head -c 300 "$W/err") $(ls -A "$db" 2>/dev/null | tr '\n' ' ')"; fi
}
head -c 500000 "$W/g.u8bin" >"$W/trunc.u8bin"
expect_clean_error "truncated input" "truncated\|promises" "$W/bad" --input "$W/trunc.u8bin" --partitioned
"$NL" gen --n 5000 --dim 32 --type f32 --clusters 8 --seed 2 --out "$W/s.fvecs" >/dev/null
cp "$W/s.fvecs" "$W/wrongdim.fvecs"
printf '\x05\x00\x00\x00' | dd of="$W/wrongdim.fvecs" bs=1 seek=$((132 * 4000)) conv=notrunc status=none
expect_clean_error "a row of the wrong dimension (row named)" "row 4000" "$W/bad" --input "$W/wrongdim.fvecs" --partitioned
cp "$W/s.fvecs" "$W/nan.fvecs"
printf '\x00\x00\xc0\x7f' | dd of="$W/nan.fvecs" bs=1 seek=$((132 * 3210 + 4 + 8)) conv=notrunc status=none
expect_clean_error "NaN (row named)" "row 3210" "$W/bad" --input "$W/nan.fvecs" --partitioned
for i in $(seq 1 4999); do echo "{\"i\":$i}"; done >"$W/short.jsonl"
expect_clean_error "metadata with too few lines" "4999 lines" "$W/bad" --input "$W/s.fvecs" --metadata "$W/short.jsonl" --partitioned
{ for i in $(seq 1 16); do echo "{\"i\":$i}"; done; echo '{"i":17,'; for i in $(seq 18 5000); do echo "{\"i\":$i}"; done; } >"$W/broken.jsonl"
expect_clean_error "malformed metadata line (line named)" "line 17" "$W/bad" --input "$W/s.fvecs" --metadata "$W/broken.jsonl" --partitioned
seq 1 4999 >"$W/ids.txt"
expect_clean_error "ids file with too few lines" "4999 lines" "$W/bad" --input "$W/s.fvecs" --ids "$W/ids.txt" --partitioned
expect_clean_error "budget too small" "too small" "$W/bad" --input "$W/g.u8bin" --memory-budget 100M

# ---- appending to an existing collection --------------------------------------------------
"$NL" gen --n 4000 --dim 32 --type f32 --clusters 10 --seed 11 --out "$W/a1.fvecs" >/dev/null
"$NL" gen --n 30000 --dim 32 --type f32 --clusters 10 --seed 12 --out "$W/a2.fvecs" --queries 100 --queries-out "$W/aq.fvecs" >/dev/null
cat "$W/a1.fvecs" "$W/a2.fvecs" >"$W/a12.fvecs"
"$NL" groundtruth --base "$W/a12.fvecs" --queries "$W/aq.fvecs" --out "$W/agt.ivecs" --k 10 >/dev/null
points_of() { "$NL" inspect --db "$1" --collection "$2" | sed -n 's/.*"points":\([0-9]*\).*/\1/p'; }
AD="$W/app"
"$NL" import --db "$AD" --collection c --input "$W/a1.fvecs" --R 32 --L 64 --quiet >/dev/null 2>"$W/err" || bad "import before append: $(cat "$W/err")"
expect_clean_error_append() {
  local desc=$1 pat=$2; shift 2
  local before; before=$(ls "$AD/c/0" | tr '\n' ' ')
  "$NL" import --db "$AD" --collection c --append --quiet "$@" >"$W/out" 2>"$W/err"; local rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -qi -- "$pat" "$W/err" && [ "$(ls "$AD/c/0" | tr '\n' ' ')" = "$before" ] \
     && [ "$(points_of "$AD" c)" = 4000 ]; then ok "$desc"
  else bad "$desc (exit $rc): $(head -c 300 "$W/err")"; fi
}
seq 3990 4009 >"$W/coll.txt"
head -c $((20 * 132)) "$W/a2.fvecs" >"$W/a20.fvecs"
expect_clean_error_append "append with colliding ids names them" "10 of the 20 ids exist.*id 3990.*line 1" --input "$W/a20.fvecs" --ids "$W/coll.txt"
expect_clean_error_append "append of another dimension" "32-dimensional" --input "$W/g.u8bin"
expect_error_nc() { "$NL" import --db "$AD" --collection nope --input "$W/a2.fvecs" --append --quiet >/dev/null 2>"$W/err"; }
if ! expect_error_nc && grep -q "does not exist" "$W/err"; then ok "append to a missing collection"; else bad "append to missing: $(cat "$W/err")"; fi
NEARLINE_KILL_AT=commit "$NL" import --db "$AD" --collection c --input "$W/a2.fvecs" --append --quiet >/dev/null 2>&1
rc=$?
"$NL" verify --db "$AD" >"$W/v" 2>&1; vrc=$?
if [ $rc -eq 137 ] && [ $vrc -eq 0 ] && [ "$(points_of "$AD" c)" = 4000 ]; then ok "append killed while writing the id map is rolled back at open"
else bad "killed append: exit $rc, verify $vrc $(cat "$W/v"), points $(points_of "$AD" c)"; fi
"$NL" import --db "$AD" --collection c --input "$W/a2.fvecs" --append --quiet >"$W/ap.json" 2>"$W/err"
if [ "$(field "$W/ap.json" first_id)" = 4000 ] && [ "$(points_of "$AD" c)" = 34000 ]; then ok "append adds a segment; ids continue at 4000"
else bad "append: $(cat "$W/ap.json" "$W/err")"; fi
"$NL" verify --db "$AD" >"$W/v" 2>&1 && ok "appended collection passes verify" || bad "verify after append: $(cat "$W/v")"
"$NL" search --db "$AD" --collection c --queries "$W/aq.fvecs" --groundtruth "$W/agt.ivecs" --k 10 --L 64 >"$W/s" 2>&1
r=$(field "$W/s" recall_at_k)
if [ -n "$r" ] && ge "$r" 0.95; then ok "search across the imported and appended segments (recall@10 $r)"; else bad "recall after append: $r $(cat "$W/s")"; fi

# ---- fashion-mnist-60k: partitioned recall against the in-memory build --------------------
F="$DATA/fashion-mnist-60k"
if [ -f "$F/base.u8bin" ]; then
  "$NL" import --db "$W/fm" --collection mem --input "$F/base.u8bin" --threads 2 --quiet >"$W/fm1" 2>&1
  "$NL" import --db "$W/fm" --collection part --input "$F/base.u8bin" --threads 2 --memory-budget 180M --quiet >"$W/fm2" 2>&1
  parts=$(field "$W/fm2" partitions); rss=$(field "$W/fm2" peak_rss_bytes)
  if [ -n "$parts" ] && [ "$parts" -ge 4 ] && le "$rss" $((180 * 1024 * 1024)); then
    ok "fashion-mnist under 180M: $parts partitions, peak RSS $((rss >> 20)) MiB"
  else bad "fashion-mnist partitioned import: $(cat "$W/fm2")"; fi
  for L in 20 40; do
    "$NL" search --db "$W/fm" --collection mem --queries "$F/query.u8bin" --groundtruth "$F/groundtruth.ivecs" --k 10 --L $L >"$W/a" 2>&1
    "$NL" search --db "$W/fm" --collection part --queries "$F/query.u8bin" --groundtruth "$F/groundtruth.ivecs" --k 10 --L $L >"$W/b" 2>&1
    ra=$(field "$W/a" recall_at_k); rb=$(field "$W/b" recall_at_k)
    if [ -n "$ra" ] && [ -n "$rb" ] && ge "$rb" "$(awk -v a="$ra" 'BEGIN { print a - 0.01 }')"; then
      ok "fashion-mnist L=$L: partitioned recall@10 $rb vs in-memory $ra"
    else bad "fashion-mnist L=$L: partitioned $rb vs in-memory $ra"; fi
  done
  "$NL" verify --db "$W/fm" --collection part >"$W/v" 2>&1 && ok "partitioned fashion-mnist passes verify" || bad "verify: $(cat "$W/v")"
  # A budget too small to hold every vector for the exact merge: the capped-union merge.
  "$NL" import --db "$W/fm" --collection union --input "$F/base.u8bin" --threads 2 --memory-budget 146M --quiet >"$W/fm3" 2>&1
  "$NL" search --db "$W/fm" --collection union --queries "$F/query.u8bin" --groundtruth "$F/groundtruth.ivecs" --k 10 --L 40 >"$W/c" 2>&1
  rc3=$(field "$W/c" recall_at_k)
  if [ "$(field "$W/fm3" exact_merge)" = false ] && [ -n "$rc3" ] && ge "$rc3" 0.95 && "$NL" verify --db "$W/fm" --collection union >/dev/null 2>&1; then
    ok "fashion-mnist under 146M: capped-union merge over $(field "$W/fm3" partitions) partitions, recall@10 $rc3 at L=40, verify passes"
  else bad "capped-union merge: $(cat "$W/fm3") recall $rc3"; fi
else
  skp "fashion-mnist-60k partitioned recall: $F not found (../shared/data is absent on this machine)"
fi

echo "# $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
