#!/usr/bin/python3
"""bench_merge.py NEARLINE [--data ../shared/data] [--n 100000] [--delete 0.25] [--stream 4] —
removing deletes and folding small segments in (issue 28, part 2): the insertion merge with
delete consolidation (`nearline compact --policy`, what the background runs, and with
`--max-segments 1`, every segment folded into the largest) against a rebuild of everything
(`nearline compact`, the full compaction), on the same database.

The first --n points of sift-images-420k are bulk-imported into one segment; then through
`nearline serve` a --delete share of them is deleted (a random sample, in batches of 1,000)
and --stream batches of n/20 new points (the next rows of the set) are upserted and
flushed, so the shard holds one large segment with tombstones plus a few small ones. The
database is copied; one copy is compacted by each command. Reported per copy: seconds, bytes
written (the new segment), write amplification (bytes written / bytes of the vectors that
changed: deleted and inserted), lists repaired, peak RSS, then recall@10, reads and QPS of
`nearline search` (2 threads, k=10, 1,000 queries) at L 16..64 against brute force over the
live points, and the same before any compaction (several segments, tombstones walked).
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
from nlbench import ARGS, DATA_DEFAULT, bvecs, opt, truth, write_vecs  # noqa: E402

NL = os.path.abspath(ARGS[0])
DATA = opt("--data", DATA_DEFAULT)
N = int(opt("--n", "100000"))
DEL = float(opt("--delete", "0.25"))
STREAM = int(opt("--stream", "4"))
K, NQ = 10, 1000
LS = "16,24,32,48,64"


def start(db, port):
    """nearline serve on db that neither flushes by age nor compacts by itself."""
    srv = subprocess.Popen([NL, "serve", "--db", db, "--listen", "127.0.0.1:%d" % port, "--flush-age-ms", "600000",
                            "--compact-max-segments", "64", "--compact-dead-ratio", "1.0"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if http("GET", "http://127.0.0.1:%d/v1/collections" % port)[0] == 200:
            break
        time.sleep(0.1)
    return srv


def stop(srv):
    srv.send_signal(signal.SIGTERM)  # a clean close flushes what is fresh: one segment
    srv.wait(timeout=300)


def serve_changes(db, dead_ids, add):
    """Deletes dead_ids, then upserts add in STREAM batches, each flushed to a segment of its
    own (the server is closed after each); returns the collection's stats."""
    port = free_port()
    url = "http://127.0.0.1:%d/v1/collections/c" % port
    srv = start(db, port)
    try:
        for s in range(0, len(dead_ids), 1000):
            st, ans = http("POST", url + "/points/delete", {"ids": [int(i) for i in dead_ids[s:s + 1000]]}, timeout=120)
            assert st == 200, (st, ans)
        step = max(1, len(add) // STREAM) if STREAM else 0
        for b in range(STREAM):
            for s in range(b * step, min((b + 1) * step, len(add)), 1000):
                pts = [{"id": N + i, "vector": add[i].tolist()} for i in range(s, min(s + 1000, (b + 1) * step))]
                st, ans = http("POST", url + "/points", {"points": pts}, timeout=120)
                assert st == 200, (st, ans)
            stop(srv)
            srv = start(db, port)
        return http("GET", url)[1]["stats"]
    finally:
        stop(srv)


def timed(cmd):
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-f", "RSS %M"] + cmd, check=True, capture_output=True, text=True)
    rss = [int(l.split()[1]) for l in p.stderr.splitlines() if l.startswith("RSS ")]
    return time.time() - t0, json.loads(p.stdout.strip().splitlines()[-1]), (rss[-1] // 1024 if rss else 0)


def search(db, qpath, gtpath):
    out = subprocess.run([NL, "search", "--db", db, "--collection", "c", "--queries", qpath, "--k", str(K), "--L", LS,
                          "--threads", "2", "--groundtruth", gtpath], check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    work = tempfile.mkdtemp(prefix="nl-merge-", dir=opt("--work", None))
    try:
        extra = N // 20 * STREAM
        allx = bvecs(os.path.join(DATA, "sift-images-420k", "base.bvecs"), N + extra)
        x, add = allx[:N], allx[N:]
        q = bvecs(os.path.join(DATA, "sift-images-420k", "query.bvecs"), NQ)
        rng = np.random.default_rng(5)
        dead = np.sort(rng.choice(N, int(N * DEL), replace=False))
        live = np.setdiff1d(np.arange(N + extra), dead)
        gt = truth(allx[live], q, K, live.astype(np.int64))
        xpath, qpath, gtpath = (os.path.join(work, f) for f in ("x.fvecs", "q.fvecs", "gt.ivecs"))
        write_vecs(xpath, x, np.float32)
        write_vecs(qpath, q, np.float32)
        write_vecs(gtpath, gt, np.int32)
        db = os.path.join(work, "db")
        subprocess.run([NL, "import", "--db", db, "--collection", "c", "--input", xpath, "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
        stats = serve_changes(db, dead, add)
        print("sift-images-420k: %d imported, %d deleted (%.0f%%), %d streamed in %d flushes: %d segments, %d "
              "tombstones" % (N, len(dead), DEL * 100, extra, STREAM, stats["segments"], stats["tombstones"]))
        before = search(db, qpath, gtpath)
        dim_bytes = x.shape[1] * 4
        changed = (len(dead) + extra) * dim_bytes
        rows = {"before compaction": (None, before)}
        for name, cmd in (("the background policy (--policy)", ["--policy"]),
                          ("everything folded into the largest (--policy --max-segments 1)",
                           ["--policy", "--max-segments", "1"]),
                          ("rebuild (full)", [])):
            copy = os.path.join(work, "copy")
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(db, copy)
            secs, rep, rss = timed([NL, "compact", "--db", copy, "--collection", "c"] + cmd)
            rows[name] = ((secs, rep, rss), search(copy, qpath, gtpath))
        print()
        print("| compaction | seconds | segments in -> out | purged | lists repaired | bytes written | write amplification | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for name, (c, _) in rows.items():
            if c is None:
                continue
            secs, rep, rss = c
            print("| %s | %.1f | %d -> %d | %d | %d | %.1f MB | %.2f | %d |" % (
                name, secs, rep["segments_in"], rep["segments_out"], rep["purged"], rep.get("repaired", 0),
                rep["bytes_out"] / 1e6, rep["bytes_out"] / changed, rss))
        print()
        print("| L | " + " | ".join("%s: recall@10 / reads / QPS" % n for n in rows) + " |")
        print("|---|" + "---|" * len(rows))
        for i, L in enumerate(LS.split(",")):
            cells = ["%.4f / %.1f / %.0f" % (r[i]["recall_at_k"], r[i]["mean_ios"], r[i]["qps"])
                     for _, r in rows.values()]
            print("| %s | %s |" % (L, " | ".join(cells)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
