#!/usr/bin/python3
"""Sustained ingest (issue 4): nearline's engine against hnswlib on the same data.

nearline: bench/ingest.c (build/bench/nl_bench_ingest) upserts N synthetic 128-d points in
100-point batches, each batch durable (synced RocksDB batch) and searchable when it
returns, while one thread sends k=10 searches at a steady rate; flushes and compactions
run in the background as in production. hnswlib, the reference, adds the same points in
the same batches with the same threads into an in-memory index (nothing durable, no
deletes): the ceiling an in-memory graph reaches. Both runs report points/s, batch
latency percentiles, search latency during the ingest and idle, recall@10 and peak RSS.

Usage: /usr/bin/python3 bench/bench_ingest.py [--n 1000000] [--work DIR] [--writers 1,2]
Prints a markdown table for docs/benchmarks.md and writes the raw JSON next to the data.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NL = os.path.join(ROOT, "build", "tools", "nearline")
DRIVER = os.path.join(ROOT, "build", "bench", "nl_bench_ingest")


def ensure_data(work, n):
    x = os.path.join(work, f"x{n}.fbin")
    q = os.path.join(work, f"q{n}.fbin")
    gt = os.path.join(work, f"gt{n}.ivecs")
    if not all(os.path.exists(p) for p in (x, q, gt)):
        print(f"generating {n} points ...", file=sys.stderr)
        subprocess.run([NL, "gen", "--n", str(n), "--dim", "128", "--type", "f32", "--queries", "1000",
                        "--queries-out", q, "--groundtruth-out", gt, "--out", x, "--seed", "5"],
                       check=True, stdout=subprocess.DEVNULL)
    return x, q, gt


def run_nearline(x, q, gt, work, writers, args):
    cmd = [DRIVER, "--input", x, "--queries", q, "--groundtruth", gt, "--db", os.path.join(work, "db"),
           "--writers", str(writers), "--R", str(args.R), "--L", str(args.L), "--fresh", str(args.fresh),
           "--search-L", str(args.search_L), "--search-qps", str(args.search_qps)]
    print(" ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def read_fbin(path):
    import numpy as np
    with open(path, "rb") as f:
        n, d = np.frombuffer(f.read(8), dtype=np.int32)
        return np.fromfile(f, dtype=np.float32, count=int(n) * int(d)).reshape(int(n), int(d))


def run_hnswlib(x, q, gt, writers, args):
    """Same batches and threads into hnswlib (M=R/2 so both graphs hold R edges at the base
    layer), with a steady-rate searcher thread as in the nearline run."""
    import hnswlib
    import numpy as np
    X = read_fbin(x)
    Q = read_fbin(q)
    with open(gt, "rb") as f:
        raw = np.fromfile(f, dtype=np.int32)
    k0 = raw[0]
    G = raw.reshape(-1, k0 + 1)[:, 1:11]
    n, d = X.shape
    idx = hnswlib.Index(space="l2", dim=d)
    idx.init_index(max_elements=n, M=args.R // 2, ef_construction=args.L)
    idx.set_ef(args.search_L)
    lat = []
    cursor = [0]
    lock = threading.Lock()
    stop = [False]
    slat = []

    def writer():
        while True:
            with lock:
                a = cursor[0]
                cursor[0] += 100
            if a >= n:
                return
            b = min(n, a + 100)
            t = time.perf_counter()
            idx.add_items(X[a:b], np.arange(a, b), num_threads=1)
            lat.append(time.perf_counter() - t)

    def searcher():
        period = 1.0 / args.search_qps
        nxt = time.perf_counter()
        i = 0
        while not stop[0]:
            nxt += period
            now = time.perf_counter()
            if nxt > now:
                time.sleep(nxt - now)
            else:
                nxt = now
            if idx.get_current_count() < 10:
                continue
            t = time.perf_counter()
            idx.knn_query(Q[i % len(Q)], k=10)
            slat.append(time.perf_counter() - t)
            i += 1

    t0 = time.perf_counter()
    ws = [threading.Thread(target=writer) for _ in range(writers)]
    st = threading.Thread(target=searcher)
    for w in ws:
        w.start()
    st.start()
    for w in ws:
        w.join()
    ingest = time.perf_counter() - t0
    stop[0] = True
    st.join()
    busy = sorted(slat)
    slat.clear()
    stop[0] = False
    st = threading.Thread(target=searcher)
    st.start()
    time.sleep(10)
    stop[0] = True
    st.join()
    idle = sorted(slat)
    labels, _ = idx.knn_query(Q, k=10)
    recall = sum(len(set(labels[i]) & set(G[i])) for i in range(len(Q))) / (10.0 * len(Q))
    lat.sort()

    def pct(v, p):
        return v[int(p * (len(v) - 1))] if v else 0.0

    return {"points_per_s": n / ingest, "batch_latency_ms": {"p50": pct(lat, 0.5) * 1e3, "p99": pct(lat, 0.99) * 1e3},
            "search_during_ingest": {"p99_us": pct(busy, 0.99) * 1e6}, "search_idle": {"p99_us": pct(idle, 0.99) * 1e6},
            "recall_at_10": recall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000000)
    ap.add_argument("--work", default=os.environ.get("NEARLINE_BENCH_DIR", "/tmp/nearline-bench-ingest"))
    ap.add_argument("--writers", default="1,2")
    ap.add_argument("--R", type=int, default=32)
    ap.add_argument("--L", type=int, default=48)
    ap.add_argument("--fresh", type=int, default=100000)
    ap.add_argument("--search-L", type=int, default=24)
    ap.add_argument("--search-qps", type=int, default=100)
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    x, q, gt = ensure_data(args.work, args.n)
    rows = []
    raw = {"date": time.strftime("%Y-%m-%d"), "n": args.n, "runs": []}
    for w in [int(v) for v in args.writers.split(",")]:
        r = run_nearline(x, q, gt, args.work, w, args)
        raw["runs"].append({"system": "nearline", "writers": w, **r})
        print(json.dumps({k: v for k, v in r.items() if k != "timeline"}), file=sys.stderr)
        h = None
        if not args.skip_reference:
            h = run_hnswlib(x, q, gt, w, args)
            raw["runs"].append({"system": "hnswlib", "writers": w, **h})
            print(json.dumps(h), file=sys.stderr)
        rows.append((w, r, h))
    with open(os.path.join(args.work, "ingest-results.json"), "w") as f:
        json.dump(raw, f, indent=1)
    print(f"| writers | system | points/s | batch p50 ms | batch p99 ms | search p99 during / idle µs | ratio "
          f"| recall@10 (L={args.search_L}) | peak RSS MiB (less input) | flushes | compactions | segments |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for w, r, h in rows:
        print(f"| {w} | nearline (durable) | {r['points_per_s']:,.0f} | {r['batch_latency_ms']['p50']:.2f} | "
              f"{r['batch_latency_ms']['p99']:.2f} | {r['search_during_ingest']['p99_us']:,.0f} / "
              f"{r['search_idle']['p99_us']:,.0f} | {r['p99_ratio']:.2f} | {r['recall_at_10']:.4f} | "
              f"{r['peak_rss_mib']:.0f} ({r['peak_rss_mib'] - r['input_mib']:.0f}) | {r['flushes']} ({r['flush_points_per_s']:,.0f} pts/s) | "
              f"{r['compactions']} ({r['compaction_seconds']:.1f} s) | {r['segments']} |")
        if h:
            ratio = h['search_during_ingest']['p99_us'] / max(h['search_idle']['p99_us'], 1e-9)
            print(f"| {w} | hnswlib (memory only) | {h['points_per_s']:,.0f} | {h['batch_latency_ms']['p50']:.2f} | "
                  f"{h['batch_latency_ms']['p99']:.2f} | {h['search_during_ingest']['p99_us']:,.0f} / "
                  f"{h['search_idle']['p99_us']:,.0f} | {ratio:.2f} | {h['recall_at_10']:.4f} | "
                  f"{h['peak_rss_mib']:.0f} ({h['peak_rss_mib'] - r['input_mib']:.0f}) | - | - | - |")
            print(f"|   | ratio nearline/hnswlib | {r['points_per_s'] / h['points_per_s']:.2f} | | | | | | | | | |")
    print("\n| writers | segments after ingest | search p50/p99 µs idle, uncompacted | compaction after ingest "
          "| segments after | search p50/p99 µs idle, compacted | recall@10 compacted |")
    print("|---|---|---|---|---|---|---|")
    for w, r, h in rows:
        ca, sc, si = r["compaction_after"], r["search_compacted"], r["search_idle"]
        rate = ca["points_in"] / ca["seconds"] if ca["seconds"] > 0 else 0
        print(f"| {w} | {r['segments']} | {si['p50_us']:,.0f} / {si['p99_us']:,.0f} | {ca['seconds']:.1f} s "
              f"({ca['points_in']:,} points in, {rate:,.0f}/s) | {ca['segments']} | {sc['p50_us']:,.0f} / "
              f"{sc['p99_us']:,.0f} | {r['recall_at_10']:.4f} |")
    for w, r, h in rows:
        tl = r["timeline"]
        step = max(1, len(tl) // 10)
        print(f"\nRSS over time, {w} writer(s) (s: MiB, points): " +
              ", ".join(f"{e['t']}: {e['rss_mib']:.0f} ({e['points'] // 1000}k)" for e in tl[::step]))


if __name__ == "__main__":
    main()
