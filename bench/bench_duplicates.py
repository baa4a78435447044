#!/usr/bin/python3
"""bench_duplicates.py NEARLINE [--words N] [--port P] — recall on data full of exact and
near duplicates (issue 28), as a new user meets it: a synthetic bag-of-words corpus
(20,000 x 384-d, 5 topics of 10 words, N words a document hashed into signed dimensions,
cosine), upserted over HTTP through the Python client, searched at several list sizes
right after the upserts (the fresh index) and again once a 1 s flush age has written
everything to segments. Recall@10 is reported twice: by ids against a stable brute-force
order, and counting ties as hits (a result whose true score equals the 10th's), which is
the one that means something when many points are identical.
"""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
from nearline import Client  # noqa: E402

NL = sys.argv[1]
WORDS = int(sys.argv[sys.argv.index("--words") + 1]) if "--words" in sys.argv else 2
PORT = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 18641
N, D, TOPICS, VOCAB, NQ = 20000, 384, 5, 10, 200


def corpus(rng, vocab, n):
    out = np.zeros((n, D), np.float32)
    for i in range(n):
        for w in rng.choice(vocab[rng.integers(TOPICS)], size=WORDS):
            h = int(w) * 2654435761 % (2 ** 32)
            out[i, h % D] += 1.0 if (h >> 16) & 1 else -1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def run(mode, X, Q):
    work = tempfile.mkdtemp(prefix="nl-dup-")
    srv = subprocess.Popen([NL, "serve", "--db", work + "/db", "--listen", "127.0.0.1:%d" % PORT] +
                           (["--flush-age-ms", "1000"] if mode == "flushed" else []),
                           stdout=open(work + "/log", "w"), stderr=subprocess.STDOUT)
    try:
        c = Client("http://127.0.0.1:%d" % PORT)
        for _ in range(100):
            try:
                c.health()
                break
            except Exception:  # noqa: BLE001 — not up yet
                time.sleep(0.1)
        c.create_collection("c", D, metric="cosine")
        c.upsert("c", [{"id": i, "vector": X[i].tolist()} for i in range(len(X))])
        while mode == "flushed" and c.describe("c")["stats"]["fresh_points"] > 0:
            time.sleep(0.5)
        st = c.describe("c")["stats"]
        S = Q @ X.T
        for L in (None, 32, 64, 128):
            by_id = tie = 0
            for qi in range(len(Q)):
                gt = np.argsort(-S[qi], kind="stable")[:10]
                kth = S[qi][gt[-1]]
                res = c.search("c", Q[qi].tolist(), k=10, L=L, with_metadata=False)
                ids = [r["id"] for r in res]
                by_id += len(set(ids) & set(gt.tolist())) / 10
                tie += sum(1 for i in ids if S[qi][i] >= kth - 1e-5) / 10
            print("| %s (%d segments) | %s | %.3f | %.3f |" % (mode, st["segments"], L or "default (64)",
                                                                by_id / len(Q), tie / len(Q)), flush=True)
    finally:
        srv.terminate()
        srv.wait()
        subprocess.run(["rm", "-rf", work])


def main():
    rng = np.random.default_rng(1)
    vocab = rng.integers(0, 2 ** 31, size=(TOPICS, VOCAB))
    X = corpus(rng, vocab, N)
    Q = corpus(rng, vocab, NQ)
    print("%d points, %d distinct, %d words a document" % (N, len({x.tobytes() for x in X}), WORDS))
    print("| index | L | recall@10 by id | recall@10, ties as hits |\n|---|---|---|---|")
    for mode in ("fresh", "flushed"):
        run(mode, X, Q)


if __name__ == "__main__":
    main()
