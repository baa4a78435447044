#!/usr/bin/env python3
"""Codes and layout benchmark (issue 17): recall per disk read with the code the import
chooses (RaBitQ, docs/decisions.md) and the block layout against the PQ path of before,
and the quality of the codes against FAISS's PQ and OPQ+PQ at equal bytes. Run with
/usr/bin/python3 (Debian's numpy and faiss).

Per set, in one run on the same machine and threads:
  - import twice with the same graph parameters (R 64, L 100, 2 threads): --code
    pq:<default size> --layout rows (the path before issue 17) and the defaults (code
    chosen from the data, block layout); the default's sweep is run twice, with the
    search using whole sectors (the default) and with --sector off, which walks the same
    graph with the same codes as a row-order layout would (only ordinals differ), with
    --seeds off (every walk from the medoid alone, not also from the seed table's members
    nearest the query) and with both off, so the sweeps separate what the code, the
    layout and the seeds each give;
  - with --budget (hard set only): a third import of the defaults under
    --memory-budget, the partitioned build (its merged segment rewritten in block layout),
    swept both ways like the default, and compared with the in-memory build at equal L;
  - fio 4 KiB random reads on the index file before and after the searches;
  - searches from disk inside a cgroup-v1 memory cap below the index size (node cache
    5 % of the index for both), 2 threads x 16 queries in flight, a sweep of L: recall@10,
    mean reads, QPS; the reads needed for recall 0.95 interpolated on each curve and their
    ratio; then 1 thread with 1 query in flight at the first L reaching 0.95: p50/p99;
  - code quality: for 200 queries, the share of the true 10 nearest that a code ranks in
    the top 30 of the exact 240 nearest (the estimate the import chooses by, at L=50),
    for nearline's codes (`nearline codes --queries`) and FAISS PQ/OPQ at the same bytes.
Sets: a hard generated set (`nearline gen --hard`, 1M x 128-d u8 by default), fashion-
mnist-60k and sift-images-420k from ../shared/data, glove-100 with --glove.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_disk import sh, capped as capped_at, fio as fio_at  # noqa: E402  (one copy of the helpers)


def capped(cmd, cap):
    return capped_at(cmd, cap)[0]


def peak_cgroup():
    cg = "/sys/fs/cgroup/memory/nearline-bench"
    try:
        v = int(open(f"{cg}/memory.max_usage_in_bytes").read())
        open(f"{cg}/memory.max_usage_in_bytes", "w").write("0")
        return v
    except OSError:
        return 0


def fio(path):
    return fio_at(path, 64, 1)


def read_vecs(path):
    """fvecs/bvecs/ivecs, or u8bin/fbin."""
    if path.endswith(".u8bin") or path.endswith(".fbin"):
        n, d = np.fromfile(path, dtype=np.int32, count=2)
        dt = np.uint8 if path.endswith(".u8bin") else np.float32
        return np.fromfile(path, dtype=dt, offset=8).reshape(n, d).astype(np.float32)
    if path.endswith(".bvecs"):
        a = np.fromfile(path, dtype=np.uint8)
        d = int(a[:4].view(np.int32)[0])
        return a.reshape(-1, d + 4)[:, 4:].astype(np.float32)
    a = np.fromfile(path, dtype=np.int32)
    d = a[0]
    a = a.reshape(-1, d + 1)[:, 1:]
    return a.view(np.float32) if path.endswith(".fvecs") else a


def faiss_quality(base, queries, metric, nbytes, nq=200, T=240, top=30):
    """The import's estimate, computed for FAISS PQ and OPQ+PQ codes of nbytes."""
    import faiss
    X, Q = read_vecs(base), read_vecs(queries)[:nq]
    if metric == "cosine":
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        Q = Q / np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-12)
    d = X.shape[1]
    flat = faiss.IndexFlatL2(d) if metric != "ip" else faiss.IndexFlatIP(d)
    flat.add(X)
    _, I = flat.search(Q, T)
    rng = np.random.default_rng(1)
    # Debian's FAISS (1.7.3, no SIMD) trains PQ32 on 20K rows in ~150 s here: 10K rows and
    # 8 OPQ rounds keep the reference to minutes (39 rows a centroid, FAISS's own floor).
    train = X[rng.choice(len(X), min(len(X), 10000), replace=False)]
    out = {}
    for name in ("PQ", "OPQ"):
        m = nbytes
        while d % m:  # FAISS PQ needs m | d
            m -= 1
        key = f"PQ{m}" if name == "PQ" else f"OPQ{m},PQ{m}"
        ix = faiss.index_factory(d, key, faiss.METRIC_L2 if metric != "ip" else faiss.METRIC_INNER_PRODUCT)
        if name == "OPQ":
            faiss.downcast_VectorTransform(faiss.downcast_index(ix).chain.at(0)).niter = 8
        ix.train(train)
        hits = 0
        for qi in range(len(Q)):
            ids = I[qi]
            rec = ix.sa_decode(ix.sa_encode(X[ids]))
            est = ((rec - Q[qi]) ** 2).sum(1) if metric != "ip" else -(rec @ Q[qi])
            order = np.argsort(est, kind="stable")[:top]
            hits += len(set(order.tolist()) & set(range(10)))
        out[f"faiss {key} ({m} B)"] = hits / (10 * len(Q))
    return out


def at_recall(rows, target=0.95):
    """Reads (and L) at which the sweep first reaches target, interpolated between points."""
    prev = None
    for x in rows:
        if x["recall_at_k"] >= target:
            if prev is None or x["recall_at_k"] == prev["recall_at_k"]:
                return x["mean_ios"], x["L"]
            f = (target - prev["recall_at_k"]) / (x["recall_at_k"] - prev["recall_at_k"])
            return prev["mean_ios"] + f * (x["mean_ios"] - prev["mean_ios"]), x["L"]
        prev = x
    return None, None


def run_set(a, name, base, query, gt, metric, pqm):
    db = os.path.join(a.work, "db")
    res = {"metric": metric, "runs": {}}
    seg = None
    runs = [(f"pq:{pqm}", f"pq:{pqm}", ["--layout", "rows"]), ("default", "auto", [])]
    if a.budget and name.startswith("hard"):
        runs.append((f"default, budget {a.budget}", "auto", ["--memory-budget", a.budget]))
    for label, code, extra in runs:
        coll = (name + "_" + label).replace(":", "").replace("-", "_").replace(".", "_").replace(", ", "_").replace(" ", "_")
        subprocess.run(["rm", "-rf", os.path.join(db, coll)], check=True)
        t0 = time.time()
        imp = json.loads(sh([a.nearline, "import", "--db", db, "--collection", coll, "--input", base, "--metric", metric,
                             "--R", "64", "--L", "100", "--threads", "2", "--code", code, "--quiet"] + extra).splitlines()[-1])
        imp["wall_s"] = time.time() - t0
        insp = json.loads(sh([a.nearline, "inspect", "--db", db]))
        info = [c for c in insp["collections"] if c["name"] == coll][0]
        seg = imp["segment"]
        size = imp["segment_bytes"]
        cache = int(size * 0.05)
        cap = max(int(size * 0.5), info["ram_at_open_bytes"] + cache + (160 << 20))
        run = {"import": imp, "code": info["code"], "code_bytes_per_point": info["code_bytes_per_point"],
               "ram_at_open_bytes": info["ram_at_open_bytes"], "points": info["points"], "index_bytes": size,
               "cap_bytes": cap, "cap_below_index": cap < size, "code_choice": info.get("code_choice")}
        run["fio_before"] = fio(seg)
        sweep = [a.nearline, "search", "--db", db, "--collection", coll, "--queries", query, "--groundtruth", gt,
                 "--k", "10", "--L", a.sweep, "--threads", "2", "--inflight", "16", "--cache-budget", str(cache)]
        laid = imp.get("layout", {}).get("blocks")
        out = capped(sweep, cap)
        run["sweep"] = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
        run["peak_cgroup_bytes"] = peak_cgroup()
        reads, L95 = at_recall(run["sweep"])
        run["reads_at_095"], run["L_at_095"] = reads, L95
        if laid:  # the same graph and codes, one record a read
            out = capped(sweep + ["--sector", "off"], cap)
            run["sweep_sector_off"] = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
            run["reads_at_095_sector_off"] = at_recall(run["sweep_sector_off"])[0]
        if not label.startswith("pq"):  # the same search starting from the medoid alone
            out = capped(sweep + ["--seeds", "off"], cap)
            run["sweep_seeds_off"] = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
            run["reads_at_095_seeds_off"] = at_recall(run["sweep_seeds_off"])[0]
            out = capped(sweep + ["--seeds", "off", "--sector", "off"], cap)  # the code alone
            run["sweep_plain"] = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
            run["reads_at_095_plain"] = at_recall(run["sweep_plain"])[0]
        if L95:
            one = capped([a.nearline, "search", "--db", db, "--collection", coll, "--queries", query, "--groundtruth",
                          gt, "--k", "10", "--L", str(L95), "--threads", "1", "--inflight", "1",
                          "--cache-budget", str(cache)], cap)
            run["one_thread"] = json.loads(one.splitlines()[-1])
        run["fio_after"] = fio(seg)
        res["runs"][label] = run
        print(f"{name} {label}: {run['code']} {run['code_bytes_per_point']} B/pt, reads@0.95 {reads}, L {L95}, "
              f"sector off {run.get('reads_at_095_sector_off')}", flush=True)
    # code quality: nearline's estimate and FAISS's, same queries, same measure
    ncodes = ",".join(sorted({f"pq:{pqm}", res["runs"]["default"]["code"], "rabitq:1", "rabitq:2", "rabitq:3",
                              "rabitq:4"}))
    est = json.loads(sh([a.nearline, "codes", "--input", base, "--metric", metric, "--queries", query,
                         "--candidates", ncodes, "--threads", "2"]))
    res["nearline_codes"] = {c["code"] + f" ({c['bytes_per_point']} B)": c["estimated_recall_at_10"]
                             for c in est["candidates"]}
    res["faiss"] = {}
    if a.faiss:
        try:
            res["faiss"] = faiss_quality(base, query, metric, pqm)
        except Exception as e:  # the reference is informative; its absence is said
            res["faiss"] = {"error": str(e)}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--glove", default=None)
    ap.add_argument("--hard-n", type=int, default=1000000)
    ap.add_argument("--sets", default="hard,fashion-mnist-60k,sift-images-420k")
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "bench-codes"))
    ap.add_argument("--nearline", default=os.path.join(ROOT, "build", "tools", "nearline"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    ap.add_argument("--sweep", default="10,15,20,30,50,75,100,150,200")
    ap.add_argument("--faiss", action="store_true", help="FAISS PQ/OPQ code quality (slow: minutes a set)")
    ap.add_argument("--budget", default=None, help="also build the hard set under this --memory-budget (partitioned)")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "sets": {}}
    want = a.sets.split(",")
    sets = []
    if "hard" in want:
        h = os.path.join(a.work, f"hard-{a.hard_n}")
        os.makedirs(h, exist_ok=True)
        if not os.path.exists(os.path.join(h, "gt.ivecs")):
            sh([a.nearline, "gen", "--hard", "--n", str(a.hard_n), "--dim", "128", "--out", os.path.join(h, "base.bvecs"),
                "--queries", "1000", "--queries-out", os.path.join(h, "query.bvecs"), "--groundtruth-out",
                os.path.join(h, "gt.ivecs"), "--gt-k", "10", "--seed", "17"])
        sets.append((f"hard-{a.hard_n // 1000}k", os.path.join(h, "base.bvecs"), os.path.join(h, "query.bvecs"),
                     os.path.join(h, "gt.ivecs"), "l2", 32))
    for nm, bf, qf, metric, pqm in (("fashion-mnist-60k", "base.u8bin", "query.u8bin", "l2", 96),
                                    ("sift-images-420k", "base.bvecs", "query.bvecs", "l2", 32)):
        if nm in want and os.path.isdir(os.path.join(a.data, nm)):
            f = os.path.join(a.data, nm)
            sets.append((nm, os.path.join(f, bf), os.path.join(f, qf), os.path.join(f, "groundtruth.ivecs"), metric, pqm))
    if a.glove and os.path.isdir(a.glove):
        sets.append(("glove-100", os.path.join(a.glove, "base.fvecs"), os.path.join(a.glove, "query.fvecs"),
                     os.path.join(a.glove, "groundtruth.ivecs"), "cosine", 32))
    for s in sets:
        report["sets"][s[0]] = run_set(a, *s)
        json.dump(report, open(os.path.join(a.work, "report.json"), "w"), indent=1)
    print_report(report, a)


def print_report(report, a):
    print(f"\nDate {report['date']}; R 64, build L 100; W 4; k 10; node cache 5 % of the index; "
          f"searches in a cgroup-v1 memory cap.\n")
    for name, r in report["sets"].items():
        pq, dfl = r["runs"][next(k for k in r["runs"] if k.startswith("pq"))], r["runs"]["default"]
        print(f"### {name} ({r['metric']})\n")
        print("| run | code | B/point | layout (overlap) | RAM at open MiB | cap MiB (index MiB) | reads @0.95 | L @0.95 | "
              "recall@10 at L=50 | QPS 2t at L@0.95 | 1t p50/p99 us | peak cgroup MiB | fio QD64 before/after |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label, x in r["runs"].items():
            l50 = next((s for s in x["sweep"] if s["L"] == 50), {})
            lq = next((s for s in x["sweep"] if s["L"] == x["L_at_095"]), {})
            one = x.get("one_thread", {}).get("latency_us", {})
            lay = x["import"].get("layout", {})
            lays = f"{'blocks' if lay.get('blocks') else 'rows'} ({lay.get('overlap', 0):.2f})"
            print(f"| {label} | {x['code']} | {x['code_bytes_per_point']} | {lays} | {x['ram_at_open_bytes'] / 2**20:.1f} | "
                  f"{x['cap_bytes'] / 2**20:.0f} ({x['index_bytes'] / 2**20:.0f}) | "
                  f"{x['reads_at_095'] and round(x['reads_at_095'], 1)} | {x['L_at_095']} | "
                  f"{l50.get('recall_at_k')} | {lq.get('qps')} | {one.get('p50')}/{one.get('p99')} | "
                  f"{x['peak_cgroup_bytes'] / 2**20:.0f} | {x['fio_before']:,.0f}/{x['fio_after']:,.0f} |")
            for key, flags, what in (("sector_off", "--sector off", "same graph, one record a read"),
                                     ("plain", "--sector off --seeds off", "same index, one record a read, from the medoid"),
                                     ("seeds_off", "--seeds off", "same index, walks from the medoid alone")):
                if x.get("sweep_" + key):
                    off = x["reads_at_095_" + key]
                    print(f"| {label}, {flags} | {x['code']} | | {what} | | | {off and round(off, 1)} | | "
                          f"{next((s['recall_at_k'] for s in x['sweep_' + key] if s['L'] == 50), None)} | | | | |")
        if pq["reads_at_095"] and dfl["reads_at_095"]:
            print(f"\nreads at recall 0.95, default / pq: {dfl['reads_at_095'] / pq['reads_at_095']:.2f}x", end="")
            parts = []
            if dfl.get("reads_at_095_plain"):
                parts.append(f"the code alone (--sector off --seeds off): {dfl['reads_at_095_plain'] / pq['reads_at_095']:.2f}x")
            if dfl.get("reads_at_095_sector_off"):
                parts.append(f"whole sectors: {dfl['reads_at_095'] / dfl['reads_at_095_sector_off']:.2f}x")
            if dfl.get("reads_at_095_seeds_off"):
                parts.append(f"the seeds: {dfl['reads_at_095'] / dfl['reads_at_095_seeds_off']:.2f}x")
            if parts:
                print(f" ({'; '.join(parts)})", end="")
            print()
        elif dfl["reads_at_095"]:
            print(f"\nPQ never reached 0.95 in the sweep (best {max(s['recall_at_k'] for s in pq['sweep'])})")
        bud = next((x for k, x in r["runs"].items() if "budget" in k), None)
        for key, what in (("sweep_sector_off", "both --sector off (the graphs alone)"), ("sweep", "both as searched")):
            if not bud or not dfl.get(key) or not bud.get(key):
                continue
            print(f"\nbudgeted build (partitioned) against the in-memory build, {what}:")
            print("\n| L | in-memory recall | budgeted recall | in-memory reads | budgeted reads | reads ratio |")
            print("|---|---|---|---|---|---|")
            for s in dfl[key]:
                b = next((t for t in bud[key] if t["L"] == s["L"]), None)
                if b:
                    print(f"| {s['L']} | {s['recall_at_k']} | {b['recall_at_k']} | {s['mean_ios']} | {b['mean_ios']} | "
                          f"{b['mean_ios'] / s['mean_ios']:.3f} |")
        print("\ncode quality (share of the true 10 in a code's top 30 of the exact 240 nearest, 200 queries):")
        for k, v in {**r["nearline_codes"], **r["faiss"]}.items():
            print(f"- {k}: {v}")
        print()
    dat = os.path.join(a.work, "recall-reads.dat")
    plots, idx = [], 0
    with open(dat, "w") as f:
        for name, r in report["sets"].items():
            for label, x in r["runs"].items():
                for title, sw in ((f"{name} {x['code']} {label}", x["sweep"]),
                                  (f"{name} {x['code']} sector off", x.get("sweep_sector_off"))):
                    if not sw or "budget" in label:
                        continue
                    f.write(f"# {title}\n")
                    for s in sw:
                        f.write(f"{s['mean_ios']} {s['recall_at_k']}\n")
                    f.write("\n\n")
                    plots.append(f"'{dat}' index {idx} with linespoints title '{title}'")
                    idx += 1
    png = os.path.join(a.out, "codes-recall-reads.png")
    script = (f"set terminal pngcairo size 900,600 noenhanced; set output '{png}'; set grid; set logscale x;"
              f"set yrange [0.5:1]; set xlabel 'mean reads per query (log)'; set ylabel 'recall@10'; set key bottom right;"
              f"set title 'recall per disk read: default code and layout vs PQ ({report['date']})'; plot {', '.join(plots)}")
    done = subprocess.run(["gnuplot", "-e", script], capture_output=True, text=True)
    print(f"plot: {os.path.relpath(png, ROOT)}" if done.returncode == 0 else f"plot skipped: {done.stderr.strip()}",
          file=sys.stdout if done.returncode == 0 else sys.stderr)


if __name__ == "__main__":
    main()
