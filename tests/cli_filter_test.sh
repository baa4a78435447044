#!/usr/bin/env bash
# Integration test of filtered search (issue 6) through the `nearline` command:
#  - generated data with generated metadata (runs everywhere): filters allowing 50%, 10%,
#    1% and 0.1% of the points, one filter for all queries (--filter) and one per query
#    (--filters); recall@10 >= 0.95 against the exact filtered truth of
#    `nearline groundtruth --metadata` (the reference evaluator, not the engine's index)
#    and no query short of min(k, matches); a filter matching nothing returns nothing;
#  - malformed filters are refused with exit 2 and a message naming the place;
#  - fashion-mnist-60k with its labels as {"label": N} (10% per label; the query's own
#    label and another one) and synthetic fields of 1% and 0.1% (skipped without
#    ../shared).
# Usage: cli_filter_test.sh NEARLINE_BINARY DATA_DIR
set -u
NL=${1:?nearline binary}
DATA=${NEARLINE_DATA_DIR:-${2:-../shared/data}}
W=$(mktemp -d -p "${NL_TEST_TMP:-$PWD}" filtertest.XXXXXX)
trap 'rm -rf "$W"' EXIT
. "$(dirname "$0")/lib.sh"
PY=python3

# Metadata for N rows: half (50%), d10 (10%), p1 (1%), p01 (0.1%), a tag list, a price.
gen_meta() { # N OUT [LABELS]
  $PY - "$1" "$2" "${3:-}" <<'PYEOF'
import json, sys
n, out, labels = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lab = open(labels, 'rb').read() if labels else None
with open(out, 'w') as f:
    for r in range(n):
        h = (r * 2654435761) & 0xffffffff
        m = {"half": h % 2, "d10": (h >> 3) % 10, "p1": (h >> 5) % 100, "p01": (h >> 9) % 1000,
             "tags": ["t%d" % (r % 7), "even" if r % 2 == 0 else "odd"], "price": (h % 10000) / 100.0}
        if lab is not None:
            m["label"] = lab[r]
        f.write(json.dumps(m) + "\n")
PYEOF
}

# run_case NAME DB COLL QUERIES BASE META FLAG VALUE [L]: truth, search, checks.
run_case() {
  local name=$1 db=$2 coll=$3 q=$4 base=$5 meta=$6 flag=$7 val=$8 L=${9:-64} plan=${10:-auto}
  "$NL" groundtruth --base "$base" --queries "$q" --out "$W/gt.ivecs" --k 10 --metadata "$meta" "$flag" "$val" \
    >/dev/null 2>"$W/err" || { bad "$name: groundtruth: $(cat "$W/err")"; return; }
  "$NL" search --db "$db" --collection "$coll" --queries "$q" --k 10 --L "$L" "$flag" "$val" --plan "$plan" \
    --groundtruth "$W/gt.ivecs" >"$W/s" 2>"$W/err" || { bad "$name: search: $(cat "$W/err")"; return; }
  local rec short plans
  rec=$(field "$W/s" recall_at_k); short=$(field "$W/s" short_queries)
  plans=$(sed -n 's/.*"plans":\({[^}]*}\).*/\1/p' "$W/s")
  if [ -n "$rec" ] && ge "$rec" 0.95 && [ "$short" = 0 ]; then
    ok "$name: recall@10 $rec, no query short of min(k, matches), plans $plans"
  else bad "$name: recall@10 '$rec', short queries '$short': $(cat "$W/s" "$W/err")"; fi
}

# ---- generated data -----------------------------------------------------------------
"$NL" gen --n 30000 --dim 32 --type u8 --clusters 30 --seed 11 --out "$W/g.u8bin" --queries 200 \
  --queries-out "$W/gq.u8bin" >/dev/null 2>"$W/err" || bad "gen: $(cat "$W/err")"
gen_meta 30000 "$W/g.jsonl"
"$NL" import --db "$W/db" --collection g --input "$W/g.u8bin" --metadata "$W/g.jsonl" --R 24 --L 48 --threads 2 \
  --quiet >/dev/null 2>"$W/err" && ok "import with metadata" || bad "import: $(cat "$W/err")"
run_case "generated 50%" "$W/db" g "$W/gq.u8bin" "$W/g.u8bin" "$W/g.jsonl" --filter '{"field":"half","eq":1}'
run_case "generated 10%" "$W/db" g "$W/gq.u8bin" "$W/g.u8bin" "$W/g.jsonl" --filter '{"field":"d10","eq":3}'
run_case "generated 50%, graph plan forced" "$W/db" g "$W/gq.u8bin" "$W/g.u8bin" "$W/g.jsonl" \
  --filter '{"field":"half","eq":1}' 64 graph
run_case "generated 10%, graph plan forced" "$W/db" g "$W/gq.u8bin" "$W/g.u8bin" "$W/g.jsonl" \
  --filter '{"field":"d10","eq":3}' 100 graph
run_case "generated 1%" "$W/db" g "$W/gq.u8bin" "$W/g.u8bin" "$W/g.jsonl" --filter '{"field":"p1","in":[17]}'
run_case "generated 0.1%" "$W/db" g "$W/gq.u8bin" "$W/g.u8bin" "$W/g.jsonl" --filter '{"field":"p01","eq":123}'
run_case "generated range and list (composite)" "$W/db" g "$W/gq.u8bin" "$W/g.u8bin" "$W/g.jsonl" \
  --filter '{"and":[{"field":"price","gte":10,"lt":30},{"field":"tags","eq":"t3"},{"not":{"field":"half","eq":0}}]}'
$PY -c "
import json
for i in range(200): print(json.dumps({'field':'p1','eq':i%100} if i%2 else {'or':[{'field':'p01','eq':i},{'field':'d10','eq':i%10}]}))
" >"$W/per_query.jsonl"
run_case "generated, one filter per query" "$W/db" g "$W/gq.u8bin" "$W/g.u8bin" "$W/g.jsonl" --filters "$W/per_query.jsonl"
"$NL" search --db "$W/db" --collection g --queries "$W/gq.u8bin" --k 10 --filter '{"field":"p1","eq":1000}' \
  --out "$W/none.ivecs" >"$W/s" 2>"$W/err"
nonempty=$($PY -c "
import struct, sys
d = open(sys.argv[1], 'rb').read()
print(sum(1 for i in range(0, len(d), 44) for v in struct.unpack('<11i', d[i:i + 44])[1:] if v != -1))" "$W/none.ivecs")
if [ "$(field "$W/s" short_queries)" = 0 ] && [ "$(field "$W/s" mean_matches)" = 0.0 ] && [ "$nonempty" = 0 ]; then
  ok "a filter matching nothing returns no results"
else bad "empty filter result: $(cat "$W/s" "$W/err")"; fi

# ---- malformed filters ----------------------------------------------------------------
check_refused() { # FILTER NEEDLE
  "$NL" search --db "$W/db" --collection g --queries "$W/gq.u8bin" --k 10 --filter "$1" >"$W/s" 2>"$W/err"
  local rc=$?
  if [ $rc -eq 2 ] && grep -qF -- "$2" "$W/err"; then ok "refused: $2"
  else bad "filter $1: exit $rc, $(cat "$W/err")"; fi
}
check_refused '{"field":"half","like":1}' 'at $.like: unknown operator "like"'
check_refused '{"or":[{"field":"a","eq":1},{"field":"b","gt":"x"}]}' 'at $.or[1].gt: "gt" takes a number'
check_refused '{"field":"a","eq":' 'not valid JSON'
check_refused "$($PY -c "print('{\"not\":'*40 + '{\"field\":\"a\",\"eq\":1}' + '}'*40)")" 'nesting deeper than 32'
check_refused "$($PY -c "print('{\"field\":\"a\",\"in\":[' + ','.join(['1']*40000) + ']}')")" 'over the 65536-byte limit'
printf '{"field":"a","eq":1}\n{"field":"a","eq":[1]}\n' >"$W/badlines.jsonl"
"$NL" search --db "$W/db" --collection g --queries "$W/gq.u8bin" --k 10 --filters "$W/badlines.jsonl" >"$W/s" 2>"$W/err"
if [ $? -eq 2 ] && grep -q 'line 2: filter at $.eq' "$W/err"; then ok "--filters names the bad line"
else bad "--filters bad line: $(cat "$W/err")"; fi
"$NL" search --db "$W/db" --collection g --queries "$W/gq.u8bin" --k 10 --filters <(head -1 "$W/badlines.jsonl") \
  >"$W/s" 2>"$W/err"
if grep -q 'has 1 lines but' "$W/err"; then ok "--filters with the wrong number of lines is refused"
else bad "--filters line count: $(cat "$W/err")"; fi

# ---- fashion-mnist-60k ------------------------------------------------------------------
FM="$DATA/fashion-mnist-60k"
if [ -f "$FM/base.u8bin" ] && [ -f "$FM/base.labels.u8" ]; then
  $PY - "$FM" "$W" <<'PYEOF'
import json, struct, sys
fm, w = sys.argv[1], sys.argv[2]
d = open(fm + '/query.u8bin', 'rb').read()
n, dim = struct.unpack('<II', d[:8]); m = 500
open(w + '/fq.u8bin', 'wb').write(struct.pack('<II', m, dim) + d[8:8 + m * dim])
ql = open(fm + '/query.labels.u8', 'rb').read()
for name, fn in (('own', lambda i: {"field": "label", "eq": ql[i]}),
                 ('other', lambda i: {"field": "label", "eq": (ql[i] + 3) % 10})):
    with open('%s/f_%s.jsonl' % (w, name), 'w') as f:
        for i in range(m): f.write(json.dumps(fn(i)) + '\n')
PYEOF
  gen_meta 60000 "$W/fm.jsonl" "$FM/base.labels.u8"
  "$NL" import --db "$W/fdb" --collection fm --input "$FM/base.u8bin" --metadata "$W/fm.jsonl" --threads 2 --quiet \
    >/dev/null 2>"$W/err" && ok "fashion-mnist imported with labels" || bad "fashion-mnist import: $(cat "$W/err")"
  B="$FM/base.u8bin"
  run_case "fashion-mnist label = the query's (10%)" "$W/fdb" fm "$W/fq.u8bin" "$B" "$W/fm.jsonl" --filters "$W/f_own.jsonl"
  run_case "fashion-mnist label = another (10%)" "$W/fdb" fm "$W/fq.u8bin" "$B" "$W/fm.jsonl" --filters "$W/f_other.jsonl"
  run_case "fashion-mnist 50%" "$W/fdb" fm "$W/fq.u8bin" "$B" "$W/fm.jsonl" --filter '{"field":"half","eq":0}'
  run_case "fashion-mnist 50%, graph plan forced" "$W/fdb" fm "$W/fq.u8bin" "$B" "$W/fm.jsonl" \
    --filter '{"field":"half","eq":0}' 64 graph
  run_case "fashion-mnist label (10%), graph plan forced" "$W/fdb" fm "$W/fq.u8bin" "$B" "$W/fm.jsonl" \
    --filters "$W/f_other.jsonl" 100 graph
  run_case "fashion-mnist 1%" "$W/fdb" fm "$W/fq.u8bin" "$B" "$W/fm.jsonl" --filter '{"field":"p1","eq":42}'
  run_case "fashion-mnist 0.1%" "$W/fdb" fm "$W/fq.u8bin" "$B" "$W/fm.jsonl" --filter '{"field":"p01","eq":7}'
else
  skp "fashion-mnist-60k not found under $DATA (shared datasets absent): its filtered checks skipped"
fi

echo "# $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
