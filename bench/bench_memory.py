#!/usr/bin/python3
"""In-memory index benchmark: nearline's Vamana vs hnswlib and FAISS HNSW, same data,
same threads, one run. Each system builds and searches in its own process so its peak
RSS is its own. Prints a markdown table (build time, peak RSS, QPS at recall@10 = 0.95
and 0.99) and writes the raw sweeps as JSON.

QPS at a target recall is that of the cheapest swept setting that reaches the target
(no interpolation: a conservative reading). Usage:
  bench/bench_memory.py [--data ../shared/data] [--threads 2] [--sets fashion-mnist-60k,sift-images-420k]
                        [--nearline build/tools/nearline] [--json out.json]
"""
import argparse, json, os, resource, subprocess, sys, time

SETS = {
    "fashion-mnist-60k": ("base.u8bin", "query.u8bin", "groundtruth.ivecs"),
    "sift-images-420k": ("base.bvecs", "query.bvecs", "groundtruth.ivecs"),
    "sift-5k": ("base.bvecs", "query.bvecs", "groundtruth.ivecs"),
    "bigann-10k": ("base.bvecs", "query.bvecs", "groundtruth.ivecs"),
}
SWEEP = [10, 15, 20, 30, 40, 50, 60, 80, 100, 120, 150, 200, 300]


def load(path):
    import numpy as np
    if path.endswith(".bvecs"):
        raw = np.fromfile(path, dtype=np.uint8)
        d = int(raw[:4].view(np.int32)[0])
        return raw.reshape(-1, d + 4)[:, 4:]
    if path.endswith(".ivecs") or path.endswith(".fvecs"):
        raw = np.fromfile(path, dtype=np.int32)
        d = raw[0]
        m = raw.reshape(-1, d + 1)[:, 1:]
        return m.view(np.float32) if path.endswith(".fvecs") else m
    if path.endswith(".u8bin") or path.endswith(".fbin"):
        n, d = np.fromfile(path, dtype=np.int32, count=2)
        dt = np.uint8 if path.endswith(".u8bin") else np.float32
        return np.fromfile(path, dtype=dt, offset=8).reshape(n, d)
    raise ValueError(path)


def reference(kind, base, query, gt, threads, out):
    """Runs in a child process: build, sweep, print JSON."""
    import numpy as np
    xb = load(base).astype(np.float32)
    xq = load(query).astype(np.float32)
    g = load(gt)[:, :10]
    n, d = xb.shape
    t0 = time.time()
    if kind == "hnswlib":
        import hnswlib
        ix = hnswlib.Index(space="l2", dim=d)
        ix.init_index(max_elements=n, M=16, ef_construction=200, random_seed=1)
        ix.set_num_threads(threads)
        ix.add_items(xb, np.arange(n))
        params = "M=16 efC=200"
    else:
        import faiss
        faiss.omp_set_num_threads(threads)
        ix = faiss.IndexHNSWFlat(d, 32)
        ix.hnsw.efConstruction = 40
        ix.add(xb)
        params = "M=32 efC=40"
    build_s = time.time() - t0
    res = []
    for ef in SWEEP:
        if kind == "hnswlib":
            ix.set_ef(max(ef, 10))
            best = None
            for _ in range(2):
                t = time.time(); labels, _ = ix.knn_query(xq, k=10, num_threads=threads); el = time.time() - t
                best = el if best is None else min(best, el)
        else:
            ix.hnsw.efSearch = max(ef, 10)
            best = None
            for _ in range(2):
                t = time.time(); _, labels = ix.search(xq, 10); el = time.time() - t
                best = el if best is None else min(best, el)
        hits = sum(len(set(labels[i][:10].tolist()) & set(g[i].tolist())) for i in range(len(xq)))
        res.append({"L": ef, "recall_at_k": hits / (10.0 * len(xq)), "qps": len(xq) / best})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    json.dump({"system": kind, "params": params, "build_s": build_s, "peak_rss_bytes": rss, "results": res}, open(out, "w"))


def qps_at(results, target):
    ok = [r for r in results if r["recall_at_k"] >= target]
    if not ok:
        return None, None
    r = max(ok, key=lambda r: r["qps"])
    return r["qps"], r["L"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default="fashion-mnist-60k,sift-images-420k")
    ap.add_argument("--nearline", default=os.path.join(os.path.dirname(__file__), "..", "build", "tools", "nearline"))
    ap.add_argument("--R", type=int, default=32)
    ap.add_argument("--L", type=int, default=100)
    ap.add_argument("--json", default="bench-memory.json")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, base, query, gt, out = a.child
        reference(kind, base, query, gt, a.threads, out)
        return
    if not os.path.isdir(a.data):
        print(f"bench_memory: dataset folder {a.data} not found", file=sys.stderr)
        sys.exit(2)
    all_rows, raw = [], {}
    for name in a.sets.split(","):
        b, q, g = (os.path.join(a.data, name, f) for f in SETS[name])
        runs = []
        cmd = [a.nearline, "mem-bench", "--base", b, "--queries", q, "--groundtruth", g, "--threads",
               str(a.threads), "--R", str(a.R), "--L", str(a.L), "--repeat", "2",
               "--search-L", ",".join(map(str, SWEEP))]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        nl = json.loads(out.strip().splitlines()[-1])
        nl["system"] = "nearline"
        nl["params"] = f"R={a.R} L={a.L} alpha=1.2 two-pass"
        runs.append(nl)
        for kind in ("hnswlib", "faiss-hnsw"):
            tmp = f"/tmp/bench_memory_{os.getpid()}_{kind}.json"
            subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--child", kind, b, q, g, tmp],
                           check=True)
            runs.append(json.load(open(tmp)))
            os.unlink(tmp)
        raw[name] = runs
        for r in runs:
            q95, l95 = qps_at(r["results"], 0.95)
            q99, l99 = qps_at(r["results"], 0.99)
            all_rows.append((name, r["system"], r["params"], r["build_s"], r["peak_rss_bytes"] / 2**20,
                             q95, l95, q99, l99))
    json.dump(raw, open(a.json, "w"), indent=1)
    print(f"| dataset | system | params | build s | peak RSS MiB | QPS @0.95 (L/ef) | QPS @0.99 (L/ef) |")
    print("|---|---|---|---|---|---|---|")
    fmt = lambda q, l: "not reached" if q is None else f"{q:,.0f} ({l})"
    for r in all_rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.0f} | {fmt(r[5], r[6])} | {fmt(r[7], r[8])} |")
    # ratios against the best reference per dataset
    print()
    for name in raw:
        rows = [r for r in all_rows if r[0] == name]
        nlr = [r for r in rows if r[1] == "nearline"][0]
        refs = [r for r in rows if r[1] != "nearline"]
        hn = [r for r in refs if r[1] == "hnswlib"][0]
        best95 = max((r[5] or 0) for r in refs)
        print(f"{name}: build time nearline/hnswlib = {nlr[3] / hn[3]:.2f}; "
              f"QPS@0.95 nearline/best-reference = {(nlr[5] or 0) / best95:.2f}" if best95 else f"{name}: no reference reached 0.95")


if __name__ == "__main__":
    main()
