"""rebalance_test.py — moves of shard replicas on a real cluster (issue 16): a real
ZooKeeper and real `nearline serve` processes on loopback.

  1. scale out: 3 nodes to 4 under a search and write load; the coordinator rebalances on
     its own; every search complete, every write acknowledged (a client retries a 503 as
     any client would), the history check finds nothing lost, resurrected or invented;
     bytes moved and time printed. The status page is loaded in headless Chromium while
     the cluster moves, and must show every node.
  2. drain: `nearline cluster drain b --wait` under load: b ends with no replica; the same
     checks; then `drain --undo` and `nearline cluster rebalance --wait` give it replicas
     back.
  3. the receiving node killed in the middle of a move's copy: the move rolls back, the
     shard keeps its replicas and its full in-sync set; nothing lost.
  4. the coordinator killed in the middle of a move: the move completes (the shard's
     primary finishes it; a new coordinator is elected); nothing lost.
  5. throughout, every node spoils every 7th snapshot piece it sends (the test hook
     NEARLINE_FAULT_CORRUPT_PIECE): each is refused by its checksum and sent again, and
     every copy installed is checked point by point at the end.
  6. compactions: the three replicas of a shard that all need compacting take turns
     (ZooKeeper's lock), and each gets its turn.
A sampler reads GET /v1/cluster every 200 ms and measures how long any shard had fewer
in-sync replicas than its replication factor.

usage: rebalance_test.py NEARLINE
"""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, http, wait  # noqa: E402
from history import Workload, check  # noqa: E402

NL = sys.argv[1]
SESSION_MS = 4000
FAILOVER_S = SESSION_MS / 1000 + 4  # session expiry + the coordinator's pass and fence
EXT = ["--replica-timeout-ms", "2000", "--replace-after-s", "600", "--move-rate-mb", "2"]
ENV = {"NEARLINE_FAULT_CORRUPT_PIECE": "7"}
BIG_DIM, BIG_N, BIG_SHARDS = 64, 24000, 2
failures = []


def fail(msg):
    print("FAIL:", msg, flush=True)
    failures.append(msg)


def big_vec(i):
    return np.round(np.random.default_rng(10 ** 7 + i).normal(size=BIG_DIM), 3).astype(np.float32)


class Sampler(threading.Thread):
    """Records, per shard, how long its in-sync set was below the replication factor."""

    def __init__(self, urls):
        super().__init__(daemon=True)
        self.urls, self.stop_ev = urls, threading.Event()
        self.below_since, self.worst = {}, {}
        self.last = None

    def run(self):
        while not self.stop_ev.is_set():
            for u in self.urls():
                st, s = http("GET", u + "/v1/cluster", timeout=2)
                if st == 200:
                    self.last = s
                    self.observe(s)
                    break
            time.sleep(0.2)

    def observe(self, s):
        t = time.time()
        for c in s["collections"]:
            for h in c["shards"]:
                k = (c["name"], h["shard"])
                if len(h["in_sync"]) < c["replicas"]:
                    self.below_since.setdefault(k, t)
                    self.worst[k] = max(self.worst.get(k, 0), t - self.below_since[k])
                else:
                    self.below_since.pop(k, None)

    def reset(self):
        self.below_since, self.worst = {}, {}

    def stop(self):
        self.stop_ev.set()
        self.join(5)


def status(c):
    for n in c.nodes.values():
        if n.proc and n.proc.poll() is None:
            st, s = n.call("GET", "/v1/cluster")
            if st == 200:
                return s
    return None


def cli(c, *args, timeout=240):
    r = subprocess.run([NL, "cluster", *args, "--zookeeper", c.zk], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def replicas_of(s):
    return {n["id"]: n["replicas"] for n in s["nodes"] if n["live"]}


def shard_entry(s, coll, sh):
    for c in s["collections"]:
        if c["name"] == coll:
            return c["shards"][sh]
    return None


def node_metric(n, name):
    st, txt = n.call("GET", "/metrics")
    for line in (txt if isinstance(txt, str) else "").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def snapshot_bytes(c):
    return sum(node_metric(n, "nearline_replication_snapshot_bytes_total") for n in c.nodes.values()
               if n.proc and n.proc.poll() is None)


def check_history(w, url, what, kills=False):
    w.stop()
    rep = check(w.h, url, "docs")
    print("%s: history %s; writes %s; searches %s" % (what, {k: (len(v) if isinstance(v, list) else v)
                                                           for k, v in rep.items()}, w.write_stats, w.search_stats),
          flush=True)
    for k in ("lost", "resurrected", "phantom", "unreadable"):
        if rep[k]:
            fail("%s: %s %s" % (what, k, rep[k][:10]))
    if w.write_stats["failed"]:
        fail("%s: %d writes failed after retries: %s" % (what, w.write_stats["failed"], w.failures[:3]))
    # planned moves: every search complete. Kills: a shard whose only in-sync replica was on
    # the killed node is missing from answers until its failover (partial, and said why);
    # a search cut off by the kill itself is sent again to another node, as a client does
    # (search_retries), and after that none may fail
    if w.search_stats["failed"] or (w.search_stats["partial"] and not kills):
        fail("%s: searches failed or partial: %s %s %s" % (what, w.search_stats, w.search_failures[:3],
                                                           getattr(w, "partial_why", [])[:5]))
    elif w.search_stats["partial"]:
        print("%s: %d partial searches while a node was down: %s" % (what, w.search_stats["partial"],
                                                                    getattr(w, "partial_why", [])[:3]), flush=True)
    if w.read_problems:
        fail("%s: reads: %s" % (what, w.read_problems[:5]))


def load_big(n0):
    for b in range(0, BIG_N, 2000):
        pts = [{"id": i, "vector": [float(x) for x in big_vec(i)]} for i in range(b, min(BIG_N, b + 2000))]
        st, a = n0.call("POST", "/v1/collections/big/points", {"points": pts}, timeout=60)
        if st != 200:
            raise AssertionError("loading big: %s %s" % (st, a))


def check_big(c, what):
    """Every big point, read through some node, is exactly what was written."""
    live = [n for n in c.nodes.values() if n.proc and n.proc.poll() is None]
    bad = []
    for i in range(0, BIG_N, 97):
        st, a = live[i % len(live)].call("GET", "/v1/collections/big/points/%d" % i)
        if st != 200 or not np.allclose(np.array(a.get("vector", []), np.float32), big_vec(i), atol=1e-4):
            bad.append((i, st))
    st, d = live[0].call("GET", "/v1/collections/big")
    pts = d.get("stats", {}).get("points") if st == 200 else None
    print("%s: big: %d sampled points checked, %d bad; %s points" % (what, len(range(0, BIG_N, 97)), len(bad), pts),
          flush=True)
    if bad:
        fail("%s: big points wrong or unreadable: %s" % (what, bad[:10]))
    if pts != BIG_N:
        fail("%s: big holds %s points, not %d" % (what, pts, BIG_N))


def ui_check(c, node):
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chrome:
        fail("no chromium to load the status page in (scripts/install-deps.sh installs it)")
        return
    prof = tempfile.mkdtemp(prefix="nlui.")
    shot = os.path.join(c.dir, "ui.png")
    base = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=" + prof,
            "--virtual-time-budget=6000", "--window-size=1280,1000"]
    try:
        dom = subprocess.run(base + ["--dump-dom", node.url + "/ui"], capture_output=True, text=True, timeout=90).stdout
        subprocess.run(base + ["--screenshot=" + shot, node.url + "/ui"], capture_output=True, timeout=90)
    finally:
        shutil.rmtree(prof, ignore_errors=True)
    ids = [n for n in c.nodes]
    missing = [i for i in ids if 'data-node="%s"' % i not in dom]
    print("ui: page loaded=%s, nodes shown %d/%d, moves rows %d, screenshot %d bytes" % (
        'data-loaded="1"' in dom, len(ids) - len(missing), len(ids), dom.count('class="move"'),
        os.path.getsize(shot) if os.path.exists(shot) else 0), flush=True)
    if 'data-loaded="1"' not in dom or missing:
        fail("the status page in Chromium did not show the cluster (missing %s): %s" % (missing, dom[:500]))
    if not os.path.exists(shot) or os.path.getsize(shot) < 5000:
        fail("no screenshot of the status page")


def compaction_check(c, urls):
    """A 1-shard collection of 3 replicas with a tiny fresh index: every batch flushes a
    segment on every replica, so all three want to compact at once; the ZooKeeper lock
    makes them take turns (some wait: deferred > 0) and every one gets its turn."""
    n0 = [n for n in c.nodes.values() if n.ready][0]
    st, a = n0.call("PUT", "/v1/collections/cmp", {"dim": 8, "shards": 1, "replicas": 3, "index": {"fresh_capacity": 1000}})
    if st != 201:
        fail("cmp: create: %s %s" % (st, a))
        return
    rng = np.random.default_rng(9)
    for b in range(24):
        pts = [{"id": b * 500 + i, "vector": [float(x) for x in rng.normal(size=8)]} for i in range(500)]
        st, a = n0.call("POST", "/v1/collections/cmp/points", {"points": pts}, timeout=60)
        if st != 200:
            fail("cmp: upsert: %s %s" % (st, a))
            return
    holders = shard_entry(status(c), "cmp", 0)["replicas"]
    done = wait(lambda: all(node_metric(c.nodes[h], 'nearline_collection_compactions_total{collection="cmp"}') >= 1
                            for h in holders), 90, 0.5)
    deferred = sum(node_metric(c.nodes[h], "nearline_compactions_deferred_total") for h in holders)
    per = {h: node_metric(c.nodes[h], 'nearline_collection_compactions_total{collection="cmp"}') for h in holders}
    print("compactions: cmp/0 replicas on %s compacted %s times; %d compactions deferred (a replica or the node's "
          "bound busy)" % (holders, per, deferred), flush=True)
    if not done:
        fail("compactions: not every replica of cmp/0 compacted: %s" % per)
    if deferred == 0:
        fail("compactions: no compaction ever waited for another replica's")


def main():
    t_all = time.time()
    with Cluster(NL, session_ms=SESSION_MS) as c:
        nodes = [c.node(x).start(EXT, env=ENV) for x in "abc"]
        # the nodes a client's load balancer would send to: started and ready (not killed)
        urls = lambda: [n.url for n in c.nodes.values() if n.proc and n.proc.poll() is None and n.ready]  # noqa: E731
        st, a = nodes[0].call("PUT", "/v1/collections/docs", {"dim": 8, "metric": "l2", "shards": 8, "replicas": 2})
        assert st == 201, (st, a)
        st, a = nodes[0].call("PUT", "/v1/collections/big", {"dim": BIG_DIM, "metric": "l2", "shards": BIG_SHARDS,
                                                             "replicas": 2})
        assert st == 201, (st, a)
        load_big(nodes[0])
        sampler = Sampler(urls)
        sampler.start()

        # ---- 1. 3 -> 4 nodes under load
        w = Workload(urls, "docs", 8, clients=3, ids=600, batch=10, retries=5, seed=1).start()
        time.sleep(3)
        b0, t0 = snapshot_bytes(c), time.time()
        c.node("d").start(EXT, env=ENV)
        saw_move = wait(lambda: (status(c) or {}).get("moves"), 20, 0.1)
        if saw_move:
            ui_check(c, nodes[1])
        else:
            fail("scale-out: no move was planned after node d joined")

        def balanced():
            s = status(c)
            if not s or s["moves"]:
                return None
            r = replicas_of(s)
            return s if len(r) == 4 and max(r.values()) - min(r.values()) <= 1 and r.get("d", 0) > 0 else None
        s = wait(balanced, 180, 0.5)
        took, moved = time.time() - t0, snapshot_bytes(c) - b0
        print("scale-out: balanced=%s in %.1f s, %.2f MB sent in snapshots, replicas %s" % (
            bool(s), took, moved / 1e6, replicas_of(s or status(c))), flush=True)
        if not s:
            fail("scale-out: not balanced in 180 s: %s" % (status(c) or {}).get("moves"))
        check_history(w, lambda: urls()[0], "scale-out")
        if sampler.worst and max(sampler.worst.values()) > 0.5:
            fail("scale-out: shards below their replication factor during planned moves: %s" % sampler.worst)

        # ---- 2. drain b under load, then give it replicas back
        w = Workload(urls, "docs", 8, clients=3, ids=600, batch=10, retries=5, seed=2, share=w).start()
        sampler.reset()
        t0 = time.time()
        rc, out, err = cli(c, "drain", "b", "--wait", "--timeout-s", "180")
        s = status(c)
        print("drain: rc=%d in %.1f s, replicas %s" % (rc, time.time() - t0, replicas_of(s)), flush=True)
        if rc != 0 or replicas_of(s).get("b", 0) != 0:
            fail("drain: b still holds replicas (rc %d): %s %s" % (rc, replicas_of(s), err[-500:]))
        if sampler.worst and max(sampler.worst.values()) > 0.5:
            fail("drain: shards below their replication factor during planned moves: %s" % sampler.worst)
        rc, out, err = cli(c, "shards")
        print(out, flush=True)
        rc, out, err = cli(c, "drain", "b", "--undo")
        rc, out, err = cli(c, "rebalance", "--wait", "--timeout-s", "180")
        s = status(c)
        print("rebalance after undrain: rc=%d, replicas %s" % (rc, replicas_of(s)), flush=True)
        if rc != 0 or replicas_of(s).get("b", 0) == 0:
            fail("rebalance: b got nothing back (rc %d): %s" % (rc, err[-500:]))
        check_history(w, lambda: urls()[0], "drain")
        check_big(c, "after drain")

        # ---- 3. kill the receiver in the middle of a copy
        w = Workload(urls, "docs", 8, clients=3, ids=600, batch=10, retries=25, search_retries=5, seed=3, share=w).start()
        s = status(c)
        e = shard_entry(s, "big", 0)
        to = sorted(set(replicas_of(s)) - set(e["replicas"]))[0]
        frm = [r for r in e["replicas"] if r != e["primary"]][0]
        before = list(e["replicas"])
        sampler.reset()
        rc, out, err = cli(c, "move", "big", "0", frm, to)
        if rc != 0:
            fail("move big/0 %s->%s refused: %s" % (frm, to, err))
        copying = wait(lambda: [m for m in (status(c) or {}).get("moves", [])
                                if m["collection"] == "big" and m["phase"] == "copying" and m.get("copy_done", 0) > 0],
                       30, 0.05)
        print("kill receiver: move big/0 %s -> %s, copying: %s" % (frm, to, copying), flush=True)
        if not copying:
            fail("kill receiver: never saw the copy in progress")
        c.nodes[to].kill()
        back = wait(lambda: (lambda s: s if s and not s["moves"] and shard_entry(s, "big", 0)["replicas"]
                             and set(shard_entry(s, "big", 0)["replicas"]) == set(before)
                             and len(shard_entry(s, "big", 0)["in_sync"]) == 2 else None)(status(c)), 30)
        print("kill receiver: rolled back=%s, big/0 %s" % (bool(back), shard_entry(status(c), "big", 0)), flush=True)
        if not back:
            fail("kill receiver: the move did not roll back")
        if sampler.worst.get(("big", 0), 0) > 0:
            fail("kill receiver: big/0 fell below its replication factor")
        c.nodes[to].start(EXT, env=ENV)
        others = max([v for k, v in sampler.worst.items() if k != ("big", 0)] or [0])
        print("kill receiver: shards the killed node held were below RF at most %.1f s" % others, flush=True)
        if others > FAILOVER_S + 10:
            fail("kill receiver: a shard stayed below RF %.1f s" % others)

        # ---- 4. kill the coordinator in the middle of a move
        s = wait(lambda: (lambda s: s if s and not s["moves"] and s["under_replicated_shards"] == 0 else None)(
            status(c)), 60)
        s = s or status(c)
        coord = s["coordinator"]
        # a big shard to move, best one the coordinator holds no replica of, then one it is
        # not primary of; its replica off the coordinator (a follower first: a primary's
        # move hands its role over) goes to a node that is not the coordinator
        def rank(x):
            return (coord in x["replicas"]) + (x["primary"] == coord)
        e = min((shard_entry(s, "big", k) for k in range(BIG_SHARDS)), key=rank)
        cands = sorted((r for r in e["replicas"] if r != coord), key=lambda r: r == e["primary"]) or [coord]
        tos = sorted(set(replicas_of(s)) - set(e["replicas"]) - {coord})
        sh = e["shard"]
        held = coord in e["replicas"]  # then the kill takes a replica of the moving shard too
        if not tos:
            fail("kill coordinator: no node to move big/%d to: %s" % (sh, s["collections"]))
        else:
            frm, to = cands[0], tos[0]
            sampler.reset()
            rc, out, err = cli(c, "move", "big", str(sh), frm, to)
            copying = wait(lambda: [m for m in (status(c) or {}).get("moves", [])
                                    if m["collection"] == "big" and m["phase"] == "copying"], 30, 0.05)
            print("kill coordinator %s: move big/%d %s -> %s, copying: %s" % (coord, sh, frm, to, bool(copying)),
                  flush=True)
            c.nodes[coord].kill()
            done = wait(lambda: (lambda s: s if s and not [m for m in s["moves"] if m["collection"] == "big"]
                                 and to in shard_entry(s, "big", sh)["replicas"]
                                 and frm not in shard_entry(s, "big", sh)["replicas"] else None)(status(c)), 90)
            s2 = status(c) or {}
            print("kill coordinator: finished=%s, new coordinator %s, big/%d %s" % (
                bool(done), s2.get("coordinator"), sh, shard_entry(s2, "big", sh)), flush=True)
            if not done:
                fail("kill coordinator: the move did not complete")
            if s2.get("coordinator") in (None, "", coord):
                fail("kill coordinator: no new coordinator")
            below = sampler.worst.get(("big", sh), 0)
            print("kill coordinator: big/%d below its replication factor for %.1f s (the coordinator %s a replica)"
                  % (sh, below, "held" if held else "did not hold"), flush=True)
            if below > (FAILOVER_S + 30 if held else 0):
                fail("kill coordinator: big/%d fell below its replication factor for %.1f s" % (sh, below))
            c.nodes[coord].start(EXT, env=ENV)
        check_history(w, lambda: urls()[0], "kills", kills=True)
        wait(lambda: (lambda s: s and not s["moves"] and s["under_replicated_shards"] == 0)(status(c)), 60)
        check_big(c, "at the end")
        sampler.stop()

        # ---- 6. compactions of one shard's replicas take turns
        compaction_check(c, urls)

        # ---- 5. corrupted pieces were refused and sent again
        resent = 0
        for n in c.nodes.values():
            with open(n.log, errors="replace") as f:
                resent += f.read().count('"event":"snapshot_piece_resent"')
        print("corrupt pieces: %d spoiled pieces refused by checksum and sent again" % resent, flush=True)
        if resent == 0:
            fail("no spoiled snapshot piece was refused and re-sent")
        rc, out, err = cli(c, "status")
        print(out, flush=True)
    print("rebalance test: %.0f s, %d failures" % (time.time() - t_all, len(failures)), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
