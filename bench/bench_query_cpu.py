#!/usr/bin/python3
"""bench_query_cpu.py BASELINE NEARLINE [--data ../shared/data] [--runs 3] [--cap-mb 128] —
the CPU a disk query costs (issue 28), two binaries side by side on the same database.

fashion-mnist-60k (784-d u8, l2) is bulk-imported once by BASELINE (the older binary, so
both can open it); then, alternating the two binaries run by run (--runs times each, inside
one cgroup-v1 memory cap below the index size), `nearline search` with the default cache:
 - throughput: 2 threads x 16 queries in flight, list sizes 10..64: recall@10, QPS, reads;
 - latency: 1 thread, one query at a time (--inflight 1), at the smallest list size that
   reached recall@10 0.95 in the throughput runs: p50 and p99.
Reported: medians over the runs, QPS at recall 0.95 interpolated on each curve, and the
ratios new / baseline. fio (4 KiB random reads) runs before and after, since this disk is
rate-limited in bursts.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from nlbench import ARGS, DATA_DEFAULT, capped, fio, opt  # noqa: E402

BASE, NEW = os.path.abspath(ARGS[0]), os.path.abspath(ARGS[1])
DATA = os.path.join(opt("--data", DATA_DEFAULT), "fashion-mnist-60k")
RUNS = int(opt("--runs", "3"))
CAP = int(opt("--cap-mb", "128"))
LS = "10,12,16,20,24,32,48,64"


def search(nl, db, L, threads, inflight):
    cmd = capped(CAP, "nearline-cpu") + [nl, "search", "--db", db, "--collection", "f", "--queries", os.path.join(DATA, "query.u8bin"),
                      "--groundtruth", os.path.join(DATA, "groundtruth.ivecs"), "--k", "10", "--L", L, "--threads",
                      str(threads), "--inflight", str(inflight)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def qps_at(rows, target):
    pts = [(r["recall_at_k"], r["qps"]) for r in rows]
    for (r0, v0), (r1, v1) in zip(pts, pts[1:]):
        if r0 < target <= r1:
            return v0 + (v1 - v0) * (target - r0) / (r1 - r0)
    return pts[0][1] if pts[0][0] >= target else None


def main():
    work = tempfile.mkdtemp(prefix="nl-cpu-", dir=opt("--work", None))
    try:
        db = os.path.join(work, "db")
        subprocess.run([BASE, "import", "--db", db, "--collection", "f", "--input",
                        os.path.join(DATA, "base.u8bin"), "--quiet"], check=True, stdout=subprocess.DEVNULL)
        seg = [os.path.join(dp, f) for dp, _, fs in os.walk(db) for f in fs if f.endswith(".nls")]
        fio_before = fio(seg[0])
        curves = {BASE: [], NEW: []}
        for _ in range(RUNS):
            for nl in (BASE, NEW):
                curves[nl].append(search(nl, db, LS, 2, 16))
        # the smallest L at which the baseline's median recall reaches 0.95
        Ls = [int(x) for x in LS.split(",")]
        med = lambda nl, i, key: statistics.median(run[i][key] for run in curves[nl])
        L95 = next((L for i, L in enumerate(Ls) if med(BASE, i, "recall_at_k") >= 0.95), Ls[-1])
        lat = {BASE: [], NEW: []}
        for _ in range(RUNS):
            for nl in (BASE, NEW):
                lat[nl].append(search(nl, db, str(L95), 1, 1)[0])
        fio_after = fio(seg[0])
        print("fashion-mnist-60k (784-d), %d runs each, memory cap %d MiB; fio 4 KiB random reads: before %d, "
              "after %d IOPS" % (RUNS, CAP, fio_before, fio_after))
        print()
        print("| L | baseline: recall@10 / QPS / reads | new: recall@10 / QPS / reads | QPS new / baseline |")
        print("|---|---|---|---|")
        for i, L in enumerate(Ls):
            b = (med(BASE, i, "recall_at_k"), med(BASE, i, "qps"), med(BASE, i, "mean_ios"))
            n = (med(NEW, i, "recall_at_k"), med(NEW, i, "qps"), med(NEW, i, "mean_ios"))
            print("| %d | %.4f / %.0f / %.1f | %.4f / %.0f / %.1f | %.2fx |" % (L, *b, *n, n[1] / b[1]))
        print()
        q = {}
        for nl in (BASE, NEW):
            rows = [{"recall_at_k": med(nl, i, "recall_at_k"), "qps": med(nl, i, "qps")} for i in range(len(Ls))]
            q[nl] = qps_at(rows, 0.95)
        if q[BASE] and q[NEW]:
            print("QPS at recall@10 0.95 (2 threads): baseline %.0f, new %.0f, %.2fx" % (q[BASE], q[NEW],
                                                                                       q[NEW] / q[BASE]))
        for nl, name in ((BASE, "baseline"), (NEW, "new")):
            p50 = statistics.median(r["latency_us"]["p50"] for r in lat[nl])
            p99 = statistics.median(r["latency_us"]["p99"] for r in lat[nl])
            print("1 thread, one query at a time, L=%d: %s p50 %.0f us, p99 %.0f us" % (L95, name, p50, p99))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
