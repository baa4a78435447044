#!/usr/bin/python3
"""Rebalance benchmark (issue 16): moving shard replicas on a live cluster, on loopback.

In one run, on sift-images-420k (420K x 128 u8; L=32, k=10):

1. The disk's sequential rates (fio, 1 MiB blocks, O_DIRECT, write then read) and its 4K
   random-read ceiling before and after (the disk is rate-limited in bursts: a run where
   the two differ is suspect).
2. Three nodes, a collection of 8 shards x --replicas (2), loaded over HTTP and flushed to
   segments. Idle: wrk --conns (8) connections of searches spread over the nodes for
   --seconds (15): QPS, p50, p99, recall@10 on 1,000 queries.
3. A fourth node joins; the coordinator rebalances on its own. Meanwhile the same search
   load runs in windows of 5 s, and a writer upserts batches of 100 (retrying a 503 as a
   client does). Reported: time from the join to a balanced cluster with no move left,
   bytes moved (the snapshot pieces sent, compressed, and the raw bytes of the copies),
   move throughput (raw bytes / the time the copies took) against the disk's sequential
   rates, search p99 during the move against idle (target <= 2x), and failed requests
   (non-2xx searches, writes that failed after retries: target 0). Recall after.
4. One more move (`nearline cluster move --wait`) with no load: the copy rate an idle
   machine gives.
Peak RSS (VmHWM) of every node. JSON on stdout, a table on stderr.

Usage: bench/bench_rebalance.py [--data ../shared/data] [--work DIR] [--replicas 2]
"""
import argparse, json, os, shutil, subprocess, sys, threading, time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
from bench_cluster import Bench, bvecs, drive, hwm, ivecs, load, lua_file, metric, recall_of  # noqa: E402
from bench_disk import fio  # noqa: E402
from harness import http  # noqa: E402


def say(*a):
    print(*a, file=sys.stderr, flush=True)


def fio_seq(path, rw):
    out = subprocess.run(["fio", "--name=seq", f"--filename={path}", f"--rw={rw}", "--bs=1M", "--size=2G",
                          "--direct=1", "--ioengine=io_uring", "--iodepth=8", "--runtime=10", "--time_based",
                          "--output-format=json"], capture_output=True, text=True, check=True).stdout
    j = json.loads(out)["jobs"][0]
    return (j["write"] if rw == "write" else j["read"])["bw_bytes"] / 1e6


def status(url):
    st, s = http("GET", url + "/v1/cluster", timeout=5)
    return s if st == 200 else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--work", default="/tmp/nearline-bench-rebalance")
    ap.add_argument("--nearline", default=os.path.join(ROOT, "build", "tools", "nearline"))
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--L", type=int, default=32)
    ap.add_argument("--move-rate-mb", type=int, default=0)
    a = ap.parse_args()
    folder = os.path.join(a.data, "sift-images-420k")
    if not os.path.isdir(folder):
        say("bench_rebalance: %s is missing: skipped" % folder)
        return 0
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    x = bvecs(os.path.join(folder, "base.bvecs"))
    q = bvecs(os.path.join(folder, "query.bvecs"))[:1000]
    gt = ivecs(os.path.join(folder, "groundtruth.ivecs"))[:1000]
    res = {"data": "sift-images-420k", "points": int(len(x)), "replicas": a.replicas, "shards": 8}

    probe = os.path.join(a.work, "fio.dat")
    res["fio_seq_write_MBps"] = round(fio_seq(probe, "write"), 1)
    res["fio_seq_read_MBps"] = round(fio_seq(probe, "read"), 1)
    res["fio_randread_iops_before"] = round(fio(probe, 64, 1))
    say("fio: sequential write %.0f MB/s, read %.0f MB/s; 4K random read %d IOPS" % (
        res["fio_seq_write_MBps"], res["fio_seq_read_MBps"], res["fio_randread_iops_before"]))

    b = Bench(a)
    try:
        b.zk_start()
        ext = ["--flush-age-ms", "3000", "--move-rate-mb", str(a.move_rate_mb)]
        nodes = [b.node(os.path.join(a.work, "db-" + n), n, root="/rebalance", extra=ext) for n in "abc"]
        urls = [u for _, u in nodes]
        st, r = http("PUT", urls[0] + "/v1/collections/sift", {"dim": 128, "metric": "l2", "shards": 8,
                                                               "replicas": a.replicas})
        assert st == 201, r
        t0 = time.time()
        pps = load(urls[0], "sift", x, batch=1000, threads=4)
        say("loaded %d points in %.0f s (%.0f points/s)" % (len(x), time.time() - t0, pps))
        for _ in range(600):  # everything flushed to segments: a move ships segments
            st, d = http("GET", urls[0] + "/v1/collections/sift", timeout=30)
            if st == 200 and d["stats"]["fresh_points"] == 0 and d["stats"]["points"] == len(x):
                break
            time.sleep(1)
        res["disk_bytes_before"] = d["stats"]["disk_bytes"]
        res["recall_idle"] = round(recall_of(urls[0], "sift", q, gt, a.L), 4)
        lua = lua_file(a.work, "sift", q, a.L)
        idle = drive(urls, lua, a.conns, a.seconds)
        res["idle"] = {k: idle[k] for k in ("qps", "p50_ms", "p99_ms", "non2xx")}
        say("idle: %.0f QPS, p50 %.2f ms, p99 %.2f ms, recall@10 %.4f" % (idle["qps"], idle["p50_ms"],
                                                                            idle["p99_ms"], res["recall_idle"]))

        sent0 = sum(metric(u, "nearline_replication_snapshot_bytes_total") for u in urls)
        raw0 = sum(metric(u, "nearline_snapshot_raw_bytes_total") for u in urls)
        # the fourth node, and the load while it fills
        stop = threading.Event()
        wstat = {"ok": 0, "failed": 0, "retried": 0}

        def writer():
            rng = np.random.default_rng(5)
            k = 0
            while not stop.is_set():
                ids = rng.integers(0, len(x), 100)
                pts = [{"id": int(i), "vector": x[i].tolist()} for i in ids]  # the same vectors: recall holds
                for attempt in range(20):
                    st, _ = http("POST", urls[k % 3] + "/v1/collections/sift/points", {"points": pts}, timeout=30)
                    if st == 200:
                        break
                    wstat["retried"] += 1
                    time.sleep(min(0.1 * 2 ** attempt, 1))
                wstat["ok" if st == 200 else "failed"] += 1
                k += 1
                time.sleep(0.05)
        wt = threading.Thread(target=writer)
        wt.start()
        t_join = time.time()
        pd, ud = b.node(os.path.join(a.work, "db-d"), "d", root="/rebalance", extra=ext)
        nodes.append((pd, ud))
        windows, balanced_at = [], None
        while time.time() - t_join < 1200:
            w = drive(urls, lua, a.conns, 5)
            windows.append({k: w[k] for k in ("qps", "p50_ms", "p99_ms", "non2xx")})
            s = status(urls[0])
            if s and not s["moves"]:
                reps = {n["id"]: n["replicas"] for n in s["nodes"] if n["live"]}
                if len(reps) == 4 and max(reps.values()) - min(reps.values()) <= 1 and reps.get("d", 0) > 0:
                    balanced_at = time.time()
                    break
        stop.set()
        wt.join()
        urls.append(ud)
        res["rebalance_s"] = round(balanced_at - t_join, 1) if balanced_at else None
        sent = sum(metric(u, "nearline_replication_snapshot_bytes_total") for u in urls) - sent0
        secs = sum(metric(u, "nearline_replication_snapshot_seconds_total") for u in urls)
        moved = sum(metric(u, "nearline_moves_finished_total") for u in urls)
        raw = sum(metric(u, "nearline_snapshot_raw_bytes_total") for u in urls) - raw0
        res.update({"moves": int(moved), "sent_MB": round(sent / 1e6, 1), "copied_raw_MB": round(raw / 1e6, 1),
                    "copy_seconds": round(secs, 1),
                    "move_MBps": round(raw / 1e6 / secs, 1) if secs else None,
                    "move_wire_MBps": round(sent / 1e6 / secs, 1) if secs else None})
        res["during"] = {"windows": len(windows), "qps_median": float(np.median([w["qps"] for w in windows])),
                         "p99_ms_median": float(np.median([w["p99_ms"] for w in windows])),
                         "p99_ms_max": max(w["p99_ms"] for w in windows),
                         "non2xx": sum(w["non2xx"] for w in windows)}
        res["p99_ratio"] = round(res["during"]["p99_ms_median"] / idle["p99_ms"], 2)
        res["p99_ratio_worst_window"] = round(res["during"]["p99_ms_max"] / idle["p99_ms"], 2)
        res["writes"] = wstat
        res["failed_requests"] = res["during"]["non2xx"] + wstat["failed"]
        res["recall_after"] = round(recall_of(urls[0], "sift", q, gt, a.L), 4)
        # one move with nothing else running: what a copy gets from an idle machine
        s = status(urls[0])
        e = [h for h in s["collections"][0]["shards"] if len(h["replicas"]) > 1][0]
        frm = [r for r in e["replicas"] if r != e["primary"]][0]
        to = sorted({n["id"] for n in s["nodes"] if n["live"]} - set(e["replicas"]))[0]
        r0 = sum(metric(u, "nearline_snapshot_raw_bytes_total") for u in urls)
        s0 = sum(metric(u, "nearline_replication_snapshot_seconds_total") for u in urls)
        t1 = time.time()
        subprocess.run([a.nearline, "cluster", "move", "sift", str(e["shard"]), frm, to, "--zookeeper",
                        "127.0.0.1:%d" % b.zk_port, "--cluster-root", "/rebalance", "--wait", "--timeout-s", "600"],
                       check=True, capture_output=True)
        idle_raw = sum(metric(u, "nearline_snapshot_raw_bytes_total") for u in urls) - r0
        idle_secs = sum(metric(u, "nearline_replication_snapshot_seconds_total") for u in urls) - s0
        res["idle_move"] = {"shard": e["shard"], "from": frm, "to": to, "seconds": round(time.time() - t1, 1),
                            "raw_MB": round(idle_raw / 1e6, 1), "copy_seconds": round(idle_secs, 2),
                            "MBps": round(idle_raw / 1e6 / idle_secs, 1) if idle_secs else None}
        say("one move, idle: shard %d %s -> %s, %.1f MB in %.2f s of copy (%.1f MB/s), %.1f s to finish" % (
            e["shard"], frm, to, res["idle_move"]["raw_MB"], idle_secs, res["idle_move"]["MBps"] or 0,
            res["idle_move"]["seconds"]))
        res["peak_rss_MB"] = {n: round(hwm(p) / 2 ** 20) for n, (p, _) in zip("abcd", nodes)}
        res["fio_randread_iops_after"] = round(fio(probe, 64, 1))
        say("rebalance 3 -> 4: %s s, %d moves, %.1f MB raw copied (%.1f MB sent), %.1f MB/s per copy "
            "(disk sequential read %.0f MB/s, write %.0f MB/s)" % (
                res["rebalance_s"], res["moves"], res["copied_raw_MB"], res["sent_MB"], res["move_MBps"] or 0,
                res["fio_seq_read_MBps"], res["fio_seq_write_MBps"]))
        say("during: %d windows, QPS median %.0f (idle %.0f), p99 median %.2f ms (idle %.2f: %.2fx), worst %.2f ms; "
            "failed requests %d (searches %d, writes %d; %d write retries); recall %.4f -> %.4f" % (
                len(windows), res["during"]["qps_median"], idle["qps"], res["during"]["p99_ms_median"],
                idle["p99_ms"], res["p99_ratio"], res["during"]["p99_ms_max"], res["failed_requests"],
                res["during"]["non2xx"], wstat["failed"], wstat["retried"], res["recall_idle"], res["recall_after"]))
        say("fio 4K random read: %d IOPS before, %d after" % (res["fio_randread_iops_before"],
                                                             res["fio_randread_iops_after"]))
    finally:
        b.close()
        try:
            os.unlink(probe)
        except OSError:
            pass
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
