#!/usr/bin/env bash
# cli_codes_test.sh NEARLINE [DATA_DIR] — the code a collection navigates by (issue 17):
# on generated hard data (isotropic clusters, `nearline gen --hard`), where 8-bit PQ
# stops ranking neighbours, the import's default choice reaches recall@10 >= 0.95 from
# disk at L <= 50 within the default memory; inspect reports the choice; a memory too
# small to reach the target is warned about; --queries chooses by given queries; walks
# that start from the seed table read less; the real sets of ../shared keep their
# recall with the default choice (skipped without it).
set -u
NL=$1
DATA=${2:-}
. "$(dirname "$0")/lib.sh"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
DB=$W/db
recall_of() { tail -1 "$1" | sed -n 's/.*"recall_at_k":\([0-9.]*\).*/\1/p'; }
ios_of() { tail -1 "$1" | sed -n 's/.*"mean_ios":\([0-9.]*\).*/\1/p'; }

# 60K x 128-d u8 in 120 isotropic clusters (500 a cluster, as the 1M set of the issue).
"$NL" gen --hard --n 60000 --dim 128 --out "$W/h.bvecs" --queries 500 --queries-out "$W/hq.bvecs" \
  --groundtruth-out "$W/hgt.ivecs" --seed 17 >/dev/null || bad "gen --hard"
"$NL" import --db "$DB" --collection hard --input "$W/h.bvecs" >"$W/imp" 2>"$W/err" || bad "import hard: $(cat "$W/err")"
code=$(sed -n 's/.*"code":"\([^"]*\)","segment".*/\1/p' "$W/imp")
bytes=$(sed -n 's/.*"code_choice":{.*"bytes_per_point":\([0-9]*\),"candidates".*/\1/p' "$W/imp")
if [ -n "$code" ] && [ "${code%%:*}" = rabitq ] && [ -n "$bytes" ] && [ "$bytes" -le 40 ]; then
  ok "import chose $code ($bytes bytes a point, default PQ 32 + 8 allowed)"
else bad "import's code choice: '$code' '$bytes' $(cat "$W/imp")"; fi
"$NL" inspect --db "$DB" >"$W/insp"
grep -q "\"code\":\"$code\"" "$W/insp" && grep -q '"code_choice":{' "$W/insp" && grep -q '"estimated_recall_at_10"' "$W/insp" \
  && ok "inspect reports the code and the estimate" || bad "inspect: $(cat "$W/insp")"
"$NL" search --db "$DB" --collection hard --queries "$W/hq.bvecs" --groundtruth "$W/hgt.ivecs" --k 10 --L 30,50 \
  --threads 2 >"$W/s" 2>"$W/err"
r30=$(sed -n 1p "$W/s" | sed -n 's/.*"recall_at_k":\([0-9.]*\).*/\1/p'); r50=$(recall_of "$W/s")
if [ -n "$r50" ] && ge "$r50" 0.95 && grep -q '"direct_io":true' "$W/s"; then
  ok "hard data from disk, default code: recall@10 $r30 at L=30, $r50 at L=50 ($(ios_of "$W/s") reads)"
else bad "hard data, default code: recall '$r30' '$r50' $(cat "$W/err")"; fi
# The block layout (default for 128-d u8: ten records a sector): the import says so, and
# the search that expands a sector's other records reads less for no less recall than the
# same graph and codes read one record at a time (--sector off).
ov=$(sed -n 's/.*"layout":{"blocks":true,"records_per_sector":10,"overlap":\([0-9.]*\).*/\1/p' "$W/imp")
if [ -n "$ov" ] && ge "$ov" 0.3; then ok "import laid the records out in blocks (overlap $ov)"
else bad "layout: $(grep -o '"layout":{[^}]*}' "$W/imp")"; fi
grep -q '"block_layout_points":60000' "$W/insp" && ok "inspect counts the points in block layout" \
  || bad "inspect block_layout_points: $(cat "$W/insp")"
"$NL" search --db "$DB" --collection hard --queries "$W/hq.bvecs" --groundtruth "$W/hgt.ivecs" --k 10 --L 30 \
  --threads 2 --sector off >"$W/soff" 2>"$W/err"
"$NL" search --db "$DB" --collection hard --queries "$W/hq.bvecs" --groundtruth "$W/hgt.ivecs" --k 10 --L 30 \
  --threads 2 >"$W/son" 2>>"$W/err"
ro=$(recall_of "$W/soff"); rn=$(recall_of "$W/son"); io_off=$(ios_of "$W/soff"); io_on=$(ios_of "$W/son")
if [ -n "$rn" ] && [ -n "$ro" ] && ge "$rn" "$(awk -v a="$ro" 'BEGIN { print a - 0.01 }')" \
   && le "$io_on" "$(awk -v a="$io_off" 'BEGIN { print a * 0.85 }')"; then
  ok "whole sectors at L=30: recall $ro -> $rn, reads $io_off -> $io_on"
else bad "whole sectors: recall '$ro' -> '$rn', reads '$io_off' -> '$io_on' $(cat "$W/err")"; fi
grep -q '"seed_members":[1-9]' "$W/insp" && ok "inspect counts the seed table's members" \
  || bad "inspect seed_members: $(cat "$W/insp")"
# The failure the issue reports, for comparison: 32-byte PQ on the same data, as before
# (row order), against the default code read one record at a time.
"$NL" import --db "$DB" --collection hardpq --input "$W/h.bvecs" --code pq:32 --layout rows --quiet >/dev/null \
  2>"$W/err" || bad "import pq:32: $(cat "$W/err")"
"$NL" search --db "$DB" --collection hardpq --queries "$W/hq.bvecs" --groundtruth "$W/hgt.ivecs" --k 10 --L 50 \
  --threads 2 >"$W/s" 2>"$W/err"
"$NL" search --db "$DB" --collection hard --queries "$W/hq.bvecs" --groundtruth "$W/hgt.ivecs" --k 10 --L 50 \
  --threads 2 --sector off >"$W/soff" 2>>"$W/err"
p50=$(recall_of "$W/s"); d50=$(recall_of "$W/soff")
if [ -n "$p50" ] && [ -n "$d50" ] && ge "$d50" "$(awk -v p="$p50" 'BEGIN { print p + 0.1 }')"; then
  ok "32-byte PQ on the same data: $p50 at L=50, the default code $d50 on the same reads (ahead by >= 0.1)"
else bad "pq:32 comparison: pq '$p50' default '$d50' $(cat "$W/err")"; fi
# The bound: skipping reads changes few answers and saves reads at a large L.
"$NL" search --db "$DB" --collection hard --queries "$W/hq.bvecs" --groundtruth "$W/hgt.ivecs" --k 10 --L 100 \
  --threads 2 --bound 0 >"$W/s0" 2>/dev/null
"$NL" search --db "$DB" --collection hard --queries "$W/hq.bvecs" --groundtruth "$W/hgt.ivecs" --k 10 --L 100 \
  --threads 2 >"$W/s1" 2>/dev/null
a=$(recall_of "$W/s0"); b=$(recall_of "$W/s1"); ia=$(ios_of "$W/s0"); ib=$(ios_of "$W/s1")
if [ -n "$b" ] && ge "$b" "$(awk -v a="$a" 'BEGIN { print a - 0.01 }')" && le "$ib" "$ia"; then
  ok "bound at L=100: recall $a -> $b, reads $ia -> $ib"
else bad "bound: recall '$a' -> '$b', reads '$ia' -> '$ib'"; fi
# Too little memory: the import goes ahead with the best that fits, and says so. (Chosen by
# the given queries rather than rows of the data: --queries.)
"$NL" import --db "$DB" --collection tight --input "$W/h.bvecs" --search-memory 24/point --queries "$W/hq.bvecs" \
  --quiet >"$W/imp" 2>"$W/err"
if [ $? -eq 0 ] && grep -q "warning: no code within 24 bytes a point reaches recall@10 0.95" "$W/err" \
   && grep -q "would reach" "$W/err" && grep -q '"meets_target":false' "$W/imp"; then
  ok "a memory below the target is warned about: $(sed 's/nearline import: warning: //' "$W/err" | head -c 200)"
else bad "tight memory: $(cat "$W/err") $(cat "$W/imp")"; fi
grep -q '"sample_queries":200,' "$W/imp" && grep -q '"queries_from":"file"' "$W/imp" \
  && ok "import --queries: the code was chosen by 200 of the given queries" \
  || bad "import --queries: $(grep -o '"code_choice":.*' "$W/imp" | head -c 300)"
"$NL" gen --n 100 --dim 64 --out "$W/q64.bvecs" >/dev/null || bad "gen 64-d"
"$NL" import --db "$DB" --collection badq --input "$W/h.bvecs" --queries "$W/q64.bvecs" --quiet >/dev/null \
  2>"$W/err" && bad "64-d queries for 128-d data accepted" \
  || { grep -q "dimension 64" "$W/err" && ok "import --queries of another dimension refused" || bad "badq: $(cat "$W/err")"; }
"$NL" import --db "$DB" --collection badq --input "$W/h.bvecs" --queries "$W/hq.bvecs" --code pq:32 --quiet \
  >/dev/null 2>"$W/err"
[ $? -eq 2 ] && ok "import --queries with --code refused" || bad "--queries with --code: $(cat "$W/err")"
"$NL" import --db "$DB" --collection bad --input "$W/h.bvecs" --code rabitq:9 --quiet >/dev/null 2>"$W/err" \
  && bad "rabitq:9 accepted" || { grep -q "bits 1..8" "$W/err" && ok "--code rabitq:9 refused" || bad "rabitq:9: $(cat "$W/err")"; }

# The real sets keep their recall with the default choice: at least the default PQ's
# (the code before issue 17) less 0.015, on the same graph parameters, at L=50.
real_set() { # name base query gt pq
  local name=$1 base=$2 q=$3 gt=$4 pq=$5
  if [ ! -f "$base" ]; then skp "$name: $DATA not found"; return; fi
  "$NL" import --db "$DB" --collection "$name" --input "$base" --quiet >"$W/imp" 2>"$W/err" \
    || { bad "import $name: $(cat "$W/err")"; return; }
  "$NL" import --db "$DB" --collection "${name}pq" --input "$base" --code "$pq" --quiet >/dev/null 2>"$W/err" \
    || { bad "import $name with $pq: $(cat "$W/err")"; return; }
  local c; c=$(sed -n 's/.*"code":"\([^"]*\)","segment".*/\1/p' "$W/imp")
  "$NL" search --db "$DB" --collection "$name" --queries "$q" --groundtruth "$gt" --k 10 --L 50 --threads 2 \
    >"$W/s" 2>"$W/err"
  "$NL" search --db "$DB" --collection "${name}pq" --queries "$q" --groundtruth "$gt" --k 10 --L 50 --threads 2 \
    >"$W/sp" 2>>"$W/err"
  local r p; r=$(recall_of "$W/s"); p=$(recall_of "$W/sp")
  if [ -n "$r" ] && [ -n "$p" ] && ge "$r" "$(awk -v p="$p" 'BEGIN { print p - 0.015 }')"; then
    ok "$name at L=50: default $c $r ($(ios_of "$W/s") reads), $pq $p ($(ios_of "$W/sp") reads)"
  else bad "$name: default $c '$r' against $pq '$p' $(cat "$W/err")"; fi
}
real_set sift5k "$DATA/sift-5k/base.bvecs" "$DATA/sift-5k/query.bvecs" "$DATA/sift-5k/groundtruth.ivecs" pq:32
real_set bigann10k "$DATA/bigann-10k/base.bvecs" "$DATA/bigann-10k/query.bvecs" "$DATA/bigann-10k/groundtruth.ivecs" pq:32
# fashion-mnist-60k against its figure with the default PQ (96 bytes: 0.9988 at L=50,
# docs/benchmarks.md) rather than a second import here: PQ's 96 chunks train for minutes.
if [ -f "$DATA/fashion-mnist-60k/base.u8bin" ]; then
  "$NL" import --db "$DB" --collection fmnist --input "$DATA/fashion-mnist-60k/base.u8bin" --quiet >"$W/imp" 2>"$W/err" \
    || bad "import fmnist: $(cat "$W/err")"
  c=$(sed -n 's/.*"code":"\([^"]*\)","segment".*/\1/p' "$W/imp")
  "$NL" search --db "$DB" --collection fmnist --queries "$DATA/fashion-mnist-60k/query.u8bin" \
    --groundtruth "$DATA/fashion-mnist-60k/groundtruth.ivecs" --k 10 --L 50 --threads 2 >"$W/s" 2>"$W/err"
  r=$(recall_of "$W/s")
  if [ -n "$r" ] && ge "$r" 0.985; then ok "fmnist at L=50: default $c $r ($(ios_of "$W/s") reads; pq:96 0.9988)"
  else bad "fmnist: default $c '$r' (want >= 0.985) $(cat "$W/err")"; fi
  # The seed table: walks that also start from the members of the centroids nearest the
  # query read less than walks from the medoid alone (--seeds off), for no less recall.
  # (On the hard set the gain is small, 4 % at L=30: its graph reaches a neighbourhood in
  # few hops; ten classes of images are farther apart.)
  for sd in on off; do
    "$NL" search --db "$DB" --collection fmnist --queries "$DATA/fashion-mnist-60k/query.u8bin" --seeds $sd \
      --groundtruth "$DATA/fashion-mnist-60k/groundtruth.ivecs" --k 10 --L 15 --threads 2 >"$W/s$sd" 2>"$W/err"
  done
  rn=$(recall_of "$W/son"); ro=$(recall_of "$W/soff"); io_on=$(ios_of "$W/son"); io_off=$(ios_of "$W/soff")
  if [ -n "$rn" ] && [ -n "$ro" ] && ge "$rn" "$(awk -v a="$ro" 'BEGIN { print a - 0.01 }')" \
     && le "$io_on" "$(awk -v a="$io_off" 'BEGIN { print a * 0.85 }')"; then
    ok "fmnist seeds at L=15: recall $ro -> $rn, reads $io_off -> $io_on"
  else bad "fmnist seeds: recall '$ro' -> '$rn', reads '$io_off' -> '$io_on' $(cat "$W/err")"; fi
else skp "fashion-mnist-60k: $DATA not found"; fi

echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
