#!/usr/bin/python3
"""iofault_test.py NEARLINE — I/O faults inside replicated shards (issue 27), injected at the
system-call level with strace's -e inject= into one node of a two-node cluster (real
processes, a real ZooKeeper on loopback: harness.py), under load, each checked as
replication_test.py checks its faults (history.py: every operation recorded with its
outcome; no acknowledged write lost, no acknowledged delete back, nothing never written)
and with the replicas compared afterwards:

  1. a follower's op-log apply: the first fdatasync of the follower fails (its RocksDB WAL
     sync while it applies entries the primary sent). Its store stops taking writes, it
     refuses the entries, the database's recovery thread reopens the shard, and the primary's
     link catches it up again;
  2. the primary's op-log append: the same on the primary. The write whose sync failed is
     indeterminate (503 shard_failed), later ones are refused until the reopen;
  3. a snapshot install on a follower the log cannot catch up (the primary keeps 256 KiB of
     log), three ways: the staged copy's directory sync fails (nothing installed), the
     rename that moves the copy into place fails (the old replica is put back), the sync of
     the collection directory after the move fails (the outcome is unknown: both copies are
     kept, the new one served, and the primary sends the copy again).
     strace's -P limits each injection to the one path the step touches.

At the end both nodes are stopped, `nearline verify` must pass on each database, and after a
restart every history is checked again and every bulk-written point read back.
Skips (exit 0, a message) without strace or ptrace permission.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, http  # noqa: E402
from history import Workload, check, read_state, vec  # noqa: E402
import replication_test as rt  # noqa: E402  (its helpers; argv[1] is NEARLINE for both)

NL = os.path.abspath(sys.argv[1])
# a flush only by age (the first fdatasync is then the op log's), 256 KiB of log kept (a
# follower left behind needs a snapshot), copies sent at 1 MB/s (the install comes seconds
# after the follower's start, after strace has attached)
ARGS = rt.NODE_ARGS + ["--flush-points", "100000", "--repl-log-bytes", "256K", "--move-rate-mb", "1"]
tracers = []


def strace(node, syscall, when="1", path=None):
    """Attaches to every thread of node; the when-th call of syscall (on path, if given)
    fails with EIO. Returns (process, output file)."""
    out = os.path.join(node.cluster.dir, "strace-%s-%d.out" % (node.id, len(tracers)))
    cmd = ["strace", "-qq", "-f", "-y", "-o", out, "-e", "trace=" + syscall, "-e",
           "inject=%s:error=EIO:when=%s" % (syscall, when), "-p", str(node.proc.pid)]
    if path:
        cmd[1:1] = ["-P", path]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tracers.append(p)
    time.sleep(0.5)  # attached before the fault is provoked
    return p, out


def detach(p):
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def injected(out):
    try:
        with open(out) as f:
            return [x.strip() for x in f if "INJECTED" in x]
    except OSError:
        return []


def metric(node, name):
    st, text = http("GET", node.url + "/metrics")
    total = None
    for line in (text if isinstance(text, str) else "").splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


def roles(cl, coll):
    s = rt.describe(cl.nodes["p"], coll)["shard_map"][0]
    primary = cl.nodes[s["primary"]]
    return primary, next(n for n in cl.nodes.values() if n is not primary)


def log_has(node, text):
    with open(node.log, errors="replace") as f:
        return text in f.read()


def oplog_case(cl, coll, target, seed):
    """A failed fdatasync on the primary or the follower while clients write."""
    p = cl.nodes["p"]
    st, _ = rt.create(p, coll, 1, 2)
    rt.check_that(st == 201, "%s: collection (1 shard, RF=2, quorum all) created" % coll)
    urls = rt.live_urls(cl)
    wl = Workload(urls, coll, 1, seed=seed, clients=3, ids=600, retries=2).start()
    time.sleep(2)
    primary, follower = roles(cl, coll)
    victim = primary if target == "primary" else follower
    reopens0 = metric(victim, "nearline_shard_reopens_total") or 0
    tr, out = strace(victim, "fdatasync")
    hit = rt.wait(lambda: injected(out), 20, 0.1)
    time.sleep(1)
    detach(tr)
    rt.check_that(hit, "%s: strace failed an fdatasync of the %s (%s) under load (%s)" % (
        coll, target, victim.id, (injected(out) or ["none"])[0][:90]))
    reopened = rt.wait(lambda: (metric(victim, "nearline_shard_reopens_total") or 0) > reopens0 and
                       metric(victim, "nearline_failed_shards") == 0, 30, 0.2)
    rt.check_that(reopened, "%s: the %s's failed shard was reopened by its recovery thread (metrics)" % (coll, target))
    if target == "follower":
        rt.check_that(log_has(victim, '"event":"replicate_refused","collection":"%s"' % coll),
                      "%s: the follower refused the entries whose apply failed (its log)" % coll)
    time.sleep(3)  # writes go on after the reopen
    back = rt.wait(lambda: rt.all_in_sync(p, coll), 60, 0.3)
    rt.check_that(back, "%s: the in-sync set is whole again after the %s's fault" % (coll, target))
    wl.stop()
    rep = check(wl.h, lambda: p.url, coll)
    rt.report("%s fdatasync EIO on the %s" % (coll, target), rep, wl, cl)
    why = sorted(wl.failure_kinds.items(), key=lambda x: -x[1])[:3]
    print("  %s: writes not acknowledged, by answer: %s" % (coll, why), flush=True)
    rt.check_that(rep["ok_ops"] > 200, "%s: writes were acknowledged around the fault (%d)" % (coll, rep["ok_ops"]))
    probs = rt.settled_replicas(cl, coll, list(range(600)), p)
    rt.check_that(not probs, "%s: both replicas hold the same points (%s)" % (coll, probs[:3]))
    return wl


def snapshot_case(cl, coll, what, syscall, when, path_of, unknown=False):
    """A follower caught up by a snapshot copy whose install meets a failed syscall;
    unknown: the failure leaves the outcome unknown (the shard is reopened, not rolled back)."""
    p = cl.nodes["p"]
    st, _ = rt.create(p, coll, 1, 2)
    rt.check_that(st == 201, "%s: collection created" % coll)
    primary, follower = roles(cl, coll)
    n = 40000
    ok = rt.bulk(primary, coll, 0, 2000)
    follower.stop()
    ok = rt.bulk(primary, coll, 2000, n - 2000) and ok
    time.sleep(3)  # the primary trims its log past the stopped follower meanwhile
    follower.start(ARGS, wait_ready=False)  # traced from its start: the copy may come at once
    cdir = os.path.join(follower.db, coll)
    tr, out = strace(follower, syscall, when, path_of(cdir))
    follower.wait_ready()
    reopens0 = metric(follower, "nearline_shard_reopens_total") or 0
    caught = rt.wait(lambda: rt.all_in_sync(p, coll), 120, 0.3)
    detach(tr)
    hit = injected(out)
    rt.check_that(ok and hit, "%s: strace failed the install's %s (%s)" % (coll, what, (hit or ["none"])[0][:110]))
    rt.check_that(log_has(primary, '"event":"snapshot_install_failed","collection":"%s"' % coll),
                  "%s: the primary saw the install fail (its log)" % coll)
    if unknown:
        rt.check_that(caught and (metric(follower, "nearline_shard_reopens_total") or 0) > reopens0,
                      "%s: the follower's shard was left out, reopened once its directory synced, and is in sync" % coll)
    else:
        rt.check_that(caught and log_has(follower, '"event":"snapshot_installed_here","collection":"%s"' % coll),
                      "%s: the follower then installed the copy sent again and is in sync" % coll)
    ids = list(range(0, n, 37))
    probs = rt.same_replicas(cl, coll, ids, p)
    rt.check_that(not probs, "%s: the follower's contents equal the primary's (%s)" % (coll, probs[:3]))
    left = [x for x in os.listdir(cdir) if x.startswith(".incoming") or x.startswith(".trash")]
    print("  %s: left in the collection directory: %s" % (coll, sorted(os.listdir(cdir))), flush=True)
    rt.check_that(not left, "%s: no staged or set-aside copy is left behind (%s)" % (coll, left))
    return n


def bulk_intact(url, coll, n):
    """The sampled ids of a bulk write that do not read back with their vector."""
    bad = []
    for i in range(0, n, 53):
        _, got = read_state(url, coll, i)
        if got is None or isinstance(got, str) or not np.allclose(got, vec(i, 1), atol=1e-4):
            bad.append(i)
    return bad


def main():
    if not shutil.which("strace"):
        print("SKIP: strace is not installed")
        return 0
    if subprocess.run(["strace", "-qq", "-e", "trace=none", "true"], capture_output=True).returncode != 0:
        print("SKIP: strace cannot trace here (ptrace not permitted)")
        return 0
    t0 = time.time()
    try:
        with Cluster(NL, session_ms=rt.SESSION_MS) as cl:
            p, q = (cl.node(x).start(ARGS) for x in ("p", "q"))
            only = os.environ.get("NL_IOFAULT_ONLY", "12")
            print("== 1. fdatasync EIO in a follower's op-log apply", flush=True)
            w1 = oplog_case(cl, "fa", "follower", 41) if "1" in only else None
            print("== 2. fdatasync EIO in a primary's op-log append", flush=True)
            w2 = oplog_case(cl, "pa", "primary", 42) if "2" in only else None
            print("== 3. a snapshot install meets a failed sync or rename", flush=True)
            bulks = {
                "sa": snapshot_case(cl, "sa", "staged directory sync", "fsync", "1",
                                    lambda d: os.path.join(d, ".incoming-0", "meta")),
                "sb": snapshot_case(cl, "sb", "rename into place", "rename", "1",
                                    lambda d: os.path.join(d, ".incoming-0")),
                # the collection directory's first sync is the one after .incoming-0 was made
                "sc": snapshot_case(cl, "sc", "collection directory sync after the move", "fsync", "2", lambda d: d,
                                    unknown=True),
            }
            print("== 4. stop, verify, restart, check again", flush=True)
            for node in (p, q):
                node.stop()
                r = subprocess.run([NL, "verify", "--db", node.db], capture_output=True, text=True, timeout=600)
                rt.check_that(r.returncode == 0, "nearline verify passes on %s (rc %d) %s" % (
                    node.id, r.returncode, (r.stdout + r.stderr).strip()[-300:]))
            for node in (p, q):
                node.start(ARGS)
            rt.wait(lambda: all(rt.all_in_sync(p, c) for c in ["fa"] * bool(w1) + ["pa"] * bool(w2) + list(bulks)), 60, 0.3)
            for coll, wl in (("fa", w1), ("pa", w2)):
                if not wl:
                    continue
                rep = check(wl.h, lambda: p.url, coll)
                rt.report("%s after the restart" % coll, rep, wl)
            for coll, n in bulks.items():
                bad = bulk_intact(p.url, coll, n)
                rt.check_that(not bad, "%s after the restart: every sampled bulk point reads back (%s)" % (coll, bad[:5]))
    finally:
        for t in tracers:
            if t.poll() is None:
                t.kill()
                t.wait()
    print("%d failure(s) in %.0f s" % (len(rt.failures), time.time() - t0))
    for f in rt.failures:
        print("FAILED:", f)
    return 1 if rt.failures else 0


if __name__ == "__main__":
    sys.exit(main())
