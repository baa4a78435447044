"""pause_soak.py — a soak of back-to-back pauses past the session timeout (and some
kills) under load, on three nodes with two replicated collections. Not in ctest: the
randomized schedule of replication_test.py covers the same faults in CI; this one repeats
the fault that found the stuck ZooKeeper call (docs/cluster.md, "Every call to ZooKeeper
ends") and the attach racing a snapshot install many times over.

    /usr/bin/python3 tests/cluster/pause_soak.py build/tools/nearline [ROUNDS [SEED]]

Bounded: ROUNDS faults (default 40), each followed by a wait of at most 60 s for every
shard to be in sync again. On the first round that does not heal it prints each
primary's view of its followers, each node's last warnings and its threads' stacks (with
gdb), and exits 1. Every process it starts is stopped on the way out (harness.Cluster).
"""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import replication_test as rt  # noqa: E402  (its helpers; it reads argv[1] as the binary)
from harness import Cluster  # noqa: E402
from history import Workload, check  # noqa: E402


def main():
    nl = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    with Cluster(nl, session_ms=rt.SESSION_MS) as cl:
        a = cl.node("a").start(rt.NODE_ARGS)
        for x in ("b", "c"):
            cl.node(x).start(rt.NODE_ARGS)
        for name, shards in (("x1", 4), ("x2", 2)):
            st, _ = rt.create(a, name, shards, 3)
            if st != 201:
                print("FAIL collection %s not created (%s)" % (name, st))
                return 1
        w1 = Workload(rt.live_urls(cl), "x1", 4, seed=9, clients=3, ids=900).start()
        w2 = Workload(rt.live_urls(cl), "x2", 2, seed=5, clients=2, ids=600).start()
        rng = random.Random(seed)
        healed = True
        for r in range(rounds):
            n = rng.choice(list(cl.nodes.values()))
            kind = rng.choice(["pause", "pause", "pause", "kill"])
            if kind == "pause":
                n.pause_for(rt.SESSION_MS / 1000 + rng.uniform(0.5, 2))
            else:
                n.kill()
                time.sleep(rng.uniform(0.5, 3))
                n.start(rt.NODE_ARGS)
            t0 = time.time()
            healed = rt.wait(lambda: rt.all_in_sync(a, "x1") and rt.all_in_sync(a, "x2"), 60, 0.3)
            print("round %d: %s %s: %s in %.1f s" % (r + 1, kind, n.id, "healed" if healed else "NOT healed",
                                                     time.time() - t0), flush=True)
            if not healed:
                rt.not_healed_report(cl, a, "x1")
                rt.not_healed_report(cl, a, "x2")
                break
        w1.stop()
        w2.stop()
        rep = check(w1.h, lambda: a.url, "x1")
        lost = rep["lost"] + rep["resurrected"] + rep["phantom"]
        print("history of x1: %d problem(s) %s" % (len(lost), lost[:3]))
        return 0 if healed and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
