#!/usr/bin/python3
"""replication_test.py NEARLINE [--rounds N] — replication and failover with real processes
and a real ZooKeeper on loopback (harness.py), checked as Jepsen checks (history.py):
every operation a client issued is recorded with its outcome, and at the end no
acknowledged write is lost, no acknowledged delete is back, no value is one never written.

  1. SIGKILL of a primary under write and search load, RF=2 (quorum all) and RF=3 (quorum
     majority): a follower takes over; the failover time is measured and printed; the
     killed node comes back, catches up and rejoins the in-sync set; the history checks
     out and every replica holds the same points;
  2. SIGSTOP of a primary past its session timeout while clients write through it, then
     SIGCONT: it acknowledges nothing after it was deposed (the history), ends its role,
     and rejoins as a follower with nothing divergent;
  3. a follower stopped while 50,000 points are written, restarted: it catches up from the
     log; then again on nodes whose log keeps only 256 KiB, so it catches up by a snapshot
     copy; its contents then equal the primary's;
  4. a randomized fault schedule (kill, pause past the session timeout, graceful restart,
     ZooKeeper restart) of --rounds rounds (20 in CI) under load, then the history check.
The network partition (network namespaces) is partition_test.py.
"""
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, http  # noqa: E402
from history import DIM, Workload, check, failover_prober, read_state, shard_of, vec  # noqa: E402

NL = sys.argv[1]
ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 20
SESSION_MS = 3000
NODE_ARGS = ["--replica-timeout-ms", "1500", "--flush-points", "3000", "--compact-max-segments", "3"]
KEY_HDR = {"X-Nearline-Cluster-Key": "test-cluster-key-0123456789"}
failures = []


def check_that(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def wait(pred, timeout, step=0.1):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if pred():
                return True
        except Exception:  # noqa: BLE001 — a node in the middle of a restart
            pass
        time.sleep(step)
    return False


def describe(node, coll):
    st, d = node.call("GET", "/v1/collections/" + coll)
    return d if st == 200 else None


def all_in_sync(node, coll):
    d = describe(node, coll)
    return bool(d) and all(sorted(s["in_sync"]) == sorted(s["replicas"]) for s in d["shard_map"])


def live_urls(cl):
    return lambda: [n.url for n in cl.nodes.values() if n.proc and n.proc.poll() is None and not getattr(n, "paused", 0)]


def same_replicas(cl, coll, ids, via):
    """Every replica of every shard holds the same points (counts, and the sampled ids)."""
    d = describe(via, coll)
    problems = []
    for s in d["shard_map"]:
        counts = {}
        for r in s["replicas"]:
            st, j = http("GET", cl.nodes[r].url + "/internal/v1/collections/%s/shards/%d" % (coll, s["shard"]),
                         headers=KEY_HDR)
            counts[r] = j["stats"]["points"] if st == 200 else None
        if len(set(counts.values())) != 1:
            problems.append("shard %d: points per replica %s" % (s["shard"], counts))
        for i in ids:
            if shard_of(i, len(d["shard_map"])) != s["shard"]:
                continue
            seen = []
            for r in s["replicas"]:
                st, got = read_state(cl.nodes[r].url, coll, i, KEY_HDR,
                                     "/internal/v1/collections/%s/shards/%d/points/%d" % (coll, s["shard"], i))
                seen.append("absent" if isinstance(got, str) else None if got is None else tuple(np.round(got, 3)))
            if len(set(seen)) != 1:
                problems.append("id %d differs between replicas %s" % (i, s["replicas"]))
    return problems


def lagging(cl, coll):
    """What the primaries of coll report not yet applied by a follower: (node, shard, follower, lag_ops)."""
    out = []
    for n in cl.nodes.values():
        if not n.proc or n.proc.poll() is not None or getattr(n, "paused", 0):
            continue
        st, j = http("GET", n.url + "/internal/v1/node", headers=KEY_HDR)
        if st != 200:
            out.append((n.id, None, None, "status %s" % st))
            continue
        for p in j.get("primary_of", []):
            if p["collection"] != coll:
                continue
            for f in p["followers"]:
                if not f["known"] or f["lag_ops"]:
                    out.append((n.id, p["shard"], f["node"], f["lag_ops"] if f["known"] else "unknown"))
    return out


def settled_replicas(cl, coll, ids, via, timeout=30):
    """same_replicas once the cluster is quiet: a write whose client gave up can still be on
    its way to the followers when the workload ends (its primary applied it first), so the
    replicas are compared once no primary reports a follower behind, and compared again for
    up to `timeout` s while they differ. What differs after that is divergence."""
    t0 = time.time()
    quiet = wait(lambda: not lagging(cl, coll), timeout, 0.3)
    t_quiet = time.time() - t0
    probs = same_replicas(cl, coll, ids, via)
    first = probs
    while probs and time.time() - t0 < timeout:
        time.sleep(1)
        probs = same_replicas(cl, coll, ids, via)
    if first:
        print("  %s: replicas differed when first compared (%s); %s %.1f s after the workload ended%s" % (
            coll, first[:2], "still differ" if probs else "equal", time.time() - t0,
            "" if quiet else "; followers still behind: %s" % lagging(cl, coll)[:4]), flush=True)
    elif t_quiet > 0.5:
        print("  %s: followers caught up %.1f s after the workload ended" % (coll, t_quiet), flush=True)
    return probs


def explain(cl, coll, h, ids, shards, wl=None):
    """For a lost id: its history, and what each replica of its shard holds."""
    via = next(n for n in cl.nodes.values() if n.proc and n.proc.poll() is None)
    d = describe(via, coll)
    for i in ids[:3]:
        print("  id %d: shard %d; ops (seq, kind, version, outcome): %s" % (i, shard_of(i, shards), h.ops.get(i)[-12:]))
        for v, tries in getattr(wl, "refusals", {}).get(i, [])[-2:]:
            print("    version %s recorded as not applied; its tries (node, status, answer): %s" % (v, tries))
        if not d:
            continue
        s = d["shard_map"][shard_of(i, shards)]
        print("    map: primary %s epoch %s in_sync %s" % (s["primary"], s["epoch"], s["in_sync"]))
        for r in s["replicas"]:
            st, got = read_state(cl.nodes[r].url, coll, i, KEY_HDR,
                                 "/internal/v1/collections/%s/shards/%d/points/%d" % (coll, s["shard"], i))
            ver = [v for v in h.issued.get(i, ()) if not isinstance(got, str) and got is not None and
                   np.allclose(got, vec(i, v), atol=1e-4)]
            print("    replica %s: %s" % (r, "absent" if isinstance(got, str) else ver or got))


def report(name, rep, wl, cl=None):
    print("  %s: %d ids, %d ok ops, %d indeterminate, %d refused (not applied); searches ok %d, failed %d, "
          "partial %d" % (name, rep["ids"], rep["ok_ops"], rep["indeterminate_ops"], rep.get("failed_ops", 0),
                          wl.search_stats["ok"], wl.search_stats["failed"], wl.search_stats["partial"]), flush=True)
    good = not rep["lost"] and not rep["resurrected"] and not rep["phantom"] and not rep["unreadable"]
    check_that(good, "%s: no acknowledged write lost (%s), no acknowledged delete back (%s), nothing never written "
               "(%s), every id readable (%s)" % (name, [x[:2] for x in rep["lost"][:3]], rep["resurrected"][:3],
                                                 rep["phantom"][:3], rep["unreadable"][:3]))
    if not good and cl:
        explain(cl, wl.coll, wl.h, [x[0] for x in rep["lost"] + rep["resurrected"]], wl.shards, wl)
    check_that(not wl.read_problems, "%s: searches during the faults returned no duplicate, unknown or stale-score "
               "result (%s)" % (name, wl.read_problems[:3]))


def create(node, name, shards, replicas, quorum="all"):
    st, d = node.call("PUT", "/v1/collections/" + name, {"dim": DIM, "shards": shards, "replicas": replicas,
                                                           "write_quorum": quorum, "index": {"R": 16, "L": 32}},
                      timeout=60)
    return st, d


def kill_test(cl, a):
    st2, _ = create(a, "r2", 4, 2)
    st3, _ = create(a, "r3", 3, 3, "majority")
    stp, _ = create(a, "probe", 3, 2)
    check_that(st2 == st3 == stp == 201, "collections of RF=2 (quorum all) and RF=3 (quorum majority) created")
    urls = live_urls(cl)
    w2 = Workload(urls, "r2", 4, seed=1).start()
    w3 = Workload(urls, "r3", 3, seed=2).start()
    time.sleep(3)
    victim = cl.nodes[describe(a, "r2")["shard_map"][0]["primary"]]
    pmap = describe(a, "probe")["shard_map"]
    pshard = next((s["shard"] for s in pmap if s["primary"] == victim.id), 0)
    stop_probe, plog = threading.Event(), []
    others = [n for n in cl.nodes.values() if n is not victim]
    th = threading.Thread(target=failover_prober, args=(lambda: random.choice(others).url, "probe", 3, pshard,
                                                        stop_probe, plog), daemon=True)
    th.start()
    time.sleep(1.5)
    t_kill = time.time()
    victim.kill()
    ok_after = wait(lambda: any(t > t_kill and ok for t, ok in plog) and
                    describe(others[0], "probe")["shard_map"][pshard]["primary"] != victim.id, 30, 0.05)
    first_ok = min((t for t, ok in plog if t > t_kill and ok), default=None)
    fo = (first_ok - t_kill) if first_ok else None
    print("  failover after SIGKILL of %s: writes to its shard succeed again after %.2f s (session timeout %.1f s)"
          % (victim.id, fo or -1, SESSION_MS / 1000), flush=True)
    check_that(ok_after and fo is not None and fo < 10, "SIGKILL of the primary: a follower takes over within 10 s "
               "(%.2f s)" % (fo or -1))
    time.sleep(3)
    victim.start(NODE_ARGS)
    back = wait(lambda: all_in_sync(a, "r2") and all_in_sync(a, "r3"), 60, 0.3)
    check_that(back, "the killed node caught up and every shard's in-sync set is whole again")
    time.sleep(1)
    stop_probe.set()
    w2.stop()
    w3.stop()
    wait(lambda: all_in_sync(a, "r2") and all_in_sync(a, "r3"), 30, 0.3)
    for name, wl in (("r2", w2), ("r3", w3)):
        rep = check(wl.h, lambda: random.choice(list(cl.nodes.values())).url, name)
        report("SIGKILL " + name, rep, wl, cl)
        probs = settled_replicas(cl, name, list(range(0, wl.ids, 3)), a)
        check_that(not probs, "SIGKILL %s: every replica holds the same points (%s)" % (name, probs[:3]))
    return fo


def pause_test(cl, a):
    st, _ = create(a, "p2", 3, 2)
    check_that(st == 201, "collection p2 (RF=2) created")
    d = describe(a, "p2")
    victim = cl.nodes[d["shard_map"][1]["primary"]]
    others = [n for n in cl.nodes.values() if n is not victim]
    wl = Workload(lambda: [n.url for n in others], "p2", 3, seed=3, clients=3, ids=600, run=(0, 1)).start()
    # a client that writes through the victim itself, before, during and after its pause
    # (ids of the third client number, one history)
    wv = Workload(lambda: [victim.url], "p2", 3, seed=4, clients=3, ids=600, timeout=30, run=(2,), reader=False,
                  share=wl).start()
    time.sleep(2)
    os.kill(victim.proc.pid, signal.SIGSTOP)
    victim.paused = 1
    t0 = time.time()
    moved = wait(lambda: describe(others[0], "p2")["shard_map"][1]["primary"] != victim.id, 20, 0.1)
    print("  %s paused: shard 1 got a new primary after %.2f s" % (victim.id, time.time() - t0), flush=True)
    time.sleep(max(0.0, SESSION_MS / 1000 + 2 - (time.time() - t0)))
    os.kill(victim.proc.pid, signal.SIGCONT)
    victim.paused = 0
    check_that(moved, "SIGSTOP past the session timeout: another replica became primary of its shard")
    rejoined = wait(lambda: all_in_sync(a, "p2"), 60, 0.3)
    check_that(rejoined, "SIGCONT: the old primary rejoined the in-sync set as a follower")
    time.sleep(2)
    wl.stop_ev.set()
    wv.stop_ev.set()
    wl.stop()
    wv.stop()
    wait(lambda: all_in_sync(a, "p2"), 30, 0.3)
    log = open(victim.log, errors="replace").read()
    check_that('"event":"primary_ended"' in log or '"event":"primary_deposed"' in log,
               "the paused primary ended its role once it saw the new map")
    rep = check(wl.h, lambda: random.choice(list(cl.nodes.values())).url, "p2")
    report("SIGSTOP p2", rep, wl, cl)
    probs = settled_replicas(cl, "p2", list(range(0, 600, 2)), a)
    check_that(not probs, "SIGSTOP: nothing divergent: every replica holds the same points (%s)" % probs[:3])


def bulk(node, coll, first, n, batch=1000):
    ok = True
    for s in range(first, first + n, batch):
        pts = [{"id": i, "vector": [float(x) for x in vec(i, 1)]} for i in range(s, min(s + batch, first + n))]
        st, _ = node.call("POST", "/v1/collections/%s/points" % coll, {"points": pts}, timeout=60)
        ok = ok and st == 200
    return ok


def catchup(cl, a, coll, n, expect_snapshot):
    st, ans = create(a, coll, 1, 2)
    check_that(st == 201, "%s: collection created (%s %s)" % (coll, st, str(ans)[:200]))
    # the map can be a moment behind the create's answer on the node asked (a 503 meanwhile)
    wait(lambda: describe(a, coll) and describe(a, coll)["shard_map"][0]["primary"], 20, 0.2)
    d = describe(a, coll)
    p = cl.nodes[d["shard_map"][0]["primary"]]
    f = cl.nodes[[r for r in d["shard_map"][0]["replicas"] if r != p.id][0]]
    bulk(p, coll, 0, 2000)
    f.stop()
    t0 = time.time()
    wrote = bulk(p, coll, 2000, n)
    print("  %s: %d points written in %.1f s with follower %s stopped" % (coll, n, time.time() - t0, f.id), flush=True)
    if expect_snapshot:
        time.sleep(3)  # the primary trims its log to its bound meanwhile
    t1 = time.time()
    f.start(NODE_ARGS + (["--repl-log-bytes", "256K"] if expect_snapshot else []))
    caught = wait(lambda: all_in_sync(p, coll), 120, 0.2)
    took = time.time() - t1
    flog = open(f.log, errors="replace").read()
    snap = '"event":"snapshot_installed_here","collection":"%s"' % coll in flog
    print("  %s: follower back in sync %.1f s after its restart, %s" % (coll, took, "by a snapshot copy" if snap else
                                                                        "from the log"), flush=True)
    check_that(wrote and caught and snap == expect_snapshot, "a follower stopped while %d points were written catches "
               "up %s" % (n, "by a snapshot copy (the log moved on)" if expect_snapshot else "from the log"))
    ids = list(range(0, 2000 + n, 97))
    probs = same_replicas(cl, coll, ids, p)
    # and the same answers: one search on each replica
    q = {"vectors": [[float(x) for x in vec(5, 1)]], "k": 10}
    ans = []
    for r in (p, f):
        st, j = http("POST", r.url + "/internal/v1/collections/%s/shards/0/search/batch" % coll, q, headers=KEY_HDR)
        ans.append(st)
    check_that(not probs and ans == [200, 200], "%s: the follower's contents equal the primary's (%d points, %d ids "
               "compared; %s)" % (coll, 2000 + n, len(ids), probs[:3]))
    return took


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def piece(sid, name, off, raw, total, crc=None, body=None):
    import json as _json
    z = subprocess.run(["zstd", "-q", "-c"], input=raw, stdout=subprocess.PIPE, check=True).stdout
    meta = _json.dumps({"id": sid, "file": name, "offset": off, "size": len(raw), "total": total,
                        "crc": crc32c(raw) if crc is None else crc}).encode()
    return struct.pack("<I", len(meta)) + meta + (z if body is None else body)


def snapshot_pieces(cl, node, coll):
    """The follower's side of a snapshot transfer, piece by piece, with hostile pieces: a bad
    checksum, a truncated piece, a wrong offset, a bad name, an install of an incomplete copy.
    Each is refused and nothing is installed; the replica goes on serving."""
    base = node.url + "/internal/v1/collections/%s/shards/0/" % coll
    sid = "00c0ffee12345678"
    post = lambda op, body: http("POST", base + op, body, headers=KEY_HDR)  # noqa: E731
    st, j = post("snapshot", {"id": sid})
    ok = st == 200 and j.get("files") == {}
    raw = bytes(range(256)) * 8
    st1, _ = post("snapshot-chunk", piece(sid, "meta/CURRENT", 0, raw, len(raw), crc=crc32c(raw) ^ 1))
    st2, _ = post("snapshot-chunk", piece(sid, "meta/CURRENT", 0, raw, len(raw), body=b"\x28\xb5\x2f\xfd\x00"))
    st3, j3 = post("snapshot-chunk", piece(sid, "meta/CURRENT", 5, raw[:10], len(raw)))
    st4, _ = post("snapshot-chunk", piece(sid, "../escape", 0, raw, len(raw)))
    st5, j5 = post("snapshot-chunk", piece(sid, "meta/CURRENT", 0, raw, 2 * len(raw)))
    st6, j6 = post("snapshot", {"id": sid})  # resume: what is here
    st7, _ = post("snapshot-install", {"id": sid, "files": {"meta/CURRENT": 2 * len(raw)}})
    st8, _ = post("snapshot-install", {"id": "0000000000000bad", "files": {}})
    ok = ok and (st1, st2, st3, st4, st5, st7, st8) == (400, 400, 409, 400, 200, 409, 409)
    ok = ok and j3.get("have") == 0 and j5.get("have") == len(raw) and j6.get("files") == {"meta/CURRENT": len(raw)}
    check_that(ok, "snapshot pieces: a bad checksum and a truncated piece are refused (400, to be sent again), a wrong "
               "offset answers what is there (409), a name outside the copy is refused, a resumed transfer is told "
               "what it has, and an incomplete copy is never installed (%s)" % [st, st1, st2, st3, st4, st5, st6,
                                                                                 st7, st8])
    st9, _ = post("snapshot", {"id": "00000000000000aa"})  # a new copy wipes the pieces of the old
    check_that(st9 == 200 and all_in_sync(node, coll), "... and the replica is untouched and still in sync")


def not_healed_report(cl, via, coll):
    """What a CI log needs to tell why a shard stayed out of sync: the map, each primary's
    view of its followers (with why its link fails), each node's last warnings and its
    threads' stacks (gdb, grouped)."""
    d = describe(via, coll) or {}
    for s in d.get("shard_map", []):
        print("    shard %d: primary %s epoch %s in_sync %s" % (s["shard"], s.get("primary"), s.get("epoch"),
                                                           s["in_sync"]), flush=True)
    for n in cl.nodes.values():
        if not n.proc or n.proc.poll() is not None:
            print("    %s: not running" % n.id)
            continue
        st, j = http("GET", n.url + "/internal/v1/node", headers=KEY_HDR)
        if st != 200:
            print("    %s: /internal/v1/node answered %s" % (n.id, st))
            continue
        print("    %s: registered %s, sees nodes %s, primary of %d shard(s)" % (
            n.id, j.get("registered"), [x.get("id") for x in j.get("nodes", [])], len(j.get("primary_of", []))))
        for p in j.get("primary_of", []):
            for f in p["followers"]:
                if not f["in_sync"] or f["lag_ops"]:
                    print("      %s/%d -> %s: known %s acked %s lag %s failing %s copying %s: %s" % (
                        p["collection"], p["shard"], f["node"], f["known"], f["acked_seq"], f["lag_ops"],
                        f["failing"], f.get("copying"), f.get("last_error")))
        warn = [x for x in n.tail(4000).splitlines() if '"level":"info"' not in x and '"event":"request"' not in x]
        for x in warn[-12:]:
            print("      | " + x[:300])
        for x in n.stacks().splitlines():
            print("      ! " + x[:400])
    sys.stdout.flush()


def availability(wl, windows):
    """Per kind of fault: of the writes (ids) issued between a fault's start and the
    cluster's healing, the share acknowledged / indeterminate / refused; of the searches,
    the share complete / partial / failed. Printed as a table; returned as a dict."""
    out = {}
    for kind in sorted({w[0] for w in windows}):
        spans = [(w[1], w[2]) for w in windows if w[0] == kind]
        inside = lambda t: any(a <= t <= b for a, b in spans)  # noqa: E731
        ok = info = fail = 0
        for t0, _, o, i, f in wl.timeline:
            if inside(t0):
                ok, info, fail = ok + o, info + i, fail + f
        sc = {"complete": 0, "partial": 0, "failed": 0}
        for t0, _, k in wl.search_timeline:
            if inside(t0):
                sc[k] += 1
        w, q = max(ok + info + fail, 1), max(sum(sc.values()), 1)
        out[kind] = (ok, info, fail, sc)
        print("    %-9s %3d faults: writes %6d ids: %5.1f%% acknowledged, %5.1f%% indeterminate, %5.1f%% refused; "
              "searches %5d: %5.1f%% complete, %5.1f%% partial, %5.1f%% failed" % (
                  kind, len(spans), ok + info + fail, 100 * ok / w, 100 * info / w, 100 * fail / w, sum(sc.values()),
                  100 * sc["complete"] / q, 100 * sc["partial"] / q, 100 * sc["failed"] / q), flush=True)
    return out


def random_schedule(cl, a, zk_restart):
    st, _ = create(a, "rnd", 4, 3)
    check_that(st == 201, "collection rnd (RF=3) created")
    urls = live_urls(cl)
    # Clients as an application runs them: a write or search not answered 200 is sent again
    # (the same versions, to a node picked afresh) twice, with a backoff.
    wl = Workload(urls, "rnd", 4, seed=9, clients=3, ids=900, retries=2, search_retries=2).start()
    rng = random.Random(int(os.environ.get("NL_FAULT_SEED", "15")))
    faults = {}
    windows = []  # (kind, start, healed)
    for r in range(ROUNDS):
        kind = rng.choice(["kill", "pause", "restart", "zookeeper"] if zk_restart else ["kill", "pause", "restart"])
        n = rng.choice(list(cl.nodes.values()))
        faults[kind] = faults.get(kind, 0) + 1
        t_fault = time.time()
        if kind == "kill":
            n.kill()
            time.sleep(rng.uniform(0.5, 4))
            n.start(NODE_ARGS)
        elif kind == "pause":
            n.pause_for(SESSION_MS / 1000 + rng.uniform(0.5, 2))
        elif kind == "restart":
            n.stop()
            n.start(NODE_ARGS)
        else:
            cl.zk_stop()
            time.sleep(rng.uniform(0.5, 2))
            cl.zk_start()
        healed = wait(lambda: all_in_sync(a, "rnd"), 60, 0.3)
        windows.append((kind, t_fault, time.time()))
        print("  round %d: %s %s; %s" % (r + 1, kind, n.id if kind != "zookeeper" else "", "healed" if healed else
                                           "NOT healed in 60 s"), flush=True)
        if not healed:
            check_that(False, "round %d (%s): the cluster healed" % (r + 1, kind))
            not_healed_report(cl, a, "rnd")
            break
    wl.stop()
    wait(lambda: all_in_sync(a, "rnd"), 30, 0.3)
    rep = check(wl.h, lambda: random.choice(list(cl.nodes.values())).url, "rnd")
    report("random schedule (%d rounds: %s)" % (ROUNDS, faults), rep, wl, cl)
    print("  availability during the faults (from each fault to the cluster's healing):")
    availability(wl, windows)
    print("  writes not acknowledged, by answer (the most frequent):")
    for why, n in sorted(wl.failure_kinds.items(), key=lambda x: -x[1])[:6]:
        print("    %6d  %s" % (n, why[:160]))
    reasons = {}
    for _, why in getattr(wl, "partial_why", []):
        key = " ".join(str(why).split()[:12])
        reasons[key] = reasons.get(key, 0) + 1
    print("  partial searches, by reason (of the first 50):")
    for why, n in sorted(reasons.items(), key=lambda x: -x[1])[:4]:
        print("    %6d  %s" % (n, why[:160]))
    probs = settled_replicas(cl, "rnd", list(range(0, 900, 4)), a) if describe(a, "rnd") else ["no description"]
    check_that(not probs, "random schedule: every replica holds the same points (%s)" % probs[:3])


def main():
    t_all = time.time()
    only = os.environ.get("NL_REPL_ONLY", "1234s")  # which parts (for debugging one)
    with Cluster(NL, session_ms=SESSION_MS) as cl:
        a, b, c = (cl.node(x).start(NODE_ARGS) for x in ("a", "b", "c"))
        if "1" in only:
            print("== 1. SIGKILL of a primary under load", flush=True)
            kill_test(cl, a)
        if "2" in only:
            print("== 2. SIGSTOP of a primary past its session timeout", flush=True)
            pause_test(cl, a)
        if "3" in only:
            print("== 3. catch-up of a follower after 50,000 writes", flush=True)
            catchup(cl, a, "cu", 50000, False)
        if "4" in only:
            print("== 4. randomized fault schedule", flush=True)
            random_schedule(cl, a, True)
    print("== 3b. catch-up by a snapshot copy (nodes keeping 256 KiB of log)", flush=True)
    with Cluster(NL, session_ms=SESSION_MS) as cl:
        if "s" not in only:
            return 1 if failures else 0
        p = cl.node("p").start(NODE_ARGS + ["--repl-log-bytes", "256K"])
        cl.node("q").start(NODE_ARGS + ["--repl-log-bytes", "256K"])
        catchup(cl, p, "cs", 50000, True)
        snapshot_pieces(cl, cl.nodes["q"], "cs")
    print("%d failure(s) in %.0f s" % (len(failures), time.time() - t_all))
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
