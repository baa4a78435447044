"""history.py — Jepsen-style histories for the cluster's fault tests.

Clients record every operation they issue (upserts and deletes of numbered ids, each
upsert a new version with its own vector) with its outcome: ok (200), or info when the
answer did not say it was applied (no answer, a timeout, a 503): an indeterminate
operation, which may take effect at any moment after it was issued. A router's 503 names
the shards whose part failed (each part is all or nothing), so only the ids of those
shards become indeterminate; the rest of the batch is ok.

check() then reads every id (retrying for 10 s one that cannot be read: a refusal while the
cluster settles is not a lost write) and compares: the value must be the one the last acknowledged
operation left, or one an indeterminate operation could have left (Jepsen's rule: an
indeterminate operation's interval never closes). So: no acknowledged write lost (a
missing or older version), no acknowledged delete resurrected, and no value that was never
written (every vector read, and every search result's score, matches a version issued for
that id). Searches during the run are checked the same way, and for duplicate ids.
"""
import random
import struct
import threading
import time

import numpy as np

from harness import http

DIM = 8
ABSENT = "absent"


def shard_of(i, shards):
    """nl_shard_of: FNV-1a 64 of the id's store key (type byte 1, then 8 bytes big-endian)."""
    if shards <= 1:
        return 0
    h = 1469598103934665603
    for b in b"\x01" + struct.pack(">Q", i):
        h ^= b
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h % shards


def vec(i, v):
    """The vector of version v of id i (float32 exactly representable in JSON)."""
    r = np.random.default_rng(i * 1000003 + v)
    return np.round(r.normal(size=DIM), 3).astype(np.float32)


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = {}  # id -> [(seq, kind, version, outcome)]
        self.issued = {}  # id -> set of versions ever issued
        self.seq = 0
        self.counts = {"ok": 0, "info": 0, "fail": 0}

    def issue(self, ids, kind, versions):
        with self.lock:
            for i, v in zip(ids, versions):
                if kind == "upsert":
                    self.issued.setdefault(i, set()).add(v)

    def record(self, ids, kind, versions, outcomes):
        with self.lock:
            for i, v, o in zip(ids, versions, outcomes):
                self.seq += 1
                self.ops.setdefault(i, []).append((self.seq, kind, v, o))
                self.counts[o] += 1

    def candidates(self, i):
        """The states id i may be in now: {version, or ABSENT}."""
        ops = self.ops.get(i, [])
        last_ok = None
        for op in ops:
            if op[3] == "ok":
                last_ok = op
        c = {ABSENT} if last_ok is None else {ABSENT if last_ok[1] == "delete" else last_ok[2]}
        for op in ops:
            if op[3] == "info":
                c.add(ABSENT if op[1] == "delete" else op[2])
        return c, last_ok


class Workload:
    """Writer threads (each owns the ids i with i % clients == its number and writes them
    one batch at a time, so its operations on an id are sequential) and a reader, sending
    to a random node of urls() (the nodes believed up)."""

    def __init__(self, urls, collection, shards, clients=3, ids=900, batch=12, deletes=0.2, timeout=20, seed=7,
                 run=None, reader=True, share=None, retries=0, search_retries=0):
        self.urls, self.coll, self.shards = urls, collection, shards
        self.clients, self.ids, self.batch, self.deletes, self.timeout = clients, ids, batch, deletes, timeout
        self.h = share.h if share else History()
        self.stop_ev = threading.Event()
        self.threads = []
        self.version = share.version if share else {}  # shared with another workload on other ids
        self.run = list(range(clients)) if run is None else list(run)
        self.with_reader = reader
        self.seed = seed
        self.search_stats = {"ok": 0, "failed": 0, "partial": 0, "retried": 0}
        self.timeline = []  # writes: (start, end, ids ok, ids indeterminate, ids failed)
        self.failure_kinds = {}  # a failed write's status and reason -> count
        self.search_timeline = []  # searches: (start, end, "complete" | "partial" | "failed")
        self.search_failures = []
        self.retries = retries  # a write not answered 200 is sent again (same versions), as a client would
        self.search_retries = search_retries  # the same for a search refused or cut off
        self.write_stats = {"ok": 0, "retried": 0, "failed": 0}
        self.failures = []
        self.read_problems = []
        self.refusals = {}  # id -> [(version, [(node url, status, answer) per try])] of writes recorded "fail"

    def start(self):
        for c in self.run:
            t = threading.Thread(target=self._writer, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)
        if self.with_reader:
            t = threading.Thread(target=self._reader, daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=self.timeout + 10)

    def _pick(self):
        u = self.urls()
        return random.choice(u) if u else None

    def _writer(self, c):
        rng = random.Random(self.seed * 100 + c)
        mine = [i for i in range(self.ids) if i % self.clients == c]
        while not self.stop_ev.is_set():
            ids = rng.sample(mine, min(self.batch, len(mine)))
            kind = "delete" if rng.random() < self.deletes else "upsert"
            if kind == "upsert":
                vs = []
                for i in ids:
                    self.version[i] = self.version.get(i, 0) + 1
                    vs.append(self.version[i])
                body = {"points": [{"id": i, "vector": [float(x) for x in vec(i, v)]} for i, v in zip(ids, vs)]}
                path = "/v1/collections/%s/points" % self.coll
            else:
                vs = [0] * len(ids)
                body = {"ids": ids}
                path = "/v1/collections/%s/points/delete" % self.coll
            self.h.issue(ids, kind, vs)
            t0 = time.time()
            # Per id, across attempts (the same versions each time): ok once any attempt
            # applied it; else info if any attempt may have; else fail (every attempt was
            # refused before anything was applied: "applied": false, or nothing sent).
            maybe = [False] * len(ids)
            done = [False] * len(ids)
            tries = []
            for attempt in range(self.retries + 1):
                url = self._pick()
                st, ans = http("POST", url + path, body, timeout=self.timeout, refused_status=-1) if url else (-1, None)
                tries.append((url, st, str(ans)[:400]))
                for k, i in enumerate(ids):
                    o = self._outcome(i, st, ans)
                    done[k] = done[k] or o == "ok"
                    maybe[k] = maybe[k] or o == "info"
                if st == 200 or attempt == self.retries or self.stop_ev.is_set():
                    break
                self.write_stats["retried"] += 1
                time.sleep(min(0.1 * 2 ** attempt, 1.0))  # backing off, as a client does
            self.write_stats["ok" if st == 200 else "failed"] += 1
            if st != 200 and len(self.failures) < 20:
                self.failures.append((st, ans))
            if st != 200:  # why, in a few words, for the availability report
                why = str(st)
                if isinstance(ans, dict):
                    fs = ans.get("failed_shards") or []
                    err = fs[0].get("error", "") if fs else (ans.get("error") or {}).get("message", "")
                    why += " " + (ans.get("error") or {}).get("code", "") + ": " + " ".join(err.split()[:9])
                with self.h.lock:
                    self.failure_kinds[why] = self.failure_kinds.get(why, 0) + 1
            outcomes = ["ok" if d else "info" if m else "fail" for d, m in zip(done, maybe)]
            with self.h.lock:
                for i, v, o in zip(ids, vs, outcomes):
                    if o == "fail" and len(self.refusals.get(i, ())) < 4:
                        self.refusals.setdefault(i, []).append((v, tries))
            self.h.record(ids, kind, vs, outcomes)
            self.timeline.append((t0, time.time(), outcomes.count("ok"), outcomes.count("info"),
                                  outcomes.count("fail")))
            time.sleep(rng.random() * 0.01)

    def _outcome(self, i, st, ans):
        """One attempt's outcome for id i: ok, info (may or may not be applied) or fail (not
        applied: the router named its shard with "applied": false, or a node refused the
        whole request before routing it, or no node was there to send it to)."""
        if st == 200:
            return "ok"
        if st == -1:  # no node to send it to, or the connection was refused: never sent
            return "fail"
        if st == 503 and isinstance(ans, dict) and ans.get("applied") is False:
            return "fail"
        if st == 503 and isinstance(ans, dict) and isinstance(ans.get("failed_shards"), list):
            mine = [f for f in ans["failed_shards"] if f.get("shard") == shard_of(i, self.shards)]
            if not mine:
                return "ok"
            return "fail" if all(f.get("applied") is False for f in mine) else "info"
        if st == 503 and isinstance(ans, dict) and (ans.get("error") or {}).get("code") == "refused":
            return "fail"
        return "info"

    def _reader(self):
        rng = random.Random(self.seed)
        while not self.stop_ev.is_set():
            q = np.round(np.array([rng.gauss(0, 1) for _ in range(DIM)], np.float32), 3)
            url = self._pick()
            if not url:
                time.sleep(0.05)
                continue
            # a search refused or cut off (its node killed under it, 503) is sent again to a
            # node picked afresh, as a client does, when the test allows retries
            t0 = time.time()
            for attempt in range(self.search_retries + 1):
                st, ans = http("POST", url + "/v1/collections/%s/search" % self.coll,
                               {"vector": [float(x) for x in q], "k": 10}, timeout=5)
                if (st == 200 and isinstance(ans, dict)) or attempt == self.search_retries or self.stop_ev.is_set():
                    break
                self.search_stats["retried"] += 1
                time.sleep(min(0.1 * 2 ** attempt, 1.0))
                url = self._pick() or url
            kind = "failed" if st != 200 or not isinstance(ans, dict) else "partial" if ans.get("partial") else "complete"
            self.search_timeline.append((t0, time.time(), kind))
            if st != 200 or not isinstance(ans, dict):
                self.search_stats["failed"] += 1
                if len(self.search_failures) < 20:
                    self.search_failures.append((url, st, ans))
                continue
            self.search_stats["ok"] += 1
            if ans.get("partial"):
                self.search_stats["partial"] += 1
                if len(self.read_problems) < 50 and self.retries:  # tests that allow none say why
                    self.partial_why = getattr(self, "partial_why", []) + [(ans.get("missing_shards"),
                                                                             ans.get("missing_reason"))]
            res = ans.get("results", [])
            ids = [r["id"] for r in res]
            if len(ids) != len(set(ids)):
                self.read_problems.append("a search returned an id twice: %s" % ids)
            with self.h.lock:
                for r in res:
                    vs = self.h.issued.get(r["id"])
                    if not vs:
                        self.read_problems.append("a search returned id %s, never written" % r["id"])
                        continue
                    if not any(abs(float(((vec(r["id"], v) - q) ** 2).sum()) - r["score"]) < 1e-3 for v in vs):
                        self.read_problems.append("a search returned id %s with score %s, of no version written"
                                                  % (r["id"], r["score"]))
            time.sleep(0.02)


def read_state(url, coll, i, key_hdr=None, path=None):
    """(status, version or ABSENT or 'phantom:...' ) of id i through url."""
    st, ans = http("GET", url + (path or "/v1/collections/%s/points/%d" % (coll, i)), timeout=10, headers=key_hdr)
    if st == 404:
        return st, ABSENT
    if st != 200 or not isinstance(ans, dict):
        return st, None
    got = np.array(ans.get("vector", []), np.float32)
    return st, got


def check(h, get_url, coll, ids=None):
    """Reads every id through get_url() and compares with the history. Returns a report."""
    lost, resurrected, phantom, unreadable = [], [], [], []
    ids = sorted(h.ops) if ids is None else ids
    for i in ids:
        cands, last_ok = h.candidates(i)
        st, got = read_state(get_url(), coll, i)
        for _ in range(40):  # a read refused while the cluster settles (a breaker, a map on its way)
            if got is not None:
                break
            time.sleep(0.25)
            st, got = read_state(get_url(), coll, i)
        if got is None:
            unreadable.append((i, st))
            continue
        if isinstance(got, str):
            state = ABSENT
        else:
            match = [v for v in h.issued.get(i, ()) if got.shape == (DIM,) and np.allclose(got, vec(i, v), atol=1e-4)]
            if not match:
                phantom.append(i)
                continue
            state = max(match)
        if state not in cands:
            refused = {op[2] for op in h.ops.get(i, []) if op[3] == "fail" and op[1] == "upsert"}
            if state != ABSENT and state in refused:
                lost.append((i, "version %s, of a write answered as not applied" % state, sorted(cands, key=str)))
            elif last_ok is not None and last_ok[1] == "delete" and state != ABSENT:
                resurrected.append((i, state))
            else:
                lost.append((i, state, sorted(cands, key=str)))
    return {"ids": len(ids), "ok_ops": h.counts["ok"], "indeterminate_ops": h.counts["info"],
            "failed_ops": h.counts["fail"], "lost": lost,
            "resurrected": resurrected, "phantom": phantom, "unreadable": unreadable}


def failover_prober(url, coll, shards, shard, stop_ev, log):
    """Writes one point of shard `shard` through url every 50 ms; log gets (time, ok)."""
    ids = [i for i in range(10 ** 6, 10 ** 6 + 100000) if shard_of(i, shards) == shard][:500]
    k = 0
    while not stop_ev.is_set():
        i = ids[k % len(ids)]
        k += 1
        st, _ = http("POST", url() + "/v1/collections/%s/points" % coll,
                     {"points": [{"id": i, "vector": [0.5] * DIM}]}, timeout=15)
        log.append((time.time(), st == 200))
        time.sleep(0.05)
