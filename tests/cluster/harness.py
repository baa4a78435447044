"""harness.py — real-process cluster tests: a ZooKeeper on a free loopback port with a
temporary data directory (scripts/zookeeper.sh) and N `nearline serve --zookeeper`
processes, each with its own database directory and port.

Everything it starts it stops: Cluster is a context manager, registers an atexit hook and
turns SIGTERM/SIGINT into SystemExit, so a failing or interrupted test still kills every
node and ZooKeeper and removes the temporary directory. Traffic goes to 127.0.0.1 only.
"""
import atexit
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ZK_SCRIPT = os.path.join(HERE, "..", "..", "scripts", "zookeeper.sh")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(pred, timeout, step=0.1):
    """pred()'s first true value within timeout seconds, else its last value."""
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def http(method, url, body=None, timeout=10, headers=None, refused_status=0):
    """(status, parsed JSON or text) of one request; status 0 when there was no answer, or
    refused_status when the connection was refused (the request was certainly not sent)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        ctx = ssl._create_unverified_context() if url.startswith("https:") else None  # test certs
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            raw = r.read()
            st = r.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        st = e.code
    except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as e:
        why = getattr(e, "reason", e)
        return (refused_status if isinstance(why, ConnectionRefusedError) else 0), None
    try:
        return st, json.loads(raw)
    except ValueError:
        return st, raw.decode(errors="replace")


class Node:
    def __init__(self, cluster, node_id, port=None, db=None, host="127.0.0.1", netns=None):
        self.cluster = cluster
        self.id = node_id
        self.host = host  # its address; netns: the network namespace it runs in (partition test)
        self.netns = netns
        self.port = port or (7700 if netns else free_port())
        self.db = db or os.path.join(cluster.dir, "db-" + node_id)
        self.log = os.path.join(cluster.dir, "log-" + node_id)
        self.proc = None
        self.ready = False  # set once /readyz answered after the last start

    tls = False

    @property
    def url(self):
        return "%s://%s:%d" % ("https" if self.tls else "http", self.host, self.port)

    def start(self, extra=(), wait_ready=True, zookeeper=None, env=None):
        self.ready = False
        args = [self.cluster.nearline, "serve", "--db", self.db, "--listen", "%s:%d" % (self.host, self.port),
                "--zookeeper", zookeeper or self.cluster.zk, "--node-id", self.id, "--session-timeout-ms",
                str(self.cluster.session_ms), "--threads", "16", "--log-level", "info"]
        if self.cluster.key_file:
            args += ["--cluster-key", self.cluster.key_file]
        args += self.cluster.node_args + list(extra)
        if self.netns:
            args = ["ip", "netns", "exec", self.netns] + args
        self.proc = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=dict(os.environ, **(env or {})))
        self.cluster.procs.append(self.proc)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise AssertionError("node %s exited (%s): %s" % (self.id, self.proc.returncode, self.tail()))
            st, _ = http("GET", self.url + "/readyz", timeout=2)
            if st == 200:
                self.ready = True
                return
            time.sleep(0.1)
        raise AssertionError("node %s not ready in %ss: %s" % (self.id, timeout, self.tail()))

    def kill(self):
        self.ready = False
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        self.ready = False
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pause_for(self, seconds):
        """SIGSTOP, seconds, SIGCONT (a hung process); self.paused says so meanwhile."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = 1
        time.sleep(seconds)
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = 0

    def stacks(self, timeout=60):
        """Every thread's stack, condensed (for a CI log that must say where a node is stuck):
        threads with the same innermost frames are counted together. '' without gdb."""
        if not self.proc or self.proc.poll() is not None or not shutil.which("gdb"):
            return ""
        try:
            out = subprocess.run(["gdb", "-p", str(self.proc.pid), "-batch", "-ex", "thread apply all bt 12"],
                                 capture_output=True, text=True, timeout=timeout).stdout
        except (subprocess.TimeoutExpired, OSError) as e:
            return "gdb: %s" % e
        groups, cur = {}, None
        for line in out.splitlines():
            if line.startswith("Thread "):
                cur = []
                groups.setdefault(id(cur), cur)
            elif line.startswith("#") and cur is not None:
                parts = line.split(" in ", 1)
                fn = (parts[1] if len(parts) > 1 else line.split(" ", 2)[-1]).split(" (")[0]
                cur.append(fn)
        count = {}
        for frames in groups.values():
            key = " < ".join(frames[:9])
            count[key] = count.get(key, 0) + 1
        return "\n".join("%3d x %s" % (v, k) for k, v in sorted(count.items(), key=lambda kv: -kv[1]))

    def tail(self, n=20):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def call(self, method, path, body=None, timeout=10, headers=None):
        return http(method, self.url + path, body, timeout, headers)

    def metric(self, name):
        """An unlabelled value of the node's /metrics (0 when absent)."""
        st, text = http("GET", self.url + "/metrics")
        for line in (text if isinstance(text, str) else "").splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


class Cluster:
    def __init__(self, nearline, session_ms=4000, key="test-cluster-key-0123456789", zk_host="127.0.0.1",
                 node_args=()):
        self.nearline = nearline
        self.node_args = list(node_args)  # flags every node of this cluster starts with
        self.session_ms = session_ms
        self.dir = tempfile.mkdtemp(prefix="nlcluster.")
        self.zk_port = free_port()
        self.zk_host = zk_host
        self.zk = "%s:%d" % (zk_host, self.zk_port)
        self.zk_dir = os.path.join(self.dir, "zk")
        self.procs = []
        self.nodes = {}
        self.key_file = None
        if key:
            self.key_file = os.path.join(self.dir, "cluster.key")
            with open(self.key_file, "w") as f:
                f.write(key + "\n")
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: (_ for _ in ()).throw(SystemExit(1)))

    def __enter__(self):
        self.zk_start()
        return self

    def __exit__(self, *exc):
        self.close()

    def zk_start(self):
        subprocess.run(["bash", ZK_SCRIPT, "start", self.zk_dir, str(self.zk_port)], check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, ZK_ADDRESS=self.zk_host))

    def zk_stop(self):
        subprocess.run(["bash", ZK_SCRIPT, "stop", self.zk_dir, str(self.zk_port)], stdout=subprocess.DEVNULL)

    def node(self, node_id, **kw):
        n = Node(self, node_id, **kw)
        self.nodes[node_id] = n
        return n

    def close(self):
        for n in list(self.nodes.values()):
            n.kill()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if os.path.isdir(self.zk_dir):
            self.zk_stop()
        if os.environ.get("NL_KEEP_CLUSTER_DIR"):
            print("cluster files kept in", self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
