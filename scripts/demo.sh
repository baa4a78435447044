#!/usr/bin/env bash
# `make run`: shows nearline on an embedded default. With ../shared/data present it
# indexes sift-5k (real SIFT descriptors); without it, a generated clustered set. It
# builds the in-memory Vamana index, checks the graph, and prints recall@10 and QPS for a
# few list sizes. Safe to run repeatedly: generated data is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
NL="$BUILD_DIR/tools/nearline"
DATA=${NEARLINE_DATA_DIR:-../shared/data}
if [ -f "$DATA/sift-5k/base.bvecs" ]; then
  name="sift-5k (real SIFT descriptors from ../shared/data)"
  base="$DATA/sift-5k/base.bvecs"; queries="$DATA/sift-5k/query.bvecs"; gt="$DATA/sift-5k/groundtruth.ivecs"
  sweep=40,80,150
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
echo "nearline: building an in-memory Vamana index over $name"
"$NL" mem-bench --base "$base" --queries "$queries" --groundtruth "$gt" --R 64 --L 100 \
  --search-L "$sweep" --repeat 3 > .demo-result.json
/usr/bin/python3 - .demo-result.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"  {d['n']:,} vectors, dim {d['dim']} ({d['dtype']}, {d['metric']}), kernels: {d['isa']}, threads: {d['threads']}")
g = d["graph"]
print(f"  build {d['build_s']:.2f} s; graph valid: {g['valid']}, mean degree {g['mean_degree']:.1f}, peak RSS {d['peak_rss_bytes']/2**20:.0f} MiB")
print(f"  {'L':>5} {'recall@10':>10} {'QPS':>10} {'p50 us':>8} {'p99 us':>8}")
for r in d["results"]:
    lat = r["latency_us"]
    print(f"  {r['L']:>5} {r['recall_at_k']:>10.4f} {r['qps']:>10,.0f} {lat['p50']:>8.1f} {lat['p99']:>8.1f}")
PY
rm -f .demo-result.json
