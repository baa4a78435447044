#!/usr/bin/python3
"""bench_shard_budget.py NEARLINE [--n 100000] [--data ../shared/data] — what a search costs
across hash-placed shards (issue 28, part 3): the router asking every shard for the whole k
and L (`"per_shard": "full"`, the rule before) against asking each for its share
(`"scaled"`, nl_shard_map_budget, with the second round for a shard whose last result
still makes the answer), and one shard as the reference.

One node of a cluster (a real ZooKeeper on loopback, tests/cluster/harness.py), the first
--n points of sift-images-420k streamed over HTTP (batches of 1,000) into a collection of 1
shard and one of 8, flushed to segments (--flush-age-ms 2000), then 1,000 queries sent in
batches of 100 at list sizes 6..100: recall@10 against brute force on those n points,
mean disk reads per query (the answer's "ios": every shard's reads, second rounds
included), queries per second (one client), and the shards asked again. Reads at recall
0.95..0.999 are interpolated on each curve; the tables go to stdout.
"""
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "cluster"))
from harness import Cluster, http  # noqa: E402

NL = os.path.abspath(sys.argv[1])
N = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 100000
DATA = sys.argv[sys.argv.index("--data") + 1] if "--data" in sys.argv else os.path.join(HERE, "..", "..", "shared", "data")
NQ, K = 1000, 10
LS = (6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 100)


def bvecs(path, n):
    raw = np.fromfile(path, dtype=np.uint8)
    d = int(raw[:4].view(np.int32)[0])
    return raw.reshape(-1, 4 + d)[:n, 4:].astype(np.float32)


def load(node, coll, shards, x):
    st, ans = node.call("PUT", "/v1/collections/" + coll, {"dim": x.shape[1], "metric": "l2", "shards": shards})
    assert st == 201, (st, ans)
    for s in range(0, len(x), 1000):
        pts = [{"id": i, "vector": x[i].tolist()} for i in range(s, min(s + 1000, len(x)))]
        st, ans = node.call("POST", "/v1/collections/%s/points" % coll, {"points": pts}, timeout=120)
        assert st == 200, (st, ans)
    for _ in range(600):
        st, d = node.call("GET", "/v1/collections/" + coll)
        if st == 200 and d["stats"]["fresh_points"] == 0:
            return d["stats"]
        time.sleep(0.5)
    raise AssertionError("not flushed")


def run(node, coll, q, gt, L, per_shard):
    t0, rec, ios = time.time(), 0.0, 0
    req0 = node.metric("nearline_router_search_requeries_total")
    for s in range(0, len(q), 100):
        body = {"vectors": q[s:s + 100].tolist(), "k": K, "L": L, "with_metadata": False, "per_shard": per_shard,
                "timeout_ms": 60000}
        st, ans = node.call("POST", "/v1/collections/%s/search/batch" % coll, body, timeout=120)
        assert st == 200 and not ans.get("partial"), (st, str(ans)[:300])
        for qi, res in enumerate(ans["results"]):
            rec += len({r["id"] for r in res} & set(gt[s + qi].tolist())) / K
        ios += sum(ans["ios"])
    took = time.time() - t0
    return rec / len(q), ios / len(q), len(q) / took, node.metric("nearline_router_search_requeries_total") - req0


def at_recall(rows, target):
    """Reads at the target recall, interpolated between the two list sizes around it; a
    curve already above it at its smallest list gives that point's reads, marked '<='."""
    pts = sorted((r[1], r[2]) for r in rows)
    if pts and pts[0][0] >= target:
        return pts[0][1], "<="
    for (r0, i0), (r1, i1) in zip(pts, pts[1:]):
        if r0 < target <= r1:
            return i0 + (i1 - i0) * (target - r0) / (r1 - r0), ""
    return None, ""


def main():
    x = bvecs(os.path.join(DATA, "sift-images-420k", "base.bvecs"), N)
    q = bvecs(os.path.join(DATA, "sift-images-420k", "query.bvecs"), NQ)
    d = (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]
    gt = np.argsort(d, axis=1, kind="stable")[:, :K]
    with Cluster(NL, key=None) as cl:
        node = cl.node("a").start(["--flush-age-ms", "2000", "--flush-points", "50000"])
        stats = {c: load(node, c, s, x) for c, s in (("one", 1), ("eight", 8))}
        print("%d points streamed: 1 shard %d segments, 8 shards %d segments" % (
            N, stats["one"]["segments"], stats["eight"]["segments"]), flush=True)
        print("| collection | per_shard | L | recall@10 | reads/query | QPS | shards asked again |\n|---|---|---|---|---|---|---|")
        curves = {}
        for coll, mode in (("one", "full"), ("eight", "full"), ("eight", "scaled")):
            rows = []
            for L in LS:
                rec, ios, qps, again = run(node, coll, q, gt, L, mode)
                rows.append((L, rec, ios))
                print("| %s | %s | %d | %.4f | %.1f | %.0f | %d |" % (coll, mode, L, rec, ios, qps, again), flush=True)
            curves[(coll, mode)] = rows
        print("\n| recall@10 | 1 shard | 8 shards, full | 8 shards, scaled | scaled / 1 shard | scaled / full |\n"
              "|---|---|---|---|---|---|")
        for target in (0.95, 0.98, 0.99, 0.995, 0.999):
            got = [at_recall(curves[key], target) for key in (("one", "full"), ("eight", "full"), ("eight", "scaled"))]
            cell = ["%s%.1f" % (m, r) if r else "not reached" for r, m in got]
            ratio = lambda a, b: "%.2fx" % (a[0] / b[0]) if a[0] and b[0] else "-"  # noqa: E731
            print("| %.3f | %s | %s | %s | %s | %s |" % (target, cell[0], cell[1], cell[2], ratio(got[2], got[0]),
                                                         ratio(got[2], got[1])))

if __name__ == "__main__":
    main()
