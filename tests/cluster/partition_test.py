#!/usr/bin/python3
"""partition_test.py NEARLINE [--rounds N] — network partitions made with network
namespaces: (1) the primary of a shard cut off from ZooKeeper and from its followers while
clients go on writing and searching through every node (the cut-off one included), then
healed; (2) a randomized fault schedule of --rounds rounds (20 in CI) mixing partitions
(short ones, and ones past the session timeout), kills, pauses, restarts and ZooKeeper
restarts, under load. Each history is checked as in replication_test.py, and with it the
statements of docs/cluster.md on what a read may see during a partition.

Every address it uses is inside namespaces it creates and removes itself: a "world"
namespace (this script re-runs itself inside it) holding a bridge with the clients'
address 10.77.0.1 and ZooKeeper's 10.77.0.2, and one namespace per node (10.77.0.11..13)
joined to the bridge by a veth pair. The partition is blackhole routes inside the
primary's namespace to ZooKeeper's and the followers' addresses (the clients can still
reach it). Skips with a message where namespaces cannot be made (not root, no `ip netns`).
"""
import atexit
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

NL = os.path.abspath(sys.argv[1])
INSIDE = "--inside" in sys.argv
TAG = sys.argv[sys.argv.index("--inside") + 1] if INSIDE else "nlp%d" % os.getpid()
WORLD = TAG + "w"
NODES = {"a": "10.77.0.11", "b": "10.77.0.12", "c": "10.77.0.13"}
SESSION_MS = 3000
ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 20


def sh(*args, check=True):
    return subprocess.run(list(args), check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outer():
    if os.geteuid() != 0:
        print("skip: the partition test needs root (network namespaces)")
        return 0
    if sh("ip", "netns", "add", WORLD, check=False).returncode != 0:
        print("skip: cannot create a network namespace here (ip netns add failed)")
        return 0

    def cleanup():
        for n in NODES:
            sh("ip", "netns", "del", "%s%s" % (TAG, n), check=False)
        sh("ip", "netns", "del", WORLD, check=False)

    atexit.register(cleanup)
    try:
        r = subprocess.run(["ip", "netns", "exec", WORLD, sys.executable, os.path.abspath(__file__), NL, "--inside",
                            TAG, "--rounds", str(ROUNDS)], timeout=1500)
        return r.returncode
    finally:
        cleanup()


def setup_net():
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "addr", "add", "10.77.0.1/24", "dev", "br0")
    sh("ip", "addr", "add", "10.77.0.2/24", "dev", "br0")
    sh("ip", "link", "set", "br0", "up")
    for n, ip in NODES.items():
        ns = TAG + n
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", "v" + n, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", "v" + n, "master", "br0")
        sh("ip", "link", "set", "v" + n, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", ip + "/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")


def cut(n, peers, on):
    """Blackhole routes in n's namespace to ZooKeeper and its peers (or their removal)."""
    for ip in ["10.77.0.2"] + [NODES[p] for p in peers]:
        sh("ip", "netns", "exec", TAG + n, "ip", "route", "add" if on else "del", "blackhole", ip + "/32",
           check=False)


def inner():
    from harness import Cluster
    from history import Workload, check
    import replication_test as rt

    setup_net()
    failures = []

    def ok(cond, what):
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            failures.append(what)

    with Cluster(NL, session_ms=SESSION_MS, zk_host="10.77.0.2") as cl:
        for n, ip in NODES.items():
            cl.node(n, host=ip, netns=TAG + n).start(rt.NODE_ARGS + ["--advertise", "%s:7700" % ip])
        a = cl.nodes["a"]
        st, _ = rt.create(a, "pt", 3, 2)
        ok(st == 201, "collection pt (3 shards, RF=2) created across three network namespaces")
        up = lambda: [n.url for n in cl.nodes.values()]  # noqa: E731 — every node, the cut-off one too
        wl = Workload(up, "pt", 3, seed=21, clients=3, ids=600).start()
        time.sleep(3)
        d = rt.describe(a, "pt")
        victim = d["shard_map"][0]["primary"]
        peers = [p for p in NODES if p != victim]
        print("  cutting %s (primary of shard 0) off from ZooKeeper and from %s" % (victim, peers), flush=True)
        t0 = time.time()
        cut(victim, peers, True)
        other = cl.nodes[peers[0]]
        moved = rt.wait(lambda: rt.describe(other, "pt")["shard_map"][0]["primary"] != victim, 30, 0.1)
        print("  the other side promoted a new primary of shard 0 after %.2f s" % (time.time() - t0), flush=True)
        ok(moved, "the partitioned primary's shard failed over on the other side")
        # the cut-off primary refuses writes to its shard (it has no session)
        time.sleep(1)
        from history import shard_of, vec
        ids0 = [i for i in range(5000, 6000) if shard_of(i, 3) == 0][:5]
        acks = 0
        for i in ids0:
            st, _ = cl.nodes[victim].call("POST", "/internal/v1/collections/pt/shards/0/points",
                                          {"points": [{"id": i, "vector": [float(x) for x in vec(i, 1)]}]},
                                          headers=rt.KEY_HDR, timeout=15)
            acks += st == 200
        ok(acks == 0, "during the partition the cut-off primary acknowledges no write to its shard (%d of %d)"
           % (acks, len(ids0)))
        time.sleep(2)
        cut(victim, peers, False)
        print("  healed after %.1f s" % (time.time() - t0), flush=True)
        back = rt.wait(lambda: rt.all_in_sync(other, "pt"), 60, 0.3)
        ok(back, "healed: the old primary rejoined as a follower and every in-sync set is whole")
        time.sleep(1)
        wl.stop()
        rt.wait(lambda: rt.all_in_sync(other, "pt"), 30, 0.3)
        rep = check(wl.h, lambda: random.choice(up()), "pt")
        print("  %d ids, %d ok ops, %d indeterminate; searches ok %d, failed %d, partial %d" % (
            rep["ids"], rep["ok_ops"], rep["indeterminate_ops"], wl.search_stats["ok"], wl.search_stats["failed"],
            wl.search_stats["partial"]), flush=True)
        ok(not rep["lost"] and not rep["resurrected"] and not rep["phantom"] and not rep["unreadable"],
           "partition: no acknowledged write lost (%s), no acknowledged delete back (%s), nothing never written "
           "(%s), every id readable (%s)" % (rep["lost"][:3], rep["resurrected"][:3], rep["phantom"][:3],
                                             rep["unreadable"][:3]))
        ok(not wl.read_problems, "partition: reads through either side returned no duplicate, unknown or "
           "stale-score result (%s)" % wl.read_problems[:3])
        probs = rt.settled_replicas(cl, "pt", list(range(0, 600, 3)), other)
        ok(not probs, "partition: nothing divergent: every replica holds the same points (%s)" % probs[:3])
        schedule(cl, ok)
    print("%d failure(s)" % len(failures))
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


def schedule(cl, ok):
    """Random rounds of partitions, kills, pauses, restarts and ZooKeeper restarts."""
    from history import Workload, check
    import replication_test as rt
    a = cl.nodes["a"]
    st, _ = rt.create(a, "prnd", 4, 3)
    ok(st == 201, "collection prnd (4 shards, RF=3) created")
    live = lambda: [n.url for n in cl.nodes.values() if n.proc.poll() is None and not getattr(n, "paused", 0)]  # noqa
    # clients retry a write or search not answered 200 twice, as replication_test's schedule
    wl = Workload(live, "prnd", 4, seed=31, clients=3, ids=900, retries=2, search_retries=2).start()
    rng = random.Random(int(os.environ.get("NL_FAULT_SEED", "16")))
    kinds = {}
    windows = []  # (kind, start, healed): availability per kind of fault
    for r in range(ROUNDS):
        t_fault = time.time()
        kind = rng.choice(["partition", "partition", "short-partition", "kill", "pause", "restart", "zookeeper"])
        n = rng.choice(list(cl.nodes.values()))
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind in ("partition", "short-partition"):
            peers = [p for p in NODES if p != n.id]
            cut(n.id, peers, True)
            time.sleep(SESSION_MS / 1000 + rng.uniform(0.5, 3) if kind == "partition" else rng.uniform(0.3, 1.5))
            cut(n.id, peers, False)
        elif kind == "kill":
            n.kill()
            time.sleep(rng.uniform(0.5, 3))
            n.start(rt.NODE_ARGS + ["--advertise", "%s:7700" % n.host])
        elif kind == "pause":
            n.pause_for(SESSION_MS / 1000 + rng.uniform(0.5, 2))
        elif kind == "restart":
            n.stop()
            n.start(rt.NODE_ARGS + ["--advertise", "%s:7700" % n.host])
        else:
            cl.zk_stop()
            time.sleep(rng.uniform(0.5, 2))
            cl.zk_start()
        healed = rt.wait(lambda: all(rt.all_in_sync(x, "prnd") for x in cl.nodes.values()), 60, 0.3)
        windows.append((kind, t_fault, time.time()))
        print("  round %d: %s %s; %s" % (r + 1, kind, n.id if kind != "zookeeper" else "", "healed" if healed else
                                           "NOT healed in 60 s"), flush=True)
        if not healed:
            ok(False, "round %d (%s): the cluster healed" % (r + 1, kind))
            break
    wl.stop()
    rt.wait(lambda: rt.all_in_sync(a, "prnd"), 30, 0.3)
    rep = check(wl.h, lambda: random.choice(live()), "prnd")
    print("  schedule (%d rounds: %s): %d ids, %d ok ops, %d indeterminate, %d refused (not applied); searches ok %d, "
          "failed %d, partial %d" % (ROUNDS, kinds, rep["ids"], rep["ok_ops"], rep["indeterminate_ops"],
                                     rep["failed_ops"], wl.search_stats["ok"],
        wl.search_stats["failed"], wl.search_stats["partial"]), flush=True)
    print("  availability during the faults (from each fault to the cluster's healing):")
    rt.availability(wl, windows)
    ok(not rep["lost"] and not rep["resurrected"] and not rep["phantom"] and not rep["unreadable"],
       "random schedule with partitions: no acknowledged write lost (%s), no acknowledged delete back (%s), nothing "
       "never written (%s), every id readable (%s)" % (rep["lost"][:3], rep["resurrected"][:3], rep["phantom"][:3],
                                                        rep["unreadable"][:3]))
    ok(not wl.read_problems, "random schedule with partitions: no duplicate, unknown or stale-score search result "
       "(%s)" % wl.read_problems[:3])
    probs = rt.settled_replicas(cl, "prnd", list(range(0, 900, 4)), a)
    ok(not probs, "random schedule with partitions: every replica holds the same points (%s)" % probs[:3])


if __name__ == "__main__":
    sys.exit(inner() if INSIDE else outer())
