"""The protobuf API (proto/nearline.proto) against a live server, with a hand-written wire
encoder (the test needs no protobuf library): upsert, search, batch search, delete, an
error answer as a protobuf Error, and malformed protobuf refused. Usage: test_proto.py URL"""
import json
import struct
import sys
import urllib.error
import urllib.request

sys.path.insert(0, __import__('os').path.dirname(__file__))
from pbwire import field, floats, parse, search_req, vector  # noqa: E402

url = sys.argv[1]
fails = 0


def check(cond, what):
    global fails
    print(("ok   - " if cond else "FAIL - ") + what)
    fails += 0 if cond else 1


def post(path, body, ctype="application/x-protobuf"):
    req = urllib.request.Request(url + path, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def put(path, obj):
    req = urllib.request.Request(url + path, data=json.dumps(obj).encode(), method="PUT")
    with urllib.request.urlopen(req) as r:
        return r.status


put("/v1/collections/pb", {"dim": 3})
body = b"".join(field(1, 2, vector(i, [i, 1.0, 0.5], {"even": i % 2 == 0})) for i in range(20))
body += field(1, 2, vector("name-x", [0.0, 0.0, 0.0]))
st, ct, data = post("/v1/collections/pb/points", body)
check(st == 200 and ct == "application/x-protobuf" and parse(data)[1] == [21], "protobuf upsert of 21 points")
st, ct, data = post("/v1/collections/pb/search", search_req([5.0, 1.0, 0.5], k=3))
res = parse(data)
hits = [parse(h) for h in res.get(1, [])]
ids = [parse(h[1][0]).get(1, [None])[0] for h in hits]
score0 = struct.unpack("<f", hits[0][2][0])[0] if hits and 2 in hits[0] else 0.0
check(st == 200 and ids[0] == 5 and len(ids) == 3 and abs(score0) < 1e-5, f"protobuf search: ids {ids}")
check(json.loads(hits[0][3][0]) == {"even": False}, "protobuf result carries metadata as JSON text")
st, ct, data = post("/v1/collections/pb/search", search_req([5.0, 1.0, 0.5], k=5, flt={"field": "even", "eq": True}))
ids = [parse(parse(h)[1][0]).get(1, [None])[0] for h in parse(data).get(1, [])]
check(st == 200 and ids and all(i % 2 == 0 for i in ids), f"protobuf filtered search: ids {ids}")
batch = field(1, 2, search_req([1.0, 1.0, 0.5], k=1)) + field(1, 2, search_req([0.0, 0.0, 0.0], k=1))
st, ct, data = post("/v1/collections/pb/search/batch", batch)
resps = parse(data).get(1, [])
first = [parse(parse(parse(r)[1][0])[1][0]) for r in resps]
check(st == 200 and len(resps) == 2 and first[0].get(1) == [1] and first[1].get(2) == [b"name-x"],
      "protobuf batch search")
st, ct, data = post("/v1/collections/pb/search", search_req([1.0, 2.0], k=1))
err = parse(data)
check(st == 400 and ct == "application/x-protobuf" and err[1] == [b"wrong_dimension"] and err.get(3),
      "an error answer is a protobuf Error with code and request id")
st, ct, data = post("/v1/collections/pb/search", b"\xff\xff\xff\xff\x0f\x0a")
check(st == 400 and parse(data)[1] == [b"bad_protobuf"], "malformed protobuf is refused")
st, ct, data = post("/v1/collections/pb/points", field(1, 2, vector(1, [1, 2, 3]) + field(3, 2, b"{not json")))
check(st == 400, "metadata text that is not JSON is refused")
st, ct, data = post("/v1/collections/pb/points/delete", field(2, 2, json.dumps({"field": "even", "eq": True}).encode()))
check(st == 200 and parse(data)[1] == [10], "protobuf delete by filter")
# One validation with the JSON API (issue 27): nothing dropped or truncated in silence.


def raw_vector(id_bytes, values, meta_bytes=None):
    m = field(1, 2, field(2, 2, id_bytes)) + field(2, 2, floats(values))
    return m + (field(3, 2, meta_bytes) if meta_bytes is not None else b"")


def count(path="/v1/collections/pb2"):
    with urllib.request.urlopen(url + path) as r:
        return json.loads(r.read())["stats"]["points"]


put("/v1/collections/pb2", {"dim": 3})
good = field(1, 2, raw_vector(b"a", [1, 2, 3])) + field(1, 2, raw_vector(b"c", [1, 2, 3]))
st, ct, data = post("/v1/collections/pb2/points", good[:len(good) // 2] + field(1, 2, raw_vector(b"\xff\xfe", [1, 2, 3])) +
                    good[len(good) // 2:])
err = parse(data)
check(st == 400 and b"UTF-8" in err.get(2, [b""])[0] and count() == 0,
      f"an id that is not UTF-8 fails the whole batch ({st} {err.get(2)})")
post("/v1/collections/pb2/points", field(1, 2, raw_vector(b"ab", [9, 9, 9])))
st, ct, data = post("/v1/collections/pb2/points", field(1, 2, raw_vector(b"ab\0cd", [1, 2, 3])))
with urllib.request.urlopen(url + "/v1/collections/pb2/points/ab") as r:
    kept = json.loads(r.read())["vector"]
check(st == 400 and b"NUL" in parse(data).get(2, [b""])[0] and kept == [9, 9, 9],
      f"an id holding a NUL is refused, and does not overwrite 'ab' ({st}, ab = {kept})")
st, ct, data = post("/v1/collections/pb2/points", field(1, 2, raw_vector(b"m", [1, 2, 3], b'{"a":"x\0y"}')))
check(st == 400 and b"NUL" in parse(data).get(2, [b""])[0], f"metadata holding a NUL is refused ({st})")
st, ct, data = post("/v1/collections/pb2/points", field(1, 2, raw_vector(b"n", [1, float("nan"), 3])))
check(st == 400 and b"NaN" in parse(data).get(2, [b""])[0] and parse(data)[1] != [b"wrong_dimension"],
      f"a NaN is named as such ({st} {parse(data).get(1)} {parse(data).get(2)})")
st, ct, data = post("/v1/collections/pb2/search", search_req([1.0, float("inf"), 0.5], k=1))
check(st == 400 and b"NaN or Inf" in parse(data).get(2, [b""])[0], f"an infinite query value is named ({st})")
print("# protobuf: %d failed" % fails)
sys.exit(1 if fails else 0)
