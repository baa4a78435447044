"""Hostile input for `nearline serve`: thousands of random, mutated and truncated bodies to
every endpoint, random methods and paths, and malformed raw HTTP, then checks the server is
alive, answered every request with JSON and a sane status, and exits cleanly on SIGTERM
(under the ASan build a memory error or leak makes that exit non-zero).
Usage: fuzz_server.py NEARLINE_BINARY [ROUNDS]"""
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from pbwire import field, search_req, vector  # noqa: E402

nl = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
work = tempfile.mkdtemp(prefix="nlfuzz.")
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
log = open(os.path.join(work, "log"), "w")
srv = subprocess.Popen([nl, "serve", "--db", os.path.join(work, "db"), "--listen", f"127.0.0.1:{port}",
                        "--max-body", "256K", "--log-level", "warn"], stdout=log, stderr=log)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
rng = random.Random(int(os.environ.get("NL_FUZZ_SEED", "7")))


def call(method, path, body=None, ctype="application/json"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, body=body, headers={"Content-Type": ctype})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


st, _ = call("PUT", "/v1/collections/f", json.dumps({"dim": 4, "metadata": 1}))
st, _ = call("PUT", "/v1/collections/f", json.dumps({"dim": 4, "index": {"R": 8, "L": 16}}))
assert st == 201, st
good = [
    ("PUT", "/v1/collections/g%d", {"dim": 3, "metric": "cosine", "index": {"R": 8, "L": 16, "alpha": 1.2}}),
    ("POST", "/v1/collections/f/points", {"points": [{"id": 1, "vector": [1, 2, 3, 4], "metadata": {"a": "x", "n": 3}},
                                                     {"id": "s", "vector": [0, 1, 0, 1], "metadata": {"t": ["a", "b"]}}]}),
    ("POST", "/v1/collections/f/points/delete", {"ids": [1, "s", 7]}),
    ("POST", "/v1/collections/f/points/delete", {"filter": {"or": [{"field": "a", "eq": "x"}, {"not": {"field": "n", "gt": 1}}]}}),
    ("POST", "/v1/collections/f/search", {"vector": [1, 2, 3, 4], "k": 3, "filter": {"field": "a", "in": ["x", 3, True]}, "L": 20}),
    ("POST", "/v1/collections/f/search/batch", {"vectors": [[1, 2, 3, 4], [0, 0, 0, 1]], "k": 2, "filters": [None, {"field": "n", "lte": 3}]}),
    ("GET", "/v1/collections/f/points/1", None),
    ("GET", "/v1/collections/f", None),
    ("GET", "/metrics", None),
]
junk = [None, 0, -1, 1e308, "", "x" * 300, [], {}, [1, "a"], {"field": None}, True, 2 ** 70]


def mutate(obj, depth=0):
    if isinstance(obj, dict) and obj and rng.random() < 0.7:
        k = rng.choice(list(obj))
        obj = dict(obj)
        r = rng.random()
        if r < 0.3:
            del obj[k]
        elif r < 0.6:
            obj[k] = rng.choice(junk)
        else:
            obj[k] = mutate(obj[k], depth + 1)
        return obj
    if isinstance(obj, list) and obj and rng.random() < 0.7:
        obj = list(obj)
        i = rng.randrange(len(obj))
        obj[i] = mutate(obj[i], depth + 1) if rng.random() < 0.5 else rng.choice(junk)
        return obj
    return rng.choice(junk) if rng.random() < 0.3 else obj


pb = [("/v1/collections/f/points", field(1, 2, vector(1, [1, 2, 3, 4], {"a": "x"})) + field(1, 2, vector("s", [0, 1, 0, 1]))),
      ("/v1/collections/f/search", search_req([1, 2, 3, 4], k=3, flt={"field": "a", "eq": "x"})),
      ("/v1/collections/f/search/batch", field(1, 2, search_req([1, 2, 3, 4], k=2)) + field(1, 2, search_req([0, 0, 0, 0]))),
      ("/v1/collections/f/points/delete", field(1, 2, field(1, 0, 1)) + field(2, 2, b'{"field":"a","eq":"x"}'))]
answered = bad = 0
for i in range(rounds // 4):  # protobuf bodies: valid, truncated, bit-flipped, random
    path, body = rng.choice(pb)
    k = rng.random()
    if k < 0.3:
        data = body[:rng.randrange(len(body) + 1)]
    elif k < 0.6:
        b = bytearray(body)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        data = bytes(b)
    elif k < 0.8:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    else:
        data = body
    try:
        st, resp = call("POST", path, data, "application/x-protobuf")
    except (OSError, http.client.HTTPException):
        if srv.poll() is not None:
            print(f"FAIL - the server died on protobuf {path} {data!r}: exit {srv.returncode}")
            sys.exit(1)
        continue
    answered += 1
    if st >= 500:
        bad += 1
        print(f"odd answer {st} to protobuf {path}: {resp[:200]!r}")
for i in range(rounds):
    method, path, body = rng.choice(good)
    path = path.replace("%d", str(i))
    kind = rng.random()
    if body is None:
        data = None
    elif kind < 0.4:
        data = json.dumps(mutate(body)).encode()
    elif kind < 0.6:
        data = json.dumps(body).encode()
        data = data[:rng.randrange(len(data) + 1)]
    elif kind < 0.75:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    elif kind < 0.85:
        data = json.dumps(body).encode()
        b = bytearray(data)
        for _ in range(rng.randrange(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        data = bytes(b)
    else:
        data = json.dumps(body).encode()
    if rng.random() < 0.05:
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
    if rng.random() < 0.05:
        path = rng.choice(["/", "/v1", "/v1/collections/f/points/" + "9" * 40, "/v1/collections//points",
                           "/v1/collections/f/search/batch/x", "/%ff%00", "/v1/collections/" + "a" * 3000])
    try:
        st, resp = call(method, path, data)
    except (OSError, http.client.HTTPException) as e:
        if srv.poll() is not None:
            print(f"FAIL - the server died at request {i} ({method} {path} {data[:300] if data else b''!r}): "
                  f"exit {srv.returncode}")
            log.close()
            print(open(os.path.join(work, "log")).read()[-6000:])
            sys.exit(1)
        continue
    answered += 1
    if st >= 500 or not (resp.startswith(b"{") or path == "/metrics" or st == 404 and not resp):
        bad += 1
        print(f"odd answer {st} to {method} {path}: {resp[:200]!r}")
# Malformed HTTP on raw sockets.
raw = [b"GARBAGE\r\n\r\n", b"POST /v1/collections/f/search HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n{",
       b"POST /v1/collections/f/points HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
       b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", b"POST /v1/collections/f/search HTTP/1.1\r\nContent-Length: 5\r\n\r\n"]
for r in raw * 20:
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=2)
        c.sendall(r)
        c.settimeout(0.5)
        try:
            c.recv(4096)
        except OSError:
            pass
        c.close()
    except OSError:
        pass
# Framing and paths that must be refused exactly (issue 27), each answered with the JSON error.


def raw_status(req):
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(req)
    data = b""
    try:
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    c.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return (int(head.split()[1]) if head.startswith(b"HTTP/") else 0), body


call("PUT", "/v1/collections/keep", json.dumps({"dim": 4}))  # the target of the %00 drop below
exact = [
    (b"POST /v1/collections/f/search HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
     400, "conflicting Content-Length"),
    (b"POST /v1/collections/f/points HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     501, "an unknown transfer coding"),
    (b"DELETE /v1/collections/keep%00-staging HTTP/1.1\r\nHost: x\r\n\r\n", 400, "%00 in a collection name"),
    (b"PUT /v1/collections/a%00b HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{\"dim\":4}", 400, "%00 in a new name"),
    (b"GET /v1/collections/f/points/%01 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "%01 in an id"),
]
for req, want, what in exact:
    st, body = raw_status(req)
    good_json = body.startswith(b'{"error"')
    if st != want or not good_json:
        bad += 1
    print(f"{'ok  ' if st == want and good_json else 'FAIL'} - {what}: {st} {body[:120]!r}")
# Requests that are not HTTP the library can parse never reach nearline: libmicrohttpd
# answers them itself, with the right status and its own HTML body, and closes the
# connection (docs/api.md, "Errors"). The statuses are the contract: pinned here.
library = [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431, "a header over 32 KiB"),
    (b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "a request line over 32 KiB"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "a header line without a colon"),
    (b"POST /v1/collections/f/points HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
     400, "a malformed chunk size"),
    (b"POST /v1/collections/f/points HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400,
     "a Content-Length that is not a number"),
    (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 505, "an HTTP version other than 1.0 and 1.1"),
]
for req, want, what in library:
    st, body = raw_status(req)
    if st != want:
        bad += 1
    print(f"{'ok  ' if st == want else 'FAIL'} - {what}: {st} (the HTTP library's answer)")
st, _ = call("GET", "/v1/collections/keep")
if st != 200:
    bad += 1
    print("FAIL - collection keep did not survive the drop of keep%00-staging")
alive = call("GET", "/healthz")[0] == 200
srv.send_signal(signal.SIGTERM)
try:
    rc = srv.wait(timeout=60)
except subprocess.TimeoutExpired:
    srv.kill()
    rc = -9
log.close()
tail = open(os.path.join(work, "log")).read()[-3000:]
ok = alive and rc == 0 and bad == 0 and answered > (rounds + rounds // 4) * 0.95
print(f"{'ok  ' if ok else 'FAIL'} - {answered}/{rounds + rounds // 4} requests answered, {bad} odd answers, alive {alive}, exit {rc}")
if not ok:
    print(tail)
subprocess.run(["rm", "-rf", work])
sys.exit(0 if ok else 1)
