#!/usr/bin/python3
"""Cluster benchmark (issue 14): the router's cost and horizontal scaling on this machine.

In one run, on loopback, with sift-images-420k (420K x 128 u8, k=10, L=32):

1. Router overhead. The same 6-shard collection served (a) by one node without a router
   (`nearline serve` on the database, no --zookeeper: the engine merges its 6 shards in
   process) and (b) by a one-node cluster (the same directory, --zookeeper: the router
   fans out to the 6 shards over HTTP and merges). wrk, 16 connections, one query per
   request, --rounds (3) alternated runs of each, medians. Overhead = p50(b) - p50(a), as
   a share of p50(a); and the same with one connection, where no request waits for another.
   Per extra shard of fan-out: 20,000 points in collections of 1, 2, 4 and 8 shards, one
   node with and without the router; the slope of (b - a) over the shard count.
2. Scaling. The 420K collection with 6 shards on 1, 2 and 3 nodes, each node in its own
   cgroup v1 groups: cpu quota --cpu (0.6 CPU), blkio read limit --iops (25,000) on the
   data disk, memory cap --mem (below the index size); wrk 16 connections spread over
   the nodes. QPS ratio to one node.
Every configuration also reports recall@10 (1,000 queries, ground truth of the dataset),
mean sector reads per query (/metrics) and peak RSS (VmHWM) per node; fio runs before and
after. Results as JSON on stdout and a table on stderr.

Usage: bench/bench_cluster.py [--data ../shared/data] [--work DIR] [--seconds 20]
"""
import argparse, json, os, shutil, signal, struct, subprocess, sys, threading, time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
from bench_disk import fio  # noqa: E402
from bench_serve import wrk  # noqa: E402
from harness import free_port, http  # noqa: E402

ZK = os.path.join(ROOT, "scripts", "zookeeper.sh")
CG = {"cpu": "/sys/fs/cgroup/cpu", "blkio": "/sys/fs/cgroup/blkio", "memory": "/sys/fs/cgroup/memory"}


def bvecs(path, n=None):
    raw = np.fromfile(path, dtype=np.uint8)
    d = int(raw[:4].view(np.int32)[0])
    x = raw.reshape(-1, 4 + d)[:, 4:]
    return x[:n] if n else x


def ivecs(path):
    raw = np.fromfile(path, dtype=np.int32)
    return raw.reshape(-1, raw[0] + 1)[:, 1:]


def disk_dev(path):
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    # a partition's whole disk: blkio throttles whole devices
    sysp = "/sys/dev/block/%d:%d" % (major, minor)
    if os.path.exists(sysp + "/partition"):
        parent = os.path.basename(os.path.dirname(os.path.realpath(sysp)))
        major, minor = map(int, open("/sys/class/block/%s/dev" % parent).read().split(":"))
    return "%d:%d" % (major, minor)


class Group:
    """One node's cgroups (cpu quota, read IOPS, memory cap); removed by close()."""

    def __init__(self, name, cpu, iops, mem, dev):
        self.paths = []
        for ctl, base in CG.items():
            if not os.path.isdir(base):
                continue
            p = os.path.join(base, "nearline-bench-" + name)
            os.makedirs(p, exist_ok=True)
            self.paths.append(p)
            if ctl == "cpu" and cpu:
                open(p + "/cpu.cfs_period_us", "w").write("100000")
                open(p + "/cpu.cfs_quota_us", "w").write(str(int(cpu * 100000)))
            if ctl == "blkio" and iops:
                open(p + "/blkio.throttle.read_iops_device", "w").write("%s %d" % (dev, iops))
            if ctl == "memory" and mem:
                open(p + "/memory.limit_in_bytes", "w").write(str(mem))

    def wrap(self, cmd):
        echo = " && ".join("echo $$ > %s/tasks" % p for p in self.paths)
        return ["sh", "-c", echo + ' && exec "$@"', "sh"] + cmd

    def close(self):
        for p in self.paths:
            for _ in range(50):
                try:
                    os.rmdir(p)
                    break
                except OSError:
                    time.sleep(0.1)


class Bench:
    def __init__(self, a):
        self.a = a
        self.procs = []
        self.groups = []
        self.zk_dir = os.path.join(a.work, "zk")
        self.zk_port = free_port()

    def zk_start(self):
        shutil.rmtree(self.zk_dir, ignore_errors=True)
        subprocess.run(["bash", ZK, "start", self.zk_dir, str(self.zk_port)], check=True, stdout=subprocess.DEVNULL)

    def zk_stop(self):
        subprocess.run(["bash", ZK, "stop", self.zk_dir, str(self.zk_port)], stdout=subprocess.DEVNULL)

    def node(self, db, node_id=None, group=None, root="/bench", extra=()):
        port = free_port()
        cmd = [self.a.nearline, "serve", "--db", db, "--listen", "127.0.0.1:%d" % port, "--log-level", "warn",
               "--threads", "32", "--max-concurrent", "256"] + list(extra)
        if node_id:
            cmd += ["--zookeeper", "127.0.0.1:%d" % self.zk_port, "--node-id", node_id, "--cluster-root", root]
        if group:
            cmd = group.wrap(cmd)
        log = open(db.rstrip("/") + ".log", "ab")
        p = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        self.procs.append(p)
        url = "http://127.0.0.1:%d" % port
        for _ in range(600):
            if http("GET", url + "/readyz", timeout=2)[0] == 200:
                return p, url
            if p.poll() is not None:
                raise SystemExit("node exited: see %s.log" % db)
            time.sleep(0.1)
        raise SystemExit("node not ready: %s" % db)

    def stop(self, p):
        p.send_signal(signal.SIGTERM)
        p.wait()

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.zk_stop()
        for g in self.groups:
            g.close()


def load(url, name, x, batch=1000, threads=2):
    """Upserts x (ids = row numbers) through url; points/s."""
    t0 = time.time()
    idx = list(range(0, len(x), batch))
    err = []

    def work(k):
        for i in idx[k::threads]:
            pts = [{"id": int(j), "vector": x[j].tolist()} for j in range(i, min(i + batch, len(x)))]
            for attempt in range(5):  # a retry of the same ids is safe
                st, r = http("POST", url + "/v1/collections/%s/points" % name, {"points": pts}, timeout=300)
                if st == 200:
                    break
                time.sleep(1 + attempt)
            if st != 200:
                err.append((st, r))
                return
    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if err:
        raise SystemExit("load failed: %s" % (err[0],))
    return len(x) / (time.time() - t0)


def recall_of(url, name, q, gt, L):
    ids = []
    for i in range(0, len(q), 100):
        st, r = http("POST", url + "/v1/collections/%s/search/batch" % name,
                     {"vectors": q[i:i + 100].tolist(), "k": 10, "L": L, "with_metadata": False,
                      "timeout_ms": 120000}, timeout=300)
        assert st == 200 and not r.get("partial"), r
        ids += [[h["id"] for h in row] for row in r["results"]]
    return float(np.mean([len(set(a) & set(g[:10])) / 10 for a, g in zip(ids, gt)]))


def metric(url, name):
    st, text = http("GET", url + "/metrics")
    for line in text.splitlines() if isinstance(text, str) else []:
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def hwm(p):
    try:
        for line in open("/proc/%d/status" % p.pid):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def lua_file(work, name, q, L):
    path = os.path.join(work, "search-%s.lua" % name)
    with open(path, "w") as f:
        f.write("local bodies = {\n")
        for row in q:
            # a deadline far above any latency here: the run measures throughput, and counts
            # partial answers (there must be none) instead of shedding load
            f.write("'" + json.dumps({"vector": row.tolist(), "k": 10, "L": L, "with_metadata": False,
                                      "timeout_ms": 30000}) + "',\n")
        f.write("}\nlocal i = 0\nwrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
                "request = function()\n  i = i % #bodies + 1\n"
                "  return wrk.format(nil, '/v1/collections/" + name + "/search', nil, bodies[i])\nend\n")
    return path


def drive(urls, lua, conns, seconds):
    """wrk against every url at once (conns spread over them); QPS summed, latency of each."""
    per = [conns // len(urls) + (1 if i < conns % len(urls) else 0) for i in range(len(urls))]
    out = [None] * len(urls)

    def run(i):
        out[i] = wrk(urls[i], lua, per[i], seconds)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(urls))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"qps": sum(o["qps"] for o in out), "p50_ms": float(np.median([o["p50_ms"] for o in out])),
            "p99_ms": max(o["p99_ms"] for o in out), "non2xx": sum(o["non2xx"] for o in out)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--work", default="/tmp/nearline-bench-cluster")
    ap.add_argument("--nearline", default=os.path.join(ROOT, "build", "tools", "nearline"))
    ap.add_argument("--L", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--cpu", type=float, default=0.6)
    ap.add_argument("--iops", type=int, default=25000)
    ap.add_argument("--mem", type=int, default=0, help="bytes per node; 0 = 60%% of the index")
    ap.add_argument("--points", type=int, default=0, help="0 = all")
    ap.add_argument("--rounds", type=int, default=3, help="alternated runs of the overhead comparison")
    a = ap.parse_args()
    folder = os.path.join(a.data, "sift-images-420k")
    if not os.path.isdir(folder):
        print("bench_cluster: %s not found; skipped" % folder, file=sys.stderr)
        return 0
    x = bvecs(os.path.join(folder, "base.bvecs"), a.points or None)
    q = bvecs(os.path.join(folder, "query.bvecs"))[:1000]
    gt = ivecs(os.path.join(folder, "groundtruth.ivecs"))[:1000] if not a.points else None
    if gt is None:  # a subset: exact ground truth here
        d = ((q[:, None, :].astype(np.float32) - x[None, :, :].astype(np.float32)) ** 2).sum(-1)
        gt = np.argsort(d, axis=1)[:, :10]
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    b = Bench(a)
    dev = disk_dev(a.work)
    rep = {"date": time.strftime("%Y-%m-%d"), "points": len(x), "L": a.L, "seconds": a.seconds, "cpu": a.cpu,
           "iops": a.iops}
    probe = os.path.join(a.work, "fio.dat")
    subprocess.run(["fio", "--name=mk", "--filename=" + probe, "--size=1G", "--rw=write", "--bs=1M",
                    "--output-format=terse"], check=True, capture_output=True)
    rep["fio_before"] = fio(probe, 32, 1)
    try:
        b.zk_start()
        lua = lua_file(a.work, "sift", q, a.L)
        # ---- 2 (and the data for 1): 1, 2, 3 nodes, 6 shards
        scaling = []
        for n in (1, 2, 3):
            root = "/bench%d" % n
            dbs = [os.path.join(a.work, "n%d-%d" % (n, i)) for i in range(n)]
            ps = [b.node(db, "node%d" % i, root=root) for i, db in enumerate(dbs)]
            st, _ = http("PUT", ps[0][1] + "/v1/collections/sift",
                         {"dim": 128, "dtype": "u8", "shards": 6, "index": {"R": 64, "L": 100}}, timeout=60)
            assert st == 201, st
            rate = load(ps[0][1], "sift", x)
            for p, _ in ps:  # restart: flushed to segments, a fresh RSS
                b.stop(p)
            index_bytes = sum(os.path.getsize(os.path.join(dp, f)) for db in dbs for dp, _, fs in os.walk(db)
                              for f in fs)
            mem = a.mem or int(index_bytes * 0.6 / n) + (160 << 20)
            gs = [Group("n%d-%d" % (n, i), a.cpu, a.iops, mem, dev) for i in range(n)]
            b.groups += gs
            ps = [b.node(db, "node%d" % i, group=g, root=root) for i, (db, g) in enumerate(zip(dbs, gs))]
            urls = [u for _, u in ps]
            rc = recall_of(urls[0], "sift", q, gt, a.L)
            wrk(urls[0], lua, 16, 3)  # warm
            m0 = {k: sum(metric(u, k) for u in urls) for k in ("nearline_router_fanouts_total",
                  "nearline_search_ios_total", "nearline_router_partial_answers_total")}
            r = drive(urls, lua, 16, a.seconds)
            m1 = {k: sum(metric(u, k) for u in urls) for k in m0}
            d = {k: m1[k] - m0[k] for k in m0}
            r.update({"nodes": n, "recall": rc, "load_pts_s": rate, "index_bytes": index_bytes, "mem_cap": mem,
                      "mean_ios": d["nearline_search_ios_total"] / max(1.0, d["nearline_router_fanouts_total"]),
                      "partial_answers": d["nearline_router_partial_answers_total"], "rss": [hwm(p) for p, _ in ps]})
            scaling.append(r)
            print("scale %d nodes: %s" % (n, {k: v for k, v in r.items() if k != "rss"}), file=sys.stderr)
            for p, _ in ps:
                b.stop(p)
            if n == 1:
                one_db = dbs[0]
        rep["scaling"] = scaling
        # ---- 1. router overhead on the 420K collection: the 1-node database with and without the router
        over = {"single": {"runs": []}, "router": {"runs": []}}
        g = Group("over", 0, 0, scaling[0]["mem_cap"], dev)
        b.groups.append(g)
        for rnd in range(a.rounds):  # alternated, medians reported: the machine is noisy
            for mode in ("single", "router"):
                p, u = b.node(one_db, "node0" if mode == "router" else None, group=g, root="/bench1")
                if rnd == 0:
                    over[mode]["recall"] = recall_of(u, "sift", q, gt, a.L)
                wrk(u, lua, 16, 3)  # warm
                r = drive([u], lua, 16, a.seconds)
                r["one_connection"] = drive([u], lua, 1, max(5, a.seconds // 2))
                r["rss"] = hwm(p)
                over[mode]["runs"].append(r)
                print("overhead %s round %d: %s" % (mode, rnd, r), file=sys.stderr)
                b.stop(p)
        for mode in over:
            runs = over[mode]["runs"]
            for key in ("qps", "p50_ms", "p99_ms"):
                over[mode][key] = float(np.median([r[key] for r in runs]))
                over[mode]["one_connection_" + key] = float(np.median([r["one_connection"][key] for r in runs]))
            over[mode]["rss"] = max(r["rss"] for r in runs)
        rep["overhead"] = over
        # per extra shard: 20K points, 1/2/4/8 shards, one node with and without the router
        small = x[:20000]
        fan = []
        for S in (1, 2, 4, 8):
            db = os.path.join(a.work, "fan%d" % S)
            p, u = b.node(db, "f%d" % S, root="/fan%d" % S)
            http("PUT", u + "/v1/collections/sift", {"dim": 128, "dtype": "u8", "shards": S}, timeout=60)
            load(u, "sift", small)
            b.stop(p)
            row = {"shards": S}
            for mode in ("single", "router"):
                p, u = b.node(db, "f%d" % S if mode == "router" else None, root="/fan%d" % S)
                wrk(u, lua, 16, 2)
                row[mode] = drive([u], lua, 16, max(5, a.seconds // 2))
                b.stop(p)
            row["overhead_ms"] = row["router"]["p50_ms"] - row["single"]["p50_ms"]
            fan.append(row)
            print("fan-out %d shards: %s" % (S, row), file=sys.stderr)
        slope = float(np.polyfit([r["shards"] for r in fan], [r["overhead_ms"] for r in fan], 1)[0])
        rep["fanout"] = fan
        rep["overhead_per_extra_shard_ms"] = slope
    finally:
        b.close()
    rep["fio_after"] = fio(probe, 32, 1)
    os.unlink(probe)
    s1 = rep["scaling"][0]["qps"]
    o = rep["overhead"]
    print("\n| nodes | QPS | x one node | p50 ms | p99 ms | recall@10 | mean I/Os | peak RSS per node (MiB) | mem cap (MiB) |",
          file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rep["scaling"]:
        print("| %d | %.0f | %.2f | %.2f | %.2f | %.4f | %.1f | %s | %d |" % (
            r["nodes"], r["qps"], r["qps"] / s1, r["p50_ms"], r["p99_ms"], r["recall"], r["mean_ios"],
            " / ".join("%.0f" % (v / 2 ** 20) for v in r["rss"]), r["mem_cap"] >> 20), file=sys.stderr)
    print("\nrouter overhead at p50, 16 connections: %.2f ms on %.2f ms = %.1f%% (QPS %.0f vs %.0f)" % (
        o["router"]["p50_ms"] - o["single"]["p50_ms"], o["single"]["p50_ms"],
        100 * (o["router"]["p50_ms"] - o["single"]["p50_ms"]) / o["single"]["p50_ms"], o["router"]["qps"],
        o["single"]["qps"]), file=sys.stderr)
    print("one connection (no queueing): p50 %.2f ms through the router vs %.2f ms on one node" % (
        o["router"]["one_connection_p50_ms"], o["single"]["one_connection_p50_ms"]), file=sys.stderr)
    print("per extra shard of fan-out: %.3f ms; fio %.0f -> %.0f IOPS" % (
        rep["overhead_per_extra_shard_ms"], rep["fio_before"], rep["fio_after"]), file=sys.stderr)
    json.dump(rep, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
