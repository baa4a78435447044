"""I/O faults under a real server (issue 27): a failed sync while a flush or a compaction
records its result in the manifest, and while an upsert syncs the WAL. Each fault is
injected with strace's -e inject= into the one thread that makes the call (the flush and
compaction threads are named nl-flush and nl-compact), then:
  - the shard refuses writes (503 shard_failed) or has already been reopened by the
    database's recovery thread (metrics count the reopen), and takes writes again;
  - every acknowledged point reads back with its vector, before and after a kill -9;
  - an upsert whose answer was a 5xx is all or nothing (indeterminate, never half);
  - `nearline verify` passes on the database after the server is stopped.
Before the fix, the flush case lost all 1,100 acknowledged points at the restart.

Usage: fault_test.py NEARLINE (NL_FAULT_CASES="case_wal ..." runs only those). Skips (exit 0, a message) without strace or
ptrace permission."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cluster"))
from harness import free_port  # noqa: E402

NL = sys.argv[1] if len(sys.argv) > 1 else "nearline"
DIM = 8
procs = []
fails = 0


def check(cond, what):
    global fails
    print(("ok   - " if cond else "FAIL - ") + what, flush=True)
    fails += 0 if cond else 1


def call(port, method, path, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw and raw[:1] in b"{[" else raw.decode())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


class Server:
    def __init__(self, db, args, wrap=()):
        """wrap: a command the server runs under (strace); self.p is then that command."""
        self.db, self.args, self.port = db, args, free_port()
        self.log = open(os.path.join(os.path.dirname(db), "server.log"), "ab")
        self.p = subprocess.Popen(list(wrap) + [NL, "serve", "--db", db, "--listen", f"127.0.0.1:{self.port}",
                                                "--log-level", "warn"] + args, stdout=self.log, stderr=self.log)
        procs.append(self.p)
        for _ in range(200):
            try:
                if call(self.port, "GET", "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if self.p.poll() is not None:
                raise RuntimeError("server exited")
            time.sleep(0.05)
        raise RuntimeError("server did not come up")

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self):
        # under a wrapper the server is its child: signal it (strace then exits with it)
        try:
            with open(f"/proc/{self.p.pid}/task/{self.p.pid}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        for pid in kids or [self.p.pid]:
            os.kill(pid, signal.SIGTERM)
        self.p.wait(timeout=60)

    def threads(self, name):
        for _ in range(50):  # a shard's threads start with its collection
            found = self._threads(name)
            if found:
                return found
            time.sleep(0.1)
        return []

    def _threads(self, name):
        out = []
        for t in os.listdir(f"/proc/{self.p.pid}/task"):
            try:
                with open(f"/proc/{self.p.pid}/task/{t}/comm") as f:
                    if f.read().strip() == name:
                        out.append(int(t))
            except OSError:
                pass
        return out


def vec(i):
    return [float((i * 7 + d * 13) % 101) / 10.0 + d for d in range(DIM)]


def upsert(srv, ids):
    return call(srv.port, "POST", "/v1/collections/c/points",
                {"points": [{"id": i, "vector": vec(i), "metadata": {"n": i}} for i in ids]})


def metric(srv, name):
    st, text = call(srv.port, "GET", "/metrics")
    for line in (text if isinstance(text, str) else "").splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def check_points(srv, acked, what):
    """Every acknowledged id reads back with its vector."""
    bad = 0
    for i in sorted(acked):
        st, b = call(srv.port, "GET", f"/v1/collections/c/points/{i}")
        if st != 200 or any(abs(a - e) > 1e-4 for a, e in zip(b.get("vector", []), vec(i))):
            bad += 1
            if bad <= 3:
                print(f"   id {i}: {st} {str(b)[:200]}")
    check(bad == 0, f"{what}: {len(acked) - bad} of {len(acked)} acknowledged points read back")


def present(srv, ids):
    return sum(call(srv.port, "GET", f"/v1/collections/c/points/{i}")[0] == 200 for i in ids)


def wait_for(fn, seconds):
    end = time.time() + seconds
    while time.time() < end:
        if fn():
            return True
        time.sleep(0.1)
    return False


def strace_attach(tids, out, syscall="fdatasync", when="1", follow=False):
    cmd = ["strace", "-qq", "-o", out, "-e", f"trace={syscall}", "-e", f"inject={syscall}:error=EIO:when={when}"]
    if follow:
        cmd.append("-f")
    for t in tids:
        cmd += ["-p", str(t)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    time.sleep(0.5)  # attached before the fault is provoked
    return p


def injected(out):
    try:
        with open(out) as f:
            return "INJECTED" in f.read()
    except OSError:
        return False


def verify(db):
    r = subprocess.run([NL, "verify", "--db", db], capture_output=True, text=True, timeout=600)
    check(r.returncode == 0, f"nearline verify passes (rc {r.returncode}) {r.stdout.strip()[-200:]} {r.stderr.strip()[-200:]}")


def after_fault(srv, db, acked, tag):
    """The shard reopens and takes writes; all acknowledged points survive a kill -9."""
    check(wait_for(lambda: (metric(srv, "nearline_collection_shard_reopens_total") or 0) >= 1, 30),
          f"{tag}: the failed shard was reopened (metrics)")
    check(wait_for(lambda: call(srv.port, "GET", "/readyz")[0] == 200, 30), f"{tag}: /readyz is 200 again")
    check_points(srv, acked, f"{tag}, after the reopen")
    more = list(range(900000, 900050))
    st, b = upsert(srv, more)
    check(st == 200, f"{tag}: writes are taken again after the reopen ({st})")
    if st == 200:
        acked |= set(more)
    srv.kill()
    srv2 = Server(db, srv.args)
    check_points(srv2, acked, f"{tag}, after kill -9 and a restart")
    st, b = call(srv2.port, "POST", "/v1/collections/c/search", {"vector": vec(5), "k": 10})
    check(st == 200 and len(b.get("results", [])) == 10, f"{tag}: search answers after the restart ({st})")
    srv2.stop()
    verify(db)


def case_flush(root):
    """The issue's reproduction: a failed fdatasync of the flush's manifest batch."""
    db = os.path.join(root, "flush", "db")
    os.makedirs(os.path.dirname(db))
    srv = Server(db, ["--flush-points", "100000", "--flush-age-ms", "2000", "--compact-max-segments", "100"])
    check(call(srv.port, "PUT", "/v1/collections/c", {"dim": DIM, "metric": "l2"})[0] == 201, "flush: created")
    flush = srv.threads("nl-flush")
    check(len(flush) == 1, f"flush: one nl-flush thread ({flush})")
    out = os.path.join(root, "flush", "strace.out")
    tr = strace_attach(flush, out)
    acked = set()
    for b in range(11):
        ids = list(range(b * 100, b * 100 + 100))
        st, _ = upsert(srv, ids)
        if st == 200:
            acked |= set(ids)
    check(len(acked) == 1100, f"flush: 1,100 points acknowledged ({len(acked)})")
    check(wait_for(lambda: injected(out), 20), "flush: strace failed the manifest's fdatasync (EIO)")
    tr.wait(timeout=30)  # the thread ends when the shard is reopened
    after_fault(srv, db, acked, "flush")


def case_compaction(root):
    """The compaction variant: three segments, the merge's manifest batch fails its sync."""
    db = os.path.join(root, "compact", "db")
    os.makedirs(os.path.dirname(db))
    srv = Server(db, ["--flush-points", "100000", "--flush-age-ms", "500", "--compact-max-segments", "2"])
    check(call(srv.port, "PUT", "/v1/collections/c", {"dim": DIM, "metric": "l2"})[0] == 201, "compact: created")
    out = os.path.join(root, "compact", "strace.out")
    compact = srv.threads("nl-compact")
    check(len(compact) == 1, f"compact: one nl-compact thread ({compact})")
    tr = strace_attach(compact, out)
    acked = set()
    for b in range(3):
        ids = list(range(b * 500, b * 500 + 500))
        st, _ = upsert(srv, ids)
        if st == 200:
            acked |= set(ids)
        wait_for(lambda: (metric(srv, "nearline_collection_flushes_total") or 0) >= b + 1, 20)
    check(len(acked) == 1500, f"compact: 1,500 points acknowledged in three segments ({len(acked)})")
    check(wait_for(lambda: injected(out), 30), "compact: strace failed the compaction manifest's fdatasync (EIO)")
    tr.wait(timeout=30)
    after_fault(srv, db, acked, "compact")


def case_wal(root):
    """An upsert's WAL sync fails: that write is indeterminate (all or nothing), the shard
    answers 503 shard_failed until reopened, nothing acknowledged before is lost."""
    db = os.path.join(root, "wal", "db")
    os.makedirs(os.path.dirname(db))
    srv = Server(db, ["--threads", "1"])
    check(call(srv.port, "PUT", "/v1/collections/c", {"dim": DIM, "metric": "l2"})[0] == 201, "wal: created")
    acked = set()
    for b in range(5):
        ids = list(range(b * 100, b * 100 + 100))
        if upsert(srv, ids)[0] == 200:
            acked |= set(ids)
    out = os.path.join(root, "wal", "strace.out")
    tr = strace_attach([srv.p.pid], out, follow=True)
    failed_batch, codes = None, []
    for b in range(5, 40):
        ids = list(range(b * 100, b * 100 + 100))
        st, body = upsert(srv, ids)
        codes.append(st)
        if st == 200:
            acked |= set(ids)
            continue
        failed_batch = ids
        check(st == 503 and body.get("error", {}).get("code") == "shard_failed" and "applied" not in body,
              f"wal: the write whose sync failed answers 503 shard_failed, not said to be unapplied "
              f"({st} {str(body)[:160]})")
        msg = body.get("error", {}).get("message", "")
        check(db not in msg and "/" + os.path.basename(db) + "/" not in msg, "wal: the message names no server path")
        break
    tr.send_signal(signal.SIGINT)  # detach before the recovery thread reopens the store
    tr.wait(timeout=30)
    check(failed_batch is not None, f"wal: an upsert failed under the injected EIO ({codes[-3:]})")
    if failed_batch:
        n = present(srv, failed_batch)
        check(n in (0, len(failed_batch)), f"wal: the indeterminate batch is all or nothing before the reopen ({n})")
    after_fault(srv, db, acked, "wal")
    if failed_batch:
        srv3 = Server(db, [])
        n = present(srv3, failed_batch)
        check(n in (0, len(failed_batch)), f"wal: the indeterminate batch is all or nothing after the restart ({n})")
        srv3.stop()


def case_reopen_fails(root):
    """Every fdatasync fails for a while: the write whose sync failed is indeterminate, the
    ones after it are refused (503 shard_failed, "applied": false), the reopen fails too, so
    /readyz answers 503 shard_failed and /metrics counts the failed shard; once syncs work
    again the shard reopens by itself and nothing acknowledged is lost."""
    db = os.path.join(root, "reopen", "db")
    os.makedirs(os.path.dirname(db))
    srv = Server(db, ["--threads", "2"])
    check(call(srv.port, "PUT", "/v1/collections/c", {"dim": DIM, "metric": "l2"})[0] == 201, "reopen: created")
    acked = set()
    for b in range(5):
        ids = list(range(b * 100, b * 100 + 100))
        if upsert(srv, ids)[0] == 200:
            acked |= set(ids)
    out = os.path.join(root, "reopen", "strace.out")
    tr = strace_attach([srv.p.pid], out, follow=True, when="1+")
    first = None
    for b in range(5, 40):
        ids = list(range(b * 100, b * 100 + 100))
        st, body = upsert(srv, ids)
        if st == 200:
            acked |= set(ids)
        else:
            first = (st, body)
            break
    check(first is not None and first[0] == 503, f"reopen: the write whose sync failed answers 503 ({first and first[0]})")
    st, body = upsert(srv, list(range(800000, 800100)))
    check(st == 503 and body.get("error", {}).get("code") == "shard_failed" and body.get("applied") is False,
          f"reopen: a later write is refused: 503 shard_failed, applied false ({st} {str(body)[:200]})")
    check(present(srv, list(range(800000, 800100))) == 0, "reopen: the refused write applied nothing")
    time.sleep(2.5)  # the recovery thread tries (and fails) to reopen meanwhile
    st, body = call(srv.port, "GET", "/readyz")
    check(st == 503 and "shard_failed" in json.dumps(body), f"reopen: /readyz is 503 shard_failed ({st} {str(body)[:160]})")
    check(metric(srv, "nearline_failed_shards") == 1, "reopen: /metrics counts one failed shard")
    tr.send_signal(signal.SIGINT)
    tr.wait(timeout=30)
    check(len([x for x in open(out) if "INJECTED" in x]) >= 2, "reopen: the reopen's syncs failed as well")
    after_fault(srv, db, acked, "reopen")


def case_read_eio(root):
    """A read error while a collection is opened is an I/O error (500 io_error), not a
    missing collection (404) or a malformed file (400): collection.json, then the shard
    store's CURRENT file, each failing every read (strace -P: that file only)."""
    db = os.path.join(root, "readeio", "db")
    os.makedirs(os.path.dirname(db))
    srv = Server(db, [])
    check(call(srv.port, "PUT", "/v1/collections/c", {"dim": DIM, "metric": "l2"})[0] == 201, "read eio: created")
    check(upsert(srv, list(range(100)))[0] == 200, "read eio: 100 points written")
    srv.stop()
    shard_store = next(os.path.join(dp, "CURRENT") for dp, _, fs in os.walk(os.path.join(db, "c")) if "CURRENT" in fs)
    for what, path, calls in (("collection.json", os.path.join(db, "c", "collection.json"), "read,pread64"),
                              ("the shard store's CURRENT", shard_store, "read,pread64")):
        out = os.path.join(root, "readeio", "strace.out")
        wrap = ["strace", "-qq", "-f", "-o", out, "-P", path, "-e", "trace=" + calls,
                "-e", "inject=%s:error=EIO" % calls.split(",")[0], "-e", "inject=%s:error=EIO" % calls.split(",")[1]]
        srv = Server(db, [], wrap=wrap)
        st, body = call(srv.port, "GET", "/v1/collections/c/points/7")
        code = body.get("error", {}).get("code") if isinstance(body, dict) else None
        check(st == 500 and code == "io_error", f"read eio: a failed read of {what} answers 500 io_error ({st} {code})")
        st, body = call(srv.port, "GET", "/v1/collections")
        srv.stop()
        check(injected(out), f"read eio: strace failed a read of {what}")
    srv = Server(db, [])
    st, body = call(srv.port, "GET", "/v1/collections/c/points/7")
    check(st == 200, f"read eio: the collection reads again once the disk does ({st})")
    srv.stop()


def case_memory(root):
    """Concurrent large bodies (issue 27: eight 64 MiB bodies of one huge vector took 6.9 GB):
    decoding is bounded by --max-parse-memory, so the peak stays near the budget."""
    import threading
    db = os.path.join(root, "memory", "db")
    os.makedirs(os.path.dirname(db))
    srv = Server(db, ["--max-parse-memory", "512M", "--max-body", "32M"])
    check(call(srv.port, "PUT", "/v1/collections/c", {"dim": DIM, "metric": "l2"})[0] == 201, "memory: created")
    body = b'{"points":[{"id":1,"vector":[' + b"1," * (8 << 20) + b'1]}]}'  # 16 MiB, 8M numbers
    answers = []

    def send():
        req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/v1/collections/c/points", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                answers.append(r.status)
        except urllib.error.HTTPError as e:
            answers.append(e.code)
        except OSError as e:
            answers.append(str(e))
    ts = [threading.Thread(target=send) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with open(f"/proc/{srv.p.pid}/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    print(f"   answers {sorted(map(str, answers))}, VmHWM {hwm >> 20} MiB")
    check(all(a in (400, 503) for a in answers), "memory: each huge body is refused (400 wrong dimension or 503)")
    check(hwm < (512 + 400) << 20, f"memory: peak RSS {hwm >> 20} MiB stays near the 512 MiB parse budget")
    check(call(srv.port, "GET", "/healthz")[0] == 200, "memory: the server answers afterwards")
    big = b'{"points":[{"id":1,"vector":[' + b"1," * (13 << 20) + b'1]}]}'  # 26 MiB: 624 MiB to decode
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/v1/collections/c/points", data=big, method="POST")
    try:
        urllib.request.urlopen(req, timeout=120)
        st = 200
    except urllib.error.HTTPError as e:
        st = e.code
    check(st == 413, f"memory: a body that alone would exceed the budget is a 413 ({st})")
    srv.stop()


def case_connections(root):
    """One client holding partial requests open cannot starve the others (issue 27: about
    1,030 partial requests made /healthz time out for everyone)."""
    db = os.path.join(root, "conns", "db")
    os.makedirs(os.path.dirname(db))
    srv = Server(db, ["--max-connections-per-client", "100", "--max-connections", "2000"])
    held, refused = [], 0
    for _ in range(300):  # three times the per-client limit, all from 127.0.0.1
        try:
            c = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
            c.sendall(b"POST /v1/collections/c/points HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            held.append(c)
        except OSError:
            refused += 1
    time.sleep(0.5)
    closed = 0
    for c in held:  # the server closes the ones past the limit at once
        c.settimeout(0.01)
        try:
            if c.recv(1) == b"":
                closed += 1
        except socket.timeout:
            pass
        except OSError:
            closed += 1
    check(refused + closed >= 190, f"conns: connections past the per-client limit are refused ({refused + closed} of 300)")
    other = socket.socket()
    other.bind(("127.0.0.2", 0))  # another client address
    other.settimeout(5)
    other.connect(("127.0.0.1", srv.port))
    other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    try:
        answer = other.recv(200)
    except OSError:
        answer = b""
    other.close()
    check(answer.startswith(b"HTTP/1.1 200"), f"conns: another client is served meanwhile ({answer[:20]!r})")
    for c in held:
        c.close()
    srv.stop()


def main():
    if not shutil.which("strace"):
        print("SKIP: strace is not installed")
        return 0
    probe = subprocess.run(["strace", "-qq", "-e", "trace=none", "true"], capture_output=True)
    if probe.returncode != 0:
        print("SKIP: strace cannot trace here (ptrace not permitted)")
        return 0
    root = tempfile.mkdtemp(prefix="nl-fault-")
    try:
        only = os.environ.get("NL_FAULT_CASES", "").split()  # names of cases to run (debugging one)
        for case in (case_connections, case_memory, case_flush, case_compaction, case_wal, case_reopen_fails,
                     case_read_eio):
            if only and case.__name__ not in only:
                continue
            print(f"# {case.__name__}", flush=True)
            case(root)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if fails:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'FAILED' if fails else 'passed'}: {fails} failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
