#!/usr/bin/python3
"""Disk index benchmark (issue 3): nearline from disk vs the disk's ceiling (fio) and FAISS
IVF-PQ with exact re-rank in RAM, in one run, same data and threads.

Steps: fio 4 KiB random reads (io_uring, O_DIRECT) at QD64 and 2 jobs x QD32 on the index
file; import each dataset (timed); sweep L with W=4 at 1 thread (one query in flight) and
2 threads (--inflight queries each) with a node cache of 5% of the index, each search run
inside a cgroup-v1 memory cap below the index size (so the page cache cannot hold the
index); FAISS IVF1024,PQ32 + refine (k_factor 10) sweeping nprobe. Prints a markdown table,
the target checks, writes raw JSON and a recall-vs-QPS plot (gnuplot).

Usage: bench/bench_disk.py [--data ../shared/data] [--glove DIR] [--work DIR] [--out docs/img]
"""
import argparse, json, os, resource, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CG = "/sys/fs/cgroup/memory/nearline-bench"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def capped(cmd, cap_bytes):
    """Runs cmd inside a memory cgroup capped at cap_bytes (page cache included)."""
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        print("bench_disk: no cgroup v1 memory controller; running uncapped", file=sys.stderr)
        return sh(cmd), False
    os.makedirs(CG, exist_ok=True)
    open(f"{CG}/memory.limit_in_bytes", "w").write(str(cap_bytes))
    try:
        open(f"{CG}/memory.force_empty", "w").write("0")
    except OSError:
        pass
    wrapped = ["sh", "-c", f'echo $$ > {CG}/tasks && exec "$@"', "sh"] + cmd
    return sh(wrapped), True


def fio(path, qd, jobs):
    out = sh(["fio", "--name=ceiling", f"--filename={path}", "--readonly", "--rw=randread", "--bs=4k",
              "--direct=1", "--ioengine=io_uring", f"--iodepth={qd}", f"--numjobs={jobs}", "--runtime=10",
              "--time_based", "--group_reporting", "--output-format=json"])
    j = json.loads(out)
    return sum(job["read"]["iops"] for job in j["jobs"])


def faiss_child(base, query, gt, metric, threads, out):
    import numpy as np, faiss
    sys.path.insert(0, HERE)
    from bench_memory import load
    xb = load(base).astype(np.float32)
    xq = load(query).astype(np.float32)
    g = load(gt)[:, :10]
    if metric == "cosine":
        faiss.normalize_L2(xb)
        faiss.normalize_L2(xq)
    faiss.omp_set_num_threads(threads)
    d = xb.shape[1]
    t0 = time.time()
    q = faiss.IndexFlatL2(d)
    # FAISS needs M to divide d: the divisor closest to 32 (glove-100: 25).
    m = min((x for x in range(1, d + 1) if d % x == 0), key=lambda x: (abs(x - 32), -x))
    ivf = faiss.IndexIVFPQ(q, d, 1024, m, 8)
    rng = np.random.default_rng(1)
    ivf.train(xb[rng.choice(len(xb), min(len(xb), 100000), replace=False)])
    ix = faiss.IndexRefineFlat(ivf)  # adds to the IVF-PQ and keeps the exact vectors
    ix.add(xb)
    ix.k_factor = 10
    build_s = time.time() - t0
    res = []
    for nprobe in [1, 2, 4, 8, 16, 32, 64]:
        ivf.nprobe = nprobe
        best = None
        for _ in range(2):
            t = time.time(); _, I = ix.search(xq, 10); el = time.time() - t
            best = el if best is None else min(best, el)
        hits = sum(len(set(I[i].tolist()) & set(g[i].tolist())) for i in range(len(xq)))
        res.append({"nprobe": nprobe, "recall_at_k": hits / (10.0 * len(xq)), "qps": len(xq) / best})
    json.dump({"build_s": build_s, "pq_m": m, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "results": res}, open(out, "w"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--glove", default=None, help="folder made by shared/data/recipes/glove-100.sh")
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "bench-disk"))
    ap.add_argument("--nearline", default=os.path.join(ROOT, "build", "tools", "nearline"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    ap.add_argument("--inflight", type=int, default=16)
    ap.add_argument("--sweep", default="20,30,40,50,60,80,100")
    ap.add_argument("--resume", action="store_true", help="reuse per-dataset results saved in --work by an earlier run")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        base, query, gt, metric, threads, out = a.child
        faiss_child(base, query, gt, metric, int(threads), out)
        return
    sets = [("sift-images-420k", os.path.join(a.data, "sift-images-420k"), "base.bvecs", "query.bvecs", "l2")]
    if a.glove and os.path.isdir(a.glove):
        sets.append(("glove-100", a.glove, "base.fvecs", "query.fvecs", "cosine"))
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    db = os.path.join(a.work, "db")
    report = {"date": time.strftime("%Y-%m-%d"), "sets": {}}
    for name, folder, bf, qf, metric in sets:
        b, q, g = (os.path.join(folder, f) for f in (bf, qf, "groundtruth.ivecs"))
        saved = os.path.join(a.work, f"result-{name}.json")
        if a.resume and os.path.exists(saved):
            report["sets"][name] = json.load(open(saved))
            continue
        coll = name.replace(".", "_")
        subprocess.run(["rm", "-rf", os.path.join(db, coll)], check=True)
        t0 = time.time()
        imp = json.loads(sh([a.nearline, "import", "--db", db, "--collection", coll, "--input", b, "--metric", metric,
                             "--R", "64", "--L", "100", "--threads", "2", "--quiet"]))
        imp["wall_s"] = time.time() - t0
        seg = imp["segment"]
        index_bytes = imp["segment_bytes"]
        iops64 = fio(seg, 64, 1)
        iops2x32 = fio(seg, 32, 2)
        cache = int(index_bytes * 0.05)
        cap = max(96 << 20, index_bytes // 2)
        runs = {}
        for threads, inflight in ((1, 1), (2, a.inflight)):
            out, was_capped = capped([a.nearline, "search", "--db", db, "--collection", coll, "--queries", q,
                                      "--groundtruth", g, "--k", "10", "--L", a.sweep, "--beam", "4",
                                      "--threads", str(threads), "--inflight", str(inflight),
                                      "--cache-budget", str(cache)], cap)
            runs[f"{threads}t"] = [json.loads(l) for l in out.strip().splitlines()]
        tmp = os.path.join(a.work, "faiss.json")
        subprocess.run([sys.executable, __file__, "--child", b, q, g, metric, "2", tmp], check=True)
        fa = json.load(open(tmp))
        report["sets"][name] = {"import": imp, "fio_qd64": iops64, "fio_2x32": iops2x32, "cache_bytes": cache,
                                "memory_cap": cap, "capped": was_capped, "runs": runs, "faiss": fa,
                                "index_bytes": index_bytes, "date": report["date"]}
        json.dump(report["sets"][name], open(saved, "w"), indent=1)
    json.dump(report, open(os.path.join(a.work, "bench-disk.json"), "w"), indent=1)
    # Table.
    print(f"Date {report['date']}; W=4; k=10; node cache 5% of the index; searches in a memory cgroup capped below the index size.\n")
    for name, r in report["sets"].items():
        imp = r["import"]
        print(f"### {name}: {imp['points']:,} points, dim {imp['dim']}, {imp['dtype']}, index {r['index_bytes']/2**20:.0f} MiB, "
              f"import {imp['wall_s']:.0f} s (pq {imp['seconds']['pq']:.0f} s, build {imp['seconds']['build']:.0f} s), "
              f"memory cap {r['memory_cap']/2**20:.0f} MiB ({'enforced' if r['capped'] else 'NOT enforced'})")
        print(f"fio 4 KiB randread io_uring O_DIRECT: QD64 {r['fio_qd64']:,.0f} IOPS; 2 jobs x QD32 {r['fio_2x32']:,.0f} IOPS\n")
        print("| threads | in flight | L | recall@10 | QPS | p50 us | p99 us | mean I/Os | IOPS | % of fio QD64 | RAM at open MiB | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for key, rows in r["runs"].items():
            for x in rows:
                iops = x["qps"] * x["mean_ios"]
                print(f"| {x['threads']} | {x['inflight']} | {x['L']} | {x['recall_at_k']:.4f} | {x['qps']:,.0f} | "
                      f"{x['latency_us']['p50']:,.0f} | {x['latency_us']['p99']:,.0f} | {x['mean_ios']:.1f} | {iops:,.0f} | "
                      f"{100*iops/r['fio_qd64']:.0f}% | {x['ram_at_open_bytes']/2**20:.1f} | {x['peak_rss_bytes']/2**20:.0f} |")
        fa = r["faiss"]
        print(f"\nFAISS IVF1024,PQ{fa['pq_m']} + exact re-rank (k_factor 10), 2 threads, all in RAM: build {fa['build_s']:.0f} s, peak RSS {fa['peak_rss_bytes']/2**20:.0f} MiB\n")
        print("| nprobe | recall@10 | QPS |")
        print("|---|---|---|")
        for x in fa["results"]:
            print(f"| {x['nprobe']} | {x['recall_at_k']:.4f} | {x['qps']:,.0f} |")
        # Targets at recall >= 0.95.
        def first95(rows):
            ok = [x for x in rows if x["recall_at_k"] >= 0.95]
            return min(ok, key=lambda x: x["L"]) if ok else None
        t2, t1 = first95(r["runs"]["2t"]), first95(r["runs"]["1t"])
        fa95 = [x for x in fa["results"] if x["recall_at_k"] >= 0.95]
        print()
        if t2:
            util = t2["qps"] * t2["mean_ios"] / r["fio_qd64"]
            print(f"- device busy at recall {t2['recall_at_k']:.3f} (L={t2['L']}), 2 threads: QPS x I/Os = {t2['qps']*t2['mean_ios']:,.0f} = {100*util:.0f}% of fio QD64 (target >= 70%)")
            budget = imp["points"] * imp["pq_bytes"] + r["cache_bytes"] + (64 << 20)
            print(f"- RAM: RSS {t2['peak_rss_bytes']/2**20:.0f} MiB vs PQ bytes + cache + 64 MiB = {budget/2**20:.0f} MiB (target: at most)")
            if fa95:
                f = max(fa95, key=lambda x: x["qps"])
                print(f"- FAISS in RAM at recall {f['recall_at_k']:.3f}: {f['qps']:,.0f} QPS with {fa['peak_rss_bytes']/2**20:.0f} MiB; nearline from disk {t2['qps']:,.0f} QPS = {t2['qps']/f['qps']:.2f}x, RSS {t2['peak_rss_bytes']/fa['peak_rss_bytes']:.2f}x")
        if t1:
            print(f"- 1 thread at recall {t1['recall_at_k']:.3f} (L={t1['L']}): {t1['qps']:,.0f} QPS, p99 {t1['latency_us']['p99']/1000:.2f} ms (target <= 3 ms)")
        print()
    # Plot.
    dat = os.path.join(a.work, "plot.dat")
    with open(dat, "w") as f:
        for name, r in report["sets"].items():
            for key, rows in r["runs"].items():
                f.write(f"# {name} nearline {key}\n")
                for x in rows:
                    f.write(f"{x['recall_at_k']} {x['qps']}\n")
                f.write("\n\n")
            f.write(f"# {name} faiss\n")
            for x in r["faiss"]["results"]:
                f.write(f"{x['recall_at_k']} {x['qps']}\n")
            f.write("\n\n")
    png = os.path.join(a.out, "disk-recall-qps.png")
    plots, idx = [], 0
    for name, r in report["sets"].items():
        for key in r["runs"]:
            plots.append(f"'{dat}' index {idx} with linespoints title '{name} nearline disk {key}'")
            idx += 1
        plots.append(f"'{dat}' index {idx} with linespoints dashtype 2 title '{name} FAISS IVF-PQ+rerank RAM 2t'")
        idx += 1
    script = (f"set terminal pngcairo size 900,600 noenhanced; set output '{png}'; set logscale y; set grid;"
              f"set xrange [0.8:1]; set xlabel 'recall@10'; set ylabel 'QPS (log scale)'; set key bottom left;"
              f"set title 'nearline from disk vs FAISS in RAM (same run, {report['date']})';"
              f"plot {', '.join(plots)}")
    try:
        subprocess.run(["gnuplot", "-e", script], check=True)
        print(f"plot: {os.path.relpath(png, ROOT)}")
    except Exception as e:
        print(f"plot skipped: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
