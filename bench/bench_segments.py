#!/usr/bin/python3
"""bench_segments.py NEARLINE [--data ../shared/data] [--set sift|fashion] [--n 100000]
[--segments 8] [--work DIR] [--cap-mb N] — what a search costs across the segments of one
shard (issue 28, part 1): one beam with one list of L over all of them (`--segments joint`,
the default) against a walk per segment with L x sqrt(its share) of the list, at least k
(`--segments each`, the rule before), and the same points bulk-imported into one segment as
the reference.

The first --n points of the set are streamed over HTTP (batches of 1,000) into a 1-shard
collection of `nearline serve` that flushes every n/segments points and never merges
(--compact-max-segments 64), so the shard ends as about --segments segments, as a shard
under streaming does before its compactions. The server is stopped; then `nearline search`
sweeps list sizes over the same 1,000 queries (2 threads, k=10) on that database in both
modes and on the imported one, each inside a cgroup-v1 memory cap (--cap-mb, default 0: none)
when one is given. Reported per L: recall@10 against brute force over those n points, mean
reads per query, QPS, p50/p99 latency; then reads and QPS at recall 0.95..0.995
interpolated on each curve, and the ratios. fio (4 KiB random reads) runs before and after.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "cluster"))
from harness import free_port, http  # noqa: E402
from nlbench import ARGS, DATA_DEFAULT, bvecs, capped, fio, opt, truth, write_vecs  # noqa: E402

NL = os.path.abspath(ARGS[0])
DATA = opt("--data", DATA_DEFAULT)
SET = opt("--set", "sift")
N = int(opt("--n", "100000"))
SEGS = int(opt("--segments", "8"))
CAP = int(opt("--cap-mb", "0"))
NQ, K = 1000, 10
LS = "10,12,16,20,24,32,40,48,64,80,100,128"


def load_set():
    if SET == "sift":
        x = bvecs(os.path.join(DATA, "sift-images-420k", "base.bvecs"), N)
        q = bvecs(os.path.join(DATA, "sift-images-420k", "query.bvecs"), NQ)
    else:
        def u8bin(p):
            h = np.fromfile(p, dtype=np.int32, count=2)
            return np.fromfile(p, dtype=np.uint8, offset=8).reshape(int(h[0]), int(h[1]))
        x = u8bin(os.path.join(DATA, "fashion-mnist-60k", "base.u8bin"))[:N].astype(np.float32)
        q = u8bin(os.path.join(DATA, "fashion-mnist-60k", "query.u8bin"))[:NQ].astype(np.float32)
    return x, q


def call(port, method, path, body=None, timeout=120):
    return http(method, "http://127.0.0.1:%d%s" % (port, path), body, timeout=timeout)


def stream(db, x):
    """Streams x into a 1-shard collection that flushes every n/SEGS points; returns its segments."""
    port = free_port()
    every = max(1000, len(x) // SEGS)
    srv = subprocess.Popen([NL, "serve", "--db", db, "--listen", "127.0.0.1:%d" % port, "--flush-points", str(every),
                            "--flush-age-ms", "600000", "--compact-max-segments", "64"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if call(port, "GET", "/v1/collections")[0] == 200:
                break
            time.sleep(0.1)
        st, ans = call(port, "PUT", "/v1/collections/c", {"dim": x.shape[1], "metric": "l2", "shards": 1,
                                                           "index": {"fresh_capacity": every * 2}})
        assert st == 201, (st, ans)
        for s in range(0, len(x), 1000):
            pts = [{"id": i, "vector": x[i].tolist()} for i in range(s, min(s + 1000, len(x)))]
            st, ans = call(port, "POST", "/v1/collections/c/points", {"points": pts})
            assert st == 200, (st, ans)
        # the points still fresh are flushed when the server closes (one more segment)
        st, d = call(port, "GET", "/v1/collections/c")
        assert st == 200, (st, d)
        return d["stats"]["segments"] + (d["stats"]["fresh_points"] > 0)
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(timeout=120)


def search(db, qpath, gtpath, mode):
    cmd = capped(CAP, "nearline-segments") + ["/usr/bin/time", "-f", "RSS %M", NL, "search", "--db", db, "--collection", "c", "--queries",
                      qpath, "--k", str(K), "--L", LS, "--threads", "2", "--groundtruth", gtpath, "--segments", mode]
    p = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rss = [int(l.split()[1]) for l in p.stderr.splitlines() if l.startswith("RSS ")]
    rows = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    return rows, (rss[-1] // 1024 if rss else 0)


def at(rows, target, key):
    """key (mean_ios or qps) interpolated where recall crosses target; None if never reached."""
    pts = [(r["recall_at_k"], r[key]) for r in rows]
    if pts[0][0] >= target:
        return pts[0][1], True
    for (r0, v0), (r1, v1) in zip(pts, pts[1:]):
        if r0 < target <= r1:
            return v0 + (v1 - v0) * (target - r0) / (r1 - r0), False
    return None, False


def main():
    work = tempfile.mkdtemp(prefix="nl-segs-", dir=opt("--work", None))
    try:
        x, q = load_set()
        gt = truth(x, q, K)
        qpath, gtpath, xpath = (os.path.join(work, f) for f in ("q.fvecs", "gt.ivecs", "x.fvecs"))
        write_vecs(qpath, q, np.float32)
        write_vecs(gtpath, gt, np.int32)
        write_vecs(xpath, x, np.float32)
        t0 = time.time()
        nseg = stream(os.path.join(work, "streamed"), x)
        print("streamed %d x %d (%s) in %.0f s: %d segments" % (len(x), x.shape[1], SET, time.time() - t0, nseg))
        imp = os.path.join(work, "imported")
        subprocess.run([NL, "import", "--db", imp, "--collection", "c", "--input", xpath, "--quiet"], check=True)
        fio_before = fio(xpath)
        runs = [("one segment (import)", imp, "joint"), ("streamed, a walk per segment (before)",
                os.path.join(work, "streamed"), "each"), ("streamed, one beam (now)", os.path.join(work, "streamed"),
                "joint")]
        res = []
        for name, db, mode in runs:
            rows, rss = search(db, qpath, gtpath, mode)
            res.append((name, rows, rss))
        fio_after = fio(xpath)
        print("fio 4 KiB random reads (IOPS): before %d, after %d; memory cap %s" %
              (fio_before, fio_after, "%d MiB" % CAP if CAP else "none"))
        print()
        print("| L | " + " | ".join("%s: recall@10 / reads / QPS / p99 us" % n for n, _, _ in res) + " |")
        print("|---|" + "---|" * len(res))
        for i, L in enumerate(LS.split(",")):
            cells = []
            for _, rows, _ in res:
                r = rows[i]
                cells.append("%.4f / %.1f / %.0f / %.0f" % (r["recall_at_k"], r["mean_ios"], r["qps"],
                                                              r["latency_us"]["p99"]))
            print("| %s | %s |" % (L, " | ".join(cells)))
        print()
        print("peak RSS MiB: " + ", ".join("%s %d" % (n, rss) for n, _, rss in res))
        print()
        print("| recall@10 | " + " | ".join("%s: reads / QPS" % n for n, _, _ in res) +
              " | now / before (reads) | now / one segment (reads) |")
        print("|---|" + "---|" * (len(res) + 2))
        for target in (0.95, 0.98, 0.99, 0.995):
            cells, reads = [], []
            for _, rows, _ in res:
                (r, floor), (qps, _) = at(rows, target, "mean_ios"), at(rows, target, "qps")
                reads.append(r)
                cells.append("-" if r is None else "%s%.1f / %.0f" % ("<=" if floor else "", r, qps))
            ratio = lambda a, b: "-" if a is None or b is None or b == 0 else "%.2fx" % (a / b)
            print("| %.3f | %s | %s | %s |" % (target, " | ".join(cells), ratio(reads[2], reads[1]),
                                               ratio(reads[2], reads[0])))
    finally:
        if "--keep" in ARGS:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
