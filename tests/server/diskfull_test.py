"""A full disk under a real server (issue 27): a 128 MiB ext4 loop image, small flush and
compaction thresholds (the setting in which Debian's RocksDB used to abort on an assertion
after a failed WAL append), upserts until the disk is nearly full. Checks:
  - the server never dies; writes are refused with 507 insufficient_storage (the low
    watermark) or 503 shard_failed (a write that reached ENOSPC first), never a crash;
  - reads go on while writes are refused;
  - once space is freed, writes are taken again by themselves (the high watermark, and the
    failed shard's reopen);
  - every acknowledged point reads back, before and after a kill -9; nearline verify passes.

Usage: diskfull_test.py NEARLINE. Skips (exit 0, a message) unless it can make and mount a
loop image (root, util-linux, e2fsprogs)."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import fault_test as ft  # noqa: E402  (the server and HTTP helpers)

DIM = 128


def vec(i):
    return [float((i * 7 + d * 13) % 101) / 10.0 + d for d in range(DIM)]


def upsert(srv, ids):
    return ft.call(srv.port, "POST", "/v1/collections/c/points",
                   {"points": [{"id": i, "vector": vec(i)} for i in ids]})


def check_all(srv, acked, what):
    bad = 0
    for i in sorted(acked):
        st, b = ft.call(srv.port, "GET", f"/v1/collections/c/points/{i}")
        if st != 200 or any(abs(a - e) > 1e-3 for a, e in zip(b.get("vector", []), vec(i))):
            bad += 1
    ft.check(bad == 0, f"{what}: {len(acked) - bad} of {len(acked)} acknowledged points read back")


def main():
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("mount"):
        print("SKIP: needs root, mkfs.ext4 and mount for a loop image")
        return 0
    root = tempfile.mkdtemp(prefix="nl-diskfull-")
    img, mnt = os.path.join(root, "disk.img"), os.path.join(root, "mnt")
    os.makedirs(mnt)
    mounted = False
    try:
        subprocess.run(["truncate", "-s", "128M", img], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
        if subprocess.run(["mount", "-o", "loop", img, mnt], capture_output=True).returncode != 0:
            print("SKIP: cannot mount a loop image here")
            return 0
        mounted = True
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:  # freed later, to show that writes resume by themselves
            f.write(b"\0" * (24 << 20))
            os.fsync(f.fileno())
        db = os.path.join(mnt, "db")
        args = ["--flush-points", "2000", "--compact-max-segments", "2", "--disk-low-watermark", "12M",
                "--disk-high-watermark", "30M"]
        srv = ft.Server(db, args)
        ft.check(ft.call(srv.port, "PUT", "/v1/collections/c", {"dim": DIM, "metric": "l2"})[0] == 201, "created")
        acked, codes, nid = set(), {}, 0
        refused_at = None
        deadline = time.time() + 240
        for b in range(600):  # bounded: at most 300,000 points or four minutes
            if time.time() > deadline or srv.p.poll() is not None:
                break
            ids = list(range(nid, nid + 500))
            nid += 500
            st, body = upsert(srv, ids)
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            codes[(st, code)] = codes.get((st, code), 0) + 1
            if st == 200:
                acked |= set(ids)
            elif st in (503, 507):
                if refused_at is None:
                    refused_at = len(acked)
                if codes.get((507, "insufficient_storage"), 0) + codes.get((503, "shard_failed"), 0) >= 20:
                    break
                time.sleep(0.1)
        print(f"   answers: {codes}; {len(acked)} points acknowledged, first refusal after {refused_at}")
        ft.check(srv.p.poll() is None, "the server is alive after the disk filled (no abort)")
        ft.check((507, "insufficient_storage") in codes,
                 "writes were refused with 507 insufficient_storage below the low watermark")
        ft.check(all(k[0] in (200, 503, 507) for k in codes), f"no other answer to an upsert ({list(codes)})")
        st, b = ft.call(srv.port, "POST", "/v1/collections/c/search", {"vector": vec(3), "k": 10})
        ft.check(st == 200 and len(b.get("results", [])) == 10, f"searches go on while writes are refused ({st})")
        check_all(srv, acked, "while the disk is full")
        os.unlink(filler)
        more = list(range(nid, nid + 100))

        def resumed():
            st, _ = upsert(srv, more)
            return st == 200
        ok = ft.wait_for(resumed, 60)
        ft.check(ok, "writes are taken again by themselves once space is freed")
        if ok:
            acked |= set(more)
        srv.kill()
        srv2 = ft.Server(db, args)
        check_all(srv2, acked, "after kill -9 and a restart")
        srv2.stop()
        ft.verify(db)
        # Without watermarks the disk fills under RocksDB itself: the WAL append fails with
        # ENOSPC, the store takes no further write (the second append is what aborted
        # Debian's RocksDB), the shard answers 503 shard_failed and reopens once it can.
        filler2 = os.path.join(mnt, "filler2")
        # Leave about 8 MiB to fill; freeing the filler then gives more than the 16 MiB a
        # reopen waits for.
        st = os.statvfs(mnt)
        room = st.f_bavail * st.f_frsize
        with open(filler2, "wb") as f:
            f.write(b"\0" * max(room - (8 << 20), 20 << 20))
            os.fsync(f.fileno())
        srv3 = ft.Server(db, args[:4] + ["--disk-low-watermark", "off"])
        codes = {}
        for b in range(400):
            if srv3.p.poll() is not None:
                break
            ids = list(range(nid, nid + 500))
            nid += 500
            try:
                st, body = upsert(srv3, ids)
            except OSError as e:
                st, body = 0, {"error": {"code": str(e)}}
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            codes[(st, code)] = codes.get((st, code), 0) + 1
            if st == 200:
                acked |= set(ids)
            elif sum(v for k, v in codes.items() if k[0] != 200) >= 10:
                break
        print(f"   without watermarks: {codes}")
        ft.check(srv3.p.poll() is None, "without watermarks: the server is alive after ENOSPC (no abort)")
        ft.check(any(k[0] in (500, 503) for k in codes), "without watermarks: writes fail once the disk is full")
        os.unlink(filler2)
        more = list(range(nid, nid + 100))
        ok = ft.wait_for(lambda: upsert(srv3, more)[0] == 200, 60)
        ft.check(ok, "without watermarks: writes are taken again by themselves once space is freed")
        if ok:
            acked |= set(more)
        check_all(srv3, acked, "without watermarks, after the reopen")
        srv3.kill()
        srv4 = ft.Server(db, args)
        check_all(srv4, acked, "without watermarks, after kill -9 and a restart")
        srv4.stop()
        ft.verify(db)
    finally:
        for p in ft.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        log = os.path.join(mnt, "server.log")
        if ft.fails and os.path.exists(log):
            shutil.copy(log, os.path.join(root, "server.log"))
            print(f"server log kept in {root}/server.log")
        if mounted:
            subprocess.run(["umount", "-l", mnt])
        if not ft.fails:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'FAILED' if ft.fails else 'passed'}: {ft.fails} failure(s)")
    return 1 if ft.fails else 0


if __name__ == "__main__":
    sys.exit(main())
