#!/usr/bin/env bash
# Integration test of the disk index through the `nearline` command (issue 3):
# import/search/verify/inspect on generated data, every bad input the contract names
# (one-line error, non-zero exit, nothing half-written), corruption detection, the pread
# fallback answering like io_uring, and recall@10 >= 0.95 from disk with O_DIRECT on
# fashion-mnist-60k and a 100K subset of sift-images-420k (skipped without ../shared).
# Usage: cli_disk_test.sh NEARLINE_BINARY DATA_DIR
set -u
NL=${1:?nearline binary}
DATA=${NEARLINE_DATA_DIR:-${2:-../shared/data}}
W=$(mktemp -d -p "${NL_TEST_TMP:-$PWD}" clitest.XXXXXX)
trap 'rm -rf "$W"' EXIT
. "$(dirname "$0")/lib.sh"

# expect_error DESC PATTERN CMD...: non-zero exit below 128 (no crash) and PATTERN on stderr.
expect_error() {
  local desc=$1 pat=$2; shift 2
  "$@" >"$W/out" 2>"$W/err"; local rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -qi -- "$pat" "$W/err"; then ok "$desc"
  else bad "$desc (exit $rc): $(head -c 300 "$W/err")"; fi
}
# recall_of FILE: the recall_at_k of the last JSON line
recall_of() { tail -1 "$1" | sed -n 's/.*"recall_at_k":\([0-9.]*\).*/\1/p'; }
no_leftovers() { ! ls -A "$1" 2>/dev/null | grep -q "^\.tmp-import\|^\.import-"; }

DB="$W/db"
"$NL" gen --n 3000 --dim 32 --type f32 --clusters 20 --seed 3 --out "$W/g.fvecs" --queries 60 \
  --queries-out "$W/gq.fvecs" --groundtruth-out "$W/ggt.ivecs" >/dev/null || { bad "gen"; }
"$NL" gen --n 10 --dim 16 --type f32 --out "$W/q16.fvecs" >/dev/null

if "$NL" import --db "$DB" --collection gen --input "$W/g.fvecs" --R 32 --L 64 --quiet >"$W/imp" 2>"$W/err"; then
  ok "import generated data"
else bad "import generated data: $(cat "$W/err")"; fi
"$NL" search --db "$DB" --collection gen --queries "$W/gq.fvecs" --groundtruth "$W/ggt.ivecs" --k 10 --L 64 \
  --threads 2 --out "$W/uring.ivecs" --io uring >"$W/s1" 2>"$W/err"
r=$(recall_of "$W/s1"); if [ -n "$r" ] && ge "$r" 0.95; then ok "search generated data (recall $r)"; else bad "search generated data: $r $(cat "$W/err")"; fi
if grep -q '"qps"' "$W/s1" && grep -q '"p99"' "$W/s1" && grep -q '"mean_ios"' "$W/s1"; then ok "search JSON fields"; else bad "search JSON fields"; fi
"$NL" search --db "$DB" --collection gen --queries "$W/gq.fvecs" --k 10 --L 64 --threads 2 --io pread --out "$W/pread.ivecs" >/dev/null 2>&1
if cmp -s "$W/uring.ivecs" "$W/pread.ivecs"; then ok "pread fallback returns what io_uring returns"; else bad "pread and io_uring differ"; fi
n=$("$NL" search --db "$DB" --collection gen --queries "$W/gq.fvecs" --k 10 --L 20,40,64 2>/dev/null | wc -l)
[ "$n" = 3 ] && ok "--L sweep prints one object per L" || bad "--L sweep printed $n lines"
"$NL" verify --db "$DB" >/dev/null 2>&1 && ok "verify passes on a fresh collection" || bad "verify on fresh collection"
"$NL" inspect --db "$DB" --collection gen | grep -q '"points":3000' && ok "inspect reports points" || bad "inspect"

# Bad input: one line naming the problem, non-zero exit, nothing left behind.
expect_error "unknown collection" "not found" "$NL" search --db "$DB" --collection nope --queries "$W/gq.fvecs" --k 10
expect_error "query dimension mismatch" "dimension" "$NL" search --db "$DB" --collection gen --queries "$W/q16.fvecs" --k 10
head -c 1000 "$W/gq.fvecs" > "$W/trunc.fvecs"
expect_error "truncated query file" "truncated" "$NL" search --db "$DB" --collection gen --queries "$W/trunc.fvecs" --k 10
expect_error "k larger than the collection" "larger than" "$NL" search --db "$DB" --collection gen --queries "$W/gq.fvecs" --k 5000 --L 5000
expect_error "collection exists" "already exists" "$NL" import --db "$DB" --collection gen --input "$W/g.fvecs" --quiet
expect_error "invalid collection name" "only \[A-Za-z0-9_-\]" "$NL" import --db "$DB" --collection "../etc" --input "$W/g.fvecs" --quiet
expect_error "unwritable database directory" "cannot create\|not writable\|not a directory" "$NL" import --db /proc/nearline-db --collection x --input "$W/g.fvecs" --quiet
expect_error "missing input file" "No such file" "$NL" import --db "$DB" --collection miss --input "$W/none.fvecs" --quiet
cp "$W/g.fvecs" "$W/wrongdim.fvecs"
printf '\x05\x00\x00\x00' | dd of="$W/wrongdim.fvecs" bs=1 seek=$((132 * 7)) conv=notrunc status=none
expect_error "wrong row header in the input" "row 7" "$NL" import --db "$DB" --collection wd --input "$W/wrongdim.fvecs" --quiet
/usr/bin/python3 -c "
import struct,sys
rows=[[1.0]*8, [float('nan')]+[0.0]*7, [2.0]*8]
open(sys.argv[1],'wb').write(b''.join(struct.pack('<i',8)+struct.pack('<8f',*r) for r in rows))" "$W/nan.fvecs"
expect_error "NaN in the input" "NaN" "$NL" import --db "$DB" --collection nan --input "$W/nan.fvecs" --quiet
seq 0 2999 | sed '3s/.*/x12/' > "$W/ids.txt"
expect_error "malformed ids file" "line 3" "$NL" import --db "$DB" --collection ids --input "$W/g.fvecs" --ids "$W/ids.txt" --quiet
seq 0 2998 > "$W/short.txt"
expect_error "ids count mismatch" "2999 lines" "$NL" import --db "$DB" --collection ids --input "$W/g.fvecs" --ids "$W/short.txt" --quiet
expect_error "unknown flag value" "--k" "$NL" search --db "$DB" --collection gen --queries "$W/gq.fvecs" --k 0
# Metadata (JSON Lines): malformed lines, non-objects and count mismatches name the line.
for i in $(seq 0 2999); do echo "{\"row\":$i,\"tag\":\"t$((i % 10))\"}"; done > "$W/meta.jsonl"
sed '5s/.*/{"row": 4,/' "$W/meta.jsonl" > "$W/badmeta.jsonl"
expect_error "malformed metadata line" "line 5" "$NL" import --db "$DB" --collection md --input "$W/g.fvecs" --metadata "$W/badmeta.jsonl" --quiet
sed '9s/.*/[1,2]/' "$W/meta.jsonl" > "$W/arrmeta.jsonl"
expect_error "metadata that is not an object" "line 9: not a JSON object" "$NL" import --db "$DB" --collection md --input "$W/g.fvecs" --metadata "$W/arrmeta.jsonl" --quiet
head -n 2999 "$W/meta.jsonl" > "$W/shortmeta.jsonl"
expect_error "metadata count mismatch" "2999 lines" "$NL" import --db "$DB" --collection md --input "$W/g.fvecs" --metadata "$W/shortmeta.jsonl" --quiet
for c in wd nan ids miss md; do [ -e "$DB/$c" ] && bad "half-written collection $c left behind"; done
no_leftovers "$DB" && ok "no temporary import directories left behind" || bad "temporary import directory left behind"

# Ids from a file are what search returns.
seq 5000000000 5000002999 > "$W/bigids.txt"
"$NL" import --db "$DB" --collection withids --input "$W/g.fvecs" --ids "$W/bigids.txt" --R 32 --L 64 --quiet >/dev/null 2>&1
"$NL" search --db "$DB" --collection withids --queries "$W/gq.fvecs" --k 10 --L 64 --out "$W/big.ivecs" >/dev/null 2>"$W/err"
grep -q "does not fit an ivecs" "$W/err" && ok "64-bit ids are refused by ivecs output, not truncated" || bad "64-bit ids in --out: $(cat "$W/err")"

# Corruption: a flipped byte in a node sector is found by verify and refused by search.
seg=$(ls "$DB"/gen/0/seg-*.nls)
cp -r "$DB/gen" "$DB/gencopy"
printf '\xff' | dd of="$DB/gencopy/0/$(basename "$seg")" bs=1 seek=$((4096 * 3 + 100)) conv=notrunc status=none
expect_error "verify reports a corrupt node sector" "checksum" "$NL" verify --db "$DB" --collection gencopy
"$NL" search --db "$DB" --collection gencopy --queries "$W/gq.fvecs" --k 10 --L 200 --cache-budget 0 >/dev/null 2>"$W/err"; rc=$?
if [ $rc -ne 0 ] && [ $rc -lt 128 ]; then ok "search refuses a corrupt sector (exit $rc)";
elif [ $rc -eq 0 ]; then ok "search did not touch the corrupt sector"; else bad "search crashed on corruption ($rc)"; fi
printf 'XXXX' | dd of="$DB/gencopy/0/$(basename "$seg")" bs=1 seek=0 conv=notrunc status=none
expect_error "a segment with a bad header" "magic" "$NL" search --db "$DB" --collection gencopy --queries "$W/gq.fvecs" --k 10

# Real data from disk with O_DIRECT.
if [ -f "$DATA/fashion-mnist-60k/base.u8bin" ]; then
  "$NL" import --db "$DB" --collection fmnist --input "$DATA/fashion-mnist-60k/base.u8bin" --R 48 --L 80 --pq-bytes 64 --quiet >/dev/null 2>"$W/err" || bad "import fashion-mnist: $(cat "$W/err")"
  "$NL" search --db "$DB" --collection fmnist --queries "$DATA/fashion-mnist-60k/query.u8bin" \
    --groundtruth "$DATA/fashion-mnist-60k/groundtruth.ivecs" --k 10 --L 40 --beam 4 --threads 2 >"$W/s" 2>"$W/err"
  r=$(recall_of "$W/s")
  if [ -n "$r" ] && ge "$r" 0.95 && grep -q '"direct_io":true' "$W/s"; then ok "fashion-mnist-60k from disk: recall@10 $r at L=40 (O_DIRECT)"
  else bad "fashion-mnist-60k: recall '$r' $(cat "$W/err") $(cat "$W/s")"; fi
else skp "fashion-mnist-60k: $DATA not found"; fi
if [ -f "$DATA/sift-images-420k/base.bvecs" ]; then
  head -c $((100000 * 132)) "$DATA/sift-images-420k/base.bvecs" > "$W/sift100k.bvecs"
  head -c $((2000 * 132)) "$DATA/sift-images-420k/query.bvecs" > "$W/siftq.bvecs"
  "$NL" groundtruth --base "$W/sift100k.bvecs" --queries "$W/siftq.bvecs" --k 10 --out "$W/siftgt.ivecs" >/dev/null
  "$NL" import --db "$DB" --collection sift --input "$W/sift100k.bvecs" --R 48 --L 80 --quiet >/dev/null 2>"$W/err" || bad "import sift subset: $(cat "$W/err")"
  "$NL" search --db "$DB" --collection sift --queries "$W/siftq.bvecs" --groundtruth "$W/siftgt.ivecs" \
    --k 10 --L 50 --beam 4 --threads 2 >"$W/s" 2>"$W/err"
  r=$(recall_of "$W/s")
  if [ -n "$r" ] && ge "$r" 0.95 && grep -q '"direct_io":true' "$W/s"; then ok "sift-images-420k (100K subset) from disk: recall@10 $r at L=50 (O_DIRECT)"
  else bad "sift subset: recall '$r' $(cat "$W/err")"; fi
  "$NL" verify --db "$DB" --collection sift >/dev/null 2>&1 && ok "verify sift subset" || bad "verify sift subset"
else skp "sift-images-420k: $DATA not found"; fi

echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
