"""nlbench.py — what the issue-28 benchmarks share: command-line options, sift rows, fvecs/
ivecs output, exact ground truth (numpy), a cgroup-v1 memory cap and fio's ceiling."""
import json
import os
import subprocess
import sys

import numpy as np

ARGS = sys.argv[1:]
HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DEFAULT = os.path.join(HERE, "..", "..", "shared", "data")


def opt(name, default):
    """The value after --name on the command line, or default."""
    return ARGS[ARGS.index(name) + 1] if name in ARGS else default


def bvecs(path, rows):
    """The first rows of a bvecs file, as f32."""
    raw = np.fromfile(path, dtype=np.uint8)
    d = int(raw[:4].view(np.int32)[0])
    return raw.reshape(-1, 4 + d)[:rows, 4:].astype(np.float32)


def write_vecs(path, a, dtype):
    """fvecs (dtype float32) or ivecs (int32) rows."""
    a = np.ascontiguousarray(a, dtype=dtype)
    out = np.empty((a.shape[0], a.shape[1] + 1), dtype=np.int32)
    out[:, 0] = a.shape[1]
    out[:, 1:] = a.view(np.int32)
    out.tofile(path)


def truth(x, q, k, ids=None):
    """Exact top k by squared l2 (100 queries at a time; ties to the lower id): row ids of x,
    or ids[row] when ids is given."""
    ids = np.arange(len(x)) if ids is None else ids
    xx = (x.astype(np.float64) ** 2).sum(1)
    out = np.empty((len(q), k), dtype=np.int32)
    for s in range(0, len(q), 100):
        d = xx[None, :] - 2.0 * q[s:s + 100].astype(np.float64) @ x.T.astype(np.float64)
        part = np.argpartition(d, k, axis=1)[:, :k + 1]
        for i in range(len(d)):
            c = part[i][np.lexsort((ids[part[i]], d[i, part[i]]))]
            out[s + i] = ids[c[:k]]
    return out


def capped(cap_mb, name):
    """A command prefix that runs the rest inside a cgroup-v1 memory cap of cap_mb MiB
    (empty when cap_mb is 0 or there is no such controller)."""
    if not cap_mb:
        return []
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        print("no cgroup v1 memory controller; runs uncapped", file=sys.stderr)
        return []
    cg = "/sys/fs/cgroup/memory/" + name
    os.makedirs(cg, exist_ok=True)
    open(cg + "/memory.limit_in_bytes", "w").write(str(cap_mb << 20))
    return ["sh", "-c", 'echo $$ > %s/tasks && exec "$@"' % cg, "sh"]


def fio(path):
    """4 KiB random-read IOPS of the disk holding path (io_uring, O_DIRECT, QD32 x 2, 5 s);
    0 when fio is missing or fails."""
    try:
        out = subprocess.run(["fio", "--name=ceiling", "--filename=" + path, "--readonly", "--rw=randread", "--bs=4k",
                              "--direct=1", "--ioengine=io_uring", "--iodepth=32", "--numjobs=2", "--runtime=5",
                              "--time_based", "--group_reporting", "--output-format=json"],
                             check=True, capture_output=True, text=True).stdout
        return int(json.loads(out)["jobs"][0]["read"]["iops"])
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        return 0
