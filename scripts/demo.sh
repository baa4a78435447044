#!/usr/bin/env bash
# `make run`: shows nearline on an embedded default. With ../shared/data present it
# indexes sift-5k (real SIFT descriptors); without it, a generated clustered set. It
# imports the vectors into a local database (.demo/db) as a disk index and searches it
# from disk, printing recall@10, QPS, latency and reads per query for a few list sizes.
# Safe to run repeatedly: generated data is reused, the demo collection rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
NL="$BUILD_DIR/tools/nearline"
DATA=${NEARLINE_DATA_DIR:-../shared/data}
if [ -f "$DATA/sift-5k/base.bvecs" ]; then
  name="sift-5k (real SIFT descriptors from ../shared/data)"
  base="$DATA/sift-5k/base.bvecs"; queries="$DATA/sift-5k/query.bvecs"; gt="$DATA/sift-5k/groundtruth.ivecs"
  sweep=50,100,150
else
  mkdir -p .demo
  base=.demo/base.u8bin; queries=.demo/query.u8bin; gt=.demo/groundtruth.ivecs
  if [ ! -f "$gt" ]; then
    echo "../shared/data not found: generating a 20,000 x 128 clustered dataset in .demo/"
    "$NL" gen --n 20000 --dim 128 --type u8 --clusters 50 --seed 7 --out "$base" \
      --queries 200 --queries-out "$queries" --groundtruth-out "$gt" >/dev/null
  fi
  name="generated 20,000 x 128 u8 (nearline gen --seed 7)"
  sweep=20,40,80
fi
mkdir -p .demo
DB=.demo/db
rm -rf "$DB/demo"   # a fresh collection each run, so running twice works
echo "nearline: importing $name into $DB (a disk index: graph + vectors on disk, PQ codes in RAM)"
"$NL" import --db "$DB" --collection demo --input "$base" --quiet > .demo-import.json
echo "nearline: searching it from disk (O_DIRECT reads through io_uring), 1 thread, 1 query at a time"
"$NL" search --db "$DB" --collection demo --queries "$queries" --groundtruth "$gt" --k 10 \
  --L "$sweep" --beam 4 --threads 1 --inflight 1 --cache-budget 1M > .demo-result.json
/usr/bin/python3 - .demo-import.json .demo-result.json <<'PY'
import json, sys
imp = json.load(open(sys.argv[1]))
runs = [json.loads(l) for l in open(sys.argv[2])]
print(f"  {imp['points']:,} vectors, dim {imp['dim']} ({imp['dtype']}, {imp['metric']}), R={imp['R']}, PQ {imp['pq_bytes']} bytes/vector")
print(f"  import {imp['seconds']['total']:.1f} s; segment {imp['segment_bytes']/2**20:.1f} MiB on disk; "
      f"RAM at open {runs[0]['ram_at_open_bytes']/2**20:.1f} MiB; io: {runs[0]['io']}, O_DIRECT: {runs[0]['direct_io']}")
print(f"  {'L':>5} {'recall@10':>10} {'QPS':>8} {'p50 us':>8} {'p99 us':>8} {'reads/query':>12}")
for r in runs:
    lat = r["latency_us"]
    print(f"  {r['L']:>5} {r['recall_at_k']:>10.4f} {r['qps']:>8,.0f} {lat['p50']:>8.0f} {lat['p99']:>8.0f} {r['mean_ios']:>12.1f}")
PY
rm -f .demo-import.json .demo-result.json
echo
echo "Try it yourself:"
echo "  $NL search --db $DB --collection demo --queries $queries --k 10 --L 50 --out /tmp/ids.ivecs"
echo "  $NL inspect --db $DB"
echo "  $NL verify --db $DB"
