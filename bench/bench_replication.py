#!/usr/bin/python3
"""Replication benchmark (issue 15): what replicas cost writes, what they give reads, and
how fast a shard fails over. Three nodes on loopback (harness.py), ZooKeeper on its own,
--session-timeout-ms 3000, --replica-timeout-ms 1500, in one run:

1. Ingest: 6-shard collections of RF=1 (the reference: no replication), RF=2 and RF=3
   (quorum all), --points points of sift-images-420k (128 x u8; generated clustered data
   when ../shared is absent) sent as 100-point batches by --writers concurrent clients
   through the three nodes (the machine saturated: throughput, and latency with queueing),
   then --latency-batches more by one client (latency without queueing). Then every node
   is restarted (SIGTERM flushes), so the searches below read segments. Points/s, batch
   latency p50/p99 (ms), and replication lag sampled from /metrics every 200 ms during the
   saturated phase (the largest lag in entries and ms of any follower).
2. Search: the RF=1 and RF=2 collections queried through the router with wrk (16
   connections over the three nodes, one query per request, k=10, L=32, --seconds each,
   --rounds alternated rounds, medians): QPS and p50/p99, and recall@10 against exact
   ground truth over the points loaded (RF=2 must equal RF=1: the same data).
3. Failover: --kills times, the primary of shard 0 of the RF=2 collection is SIGKILLed
   while a prober writes one point to that shard every 20 ms through another node and a
   history workload writes and deletes (tests/cluster/history.py); failover time = first
   acknowledged write after the kill; the node is restarted and caught up before the next.
   Median and maximum, and the history check over the whole loop (acknowledged writes
   lost must be 0).
4. One slow node: n3 in a cgroup of --slow-cpu (0.1) CPU, the same searches through n1 and
   n2: RF=1 waits for n3's shards, RF=2 reads them from (or hedges to) the other replica.
Peak RSS (VmHWM) of each node and fio before and after. JSON on stdout, a table on stderr.

Usage: bench/bench_replication.py [--data ../shared/data] [--points 60000] [--kills 20]
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
from bench_cluster import bvecs, drive, hwm, lua_file  # noqa: E402
from bench_disk import fio  # noqa: E402
from harness import Cluster, http  # noqa: E402
import history  # noqa: E402

ARGS = ["--replica-timeout-ms", "1500", "--threads", "32"]


def say(*a):
    print(*a, file=sys.stderr, flush=True)


def wait(pred, timeout, step=0.2):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if pred():
                return True
        except Exception:  # noqa: BLE001
            pass
        time.sleep(step)
    return False


def in_sync(node, coll):
    st, d = node.call("GET", "/v1/collections/" + coll)
    return st == 200 and all(sorted(s["in_sync"]) == sorted(s["replicas"]) for s in d["shard_map"])


def lag_sampler(nodes, stop, out):
    while not stop.is_set():
        for n in nodes:
            st, text = http("GET", n.url + "/metrics", timeout=2)
            for line in text.splitlines() if isinstance(text, str) else []:
                m = re.match(r"nearline_replication_lag_(ops|ms)\{[^}]*\} (\d+)", line)
                if m:
                    out[m.group(1)].append(int(m.group(2)))
        time.sleep(0.2)


def ingest(nodes, coll, x, writers, batch=100, id0=0):
    lat, lock, errors, why = [], threading.Lock(), [0], []
    n = len(x)
    chunks = list(range(0, n, batch))
    nxt = [0]

    def work(w):
        node = nodes[w % len(nodes)]
        while True:
            with lock:
                if nxt[0] >= len(chunks):
                    return
                s = chunks[nxt[0]]
                nxt[0] += 1
            pts = [{"id": int(id0 + i), "vector": x[i].tolist()} for i in range(s, min(s + batch, n))]
            t0 = time.time()
            st, ans = node.call("POST", "/v1/collections/%s/points" % coll, {"points": pts}, timeout=60)
            dt = (time.time() - t0) * 1000
            with lock:
                lat.append(dt)
                errors[0] += st != 200
                if st != 200 and len(why) < 3:
                    why.append("%s %s" % (st, json.dumps(ans)[:300]))
    t0 = time.time()
    ts = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    secs = time.time() - t0
    lat.sort()
    return {"points": n, "seconds": round(secs, 2), "points_per_s": round(n / secs), "batch_p50_ms":
            round(lat[len(lat) // 2], 2), "batch_p99_ms": round(lat[int(len(lat) * 0.99)], 2), "errors": errors[0],
            "error_samples": why}


def recall(node, coll, q, gt, L=32):
    hits = 0
    for i in range(0, len(q), 50):
        st, ans = node.call("POST", "/v1/collections/%s/search/batch" % coll,
                            {"vectors": q[i:i + 50].tolist(), "k": 10, "L": L, "with_metadata": False}, timeout=60)
        for r, g in zip(ans["results"], gt[i:i + 50]):
            hits += len({h["id"] for h in r} & set(g.tolist()))
    return hits / (10.0 * len(q))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--nearline", default=os.path.join(ROOT, "build", "tools", "nearline"))
    ap.add_argument("--points", type=int, default=60000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--latency-batches", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--slow-cpu", type=float, default=0.1)
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "bench-replication"))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    base = os.path.join(a.data, "sift-images-420k", "base.bvecs")
    if os.path.exists(base):
        x = bvecs(base, a.points).astype(np.float32)
        q = bvecs(os.path.join(a.data, "sift-images-420k", "query.bvecs"), 200).astype(np.float32)
        data = "sift-images-420k (first %d)" % a.points
    else:
        rng = np.random.default_rng(15)
        c = rng.normal(size=(64, 128)) * 40 + 60
        x = np.clip(c[rng.integers(0, 64, a.points)] + rng.normal(size=(a.points, 128)) * 12, 0, 255).round()
        q = np.clip(c[rng.integers(0, 64, 200)] + rng.normal(size=(200, 128)) * 12, 0, 255).round()
        x, q = x.astype(np.float32), q.astype(np.float32)
        data = "generated clusters (%d x 128, u8)" % a.points
    d2 = (q ** 2).sum(1)[:, None] - 2 * q @ x.T + (x ** 2).sum(1)[None, :]
    gt = np.argsort(d2, axis=1)[:, :10]
    res = {"date": time.strftime("%Y-%m-%d"), "data": data, "session_timeout_ms": 3000, "replica_timeout_ms": 1500}
    fio_file = os.path.join(a.work, "fio.dat")
    subprocess.run(["fio", "--name=mk", "--filename=" + fio_file, "--size=1G", "--rw=write", "--bs=1M",
                    "--output-format=terse"], check=True, capture_output=True)
    res["fio_before_iops"] = round(fio(fio_file, 32, 1))
    with Cluster(a.nearline, session_ms=3000) as cl:
        nodes = [cl.node(i).start(ARGS) for i in ("n1", "n2", "n3")]
        res["ingest"] = {}
        for rf in (1, 2, 3):
            coll = "rf%d" % rf
            st, _ = nodes[0].call("PUT", "/v1/collections/" + coll, {"dim": 128, "dtype": "u8", "shards": 6,
                                                                      "replicas": rf}, timeout=60)
            assert st == 201, st
            stop, lags = threading.Event(), {"ops": [], "ms": []}
            th = threading.Thread(target=lag_sampler, args=(nodes, stop, lags), daemon=True)
            th.start()
            r = ingest(nodes, coll, x, a.writers)
            stop.set()
            th.join()
            # latency without queueing: one client, one 100-point batch at a time
            one = ingest(nodes, coll, x[:a.latency_batches * 100], 1, id0=10 ** 6)
            r["one_writer_points_per_s"] = one["points_per_s"]
            r["one_writer_batch_p50_ms"] = one["batch_p50_ms"]
            r["one_writer_batch_p99_ms"] = one["batch_p99_ms"]
            r["errors"] += one["errors"]
            r["lag_ops_max"] = max(lags["ops"], default=0)
            r["lag_ms_max"] = max(lags["ms"], default=0)
            r["lag_ops_p99"] = sorted(lags["ops"])[int(len(lags["ops"]) * 0.99)] if lags["ops"] else 0
            res["ingest"]["RF=%d" % rf] = r
            say("ingest RF=%d: %s" % (rf, r))
        # every node stopped (SIGTERM flushes) and started again: the searches run against
        # segments, with no flush under way
        for n in nodes:
            n.stop()
        for n in nodes:
            n.start(ARGS)
        for coll in ("rf1", "rf2", "rf3"):
            wait(lambda: in_sync(nodes[0], coll), 120)
        res["search"] = {}
        lua = {c: lua_file(a.work, c, q.astype(np.uint8).astype(np.float32), 32) for c in ("rf1", "rf2")}
        runs = {"rf1": [], "rf2": []}
        for _ in range(a.rounds):
            for c in ("rf1", "rf2"):
                runs[c].append(drive([n.url for n in nodes], lua[c], 16, a.seconds))
        for c in ("rf1", "rf2"):
            rr = runs[c]
            res["search"]["RF=%s" % c[2]] = {
                "qps": round(statistics.median(r["qps"] for r in rr)),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rr), 2),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rr), 2),
                "non2xx": sum(r["non2xx"] for r in rr), "recall_at_10": round(recall(nodes[0], c, q, gt), 4)}
        res["search"]["qps_ratio_rf2_rf1"] = round(res["search"]["RF=2"]["qps"] / res["search"]["RF=1"]["qps"], 2)
        say("search: %s" % res["search"])
        # one slow node (a CPU quota of --slow-cpu on n3): RF=1 waits for its shards, RF=2
        # hedges to the other replica. wrk through n1 and n2.
        cg = "/sys/fs/cgroup/cpu/nearline-bench-slow"
        if os.path.isdir("/sys/fs/cgroup/cpu"):
            os.makedirs(cg, exist_ok=True)
            open(cg + "/cpu.cfs_period_us", "w").write("100000")
            open(cg + "/cpu.cfs_quota_us", "w").write(str(int(a.slow_cpu * 100000)))
            open(cg + "/cgroup.procs", "w").write(str(nodes[2].proc.pid))
            slow = {"rf1": [], "rf2": []}
            for _ in range(2):
                for c in ("rf1", "rf2"):
                    slow[c].append(drive([n.url for n in nodes[:2]], lua[c], 16, a.seconds))
            open("/sys/fs/cgroup/cpu/cgroup.procs", "w").write(str(nodes[2].proc.pid))
            for _ in range(50):
                try:
                    os.rmdir(cg)
                    break
                except OSError:
                    time.sleep(0.1)
            res["search_one_slow_node"] = {"slow_node_cpu": a.slow_cpu}
            for c in ("rf1", "rf2"):
                rr = slow[c]
                res["search_one_slow_node"]["RF=%s" % c[2]] = {
                    "qps": round(statistics.median(r["qps"] for r in rr)),
                    "p50_ms": round(statistics.median(r["p50_ms"] for r in rr), 2),
                    "p99_ms": round(statistics.median(r["p99_ms"] for r in rr), 2)}
            say("one slow node: %s" % res["search_one_slow_node"])
        # failover
        wl = history.Workload(lambda: [n.url for n in nodes if n.proc.poll() is None], "fo", 3, clients=2, ids=400)
        st, _ = nodes[0].call("PUT", "/v1/collections/fo", {"dim": history.DIM, "shards": 3, "replicas": 2},
                              timeout=60)
        wl.start()
        times = []
        for k in range(a.kills):
            st, dsc = nodes[k % 3].call("GET", "/v1/collections/rf2")
            victim = cl.nodes[dsc["shard_map"][0]["primary"]]
            other = [n for n in nodes if n is not victim]
            ids = [i for i in range(10 ** 7, 10 ** 7 + 20000) if history.shard_of(i, 6) == 0][:200]
            t_kill = [None]
            got = [None]
            stop = threading.Event()

            def probe():
                j = 0
                while not stop.is_set():
                    i = ids[j % len(ids)]
                    j += 1
                    started = time.time()  # only a write begun after the kill counts
                    st2, _ = http("POST", other[j % 2].url + "/v1/collections/rf2/points",
                                  {"points": [{"id": i, "vector": x[0].tolist()}]}, timeout=15)
                    if st2 == 200 and t_kill[0] and started > t_kill[0] and got[0] is None:
                        got[0] = time.time() - t_kill[0]
                    time.sleep(0.02)
            th = threading.Thread(target=probe, daemon=True)
            th.start()
            time.sleep(0.5)
            t_kill[0] = time.time()
            victim.kill()
            wait(lambda: got[0] is not None, 30, 0.02)
            stop.set()
            th.join()
            times.append(got[0] if got[0] is not None else float("inf"))
            say("kill %d (%s): writes to its shard again after %.2f s" % (k + 1, victim.id, times[-1]))
            victim.start(ARGS)
            wait(lambda: in_sync(other[0], "rf2") and in_sync(other[0], "fo"), 90, 0.3)
        wl.stop()
        wait(lambda: in_sync(nodes[0], "fo"), 60)
        rep = history.check(wl.h, lambda: random.choice(nodes).url, "fo")
        res["failover"] = {"kills": a.kills, "median_s": round(statistics.median(times), 2),
                           "max_s": round(max(times), 2), "all_within_10s": all(t < 10 for t in times),
                           "history_ok_ops": rep["ok_ops"], "history_indeterminate": rep["indeterminate_ops"],
                           "acknowledged_lost": len(rep["lost"]) + len(rep["resurrected"]),
                           "phantom": len(rep["phantom"])}
        say("failover: %s" % res["failover"])
        res["peak_rss_mb"] = {n.id: round(hwm(n.proc) / 2 ** 20) for n in nodes}
    res["fio_after_iops"] = round(fio(fio_file, 32, 1))
    os.unlink(fio_file)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
