"""The Python client against a live server (started by server_test.sh): every call, errors
as exceptions with the server's code, retries, filters. Usage: test_client.py URL [KEY...]"""
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "clients", "python"))
import nearline  # noqa: E402

url = sys.argv[1]
cafile = os.environ.get("NL_CAFILE")
admin = sys.argv[2] if len(sys.argv) > 2 else None
db = nearline.Client(url, api_key=admin, cafile=cafile)
fails = 0


def check(cond, what):
    global fails
    print(("ok   - " if cond else "FAIL - ") + what)
    fails += 0 if cond else 1


def raises(fn, status, code, what):
    try:
        fn()
    except nearline.NearlineError as e:
        check(e.status == status and e.code == code and e.request_id, f"{what}: {e.status} {e.code}")
        return
    check(False, f"{what}: no error raised")


name = "client_test"
if name in db.list_collections():
    db.drop_collection(name)
d = db.create_collection(name, dim=8, metric="l2", index={"R": 16, "L": 32})
check(d["dim"] == 8 and d["name"] == name, "create_collection describes the new collection")
raises(lambda: db.create_collection(name, dim=8), 409, "exists", "creating it twice")
check(name in db.list_collections(), "list_collections holds it")
rng = random.Random(3)
pts = [{"id": i, "vector": [rng.gauss(0, 1) for _ in range(8)],
        "metadata": {"group": i % 10, "lang": "en" if i % 2 else "fr", "tags": ["t%d" % (i % 3)]}} for i in range(2500)]
pts.append({"id": "doc-α", "vector": [0.0] * 8, "metadata": {"group": 99}})
check(db.upsert(name, pts, batch_size=400) == len(pts), "upsert in batches of 400")
check(db.describe(name)["stats"]["points"] == len(pts), "describe counts every point")
g = db.get(name, 17)
check(g["id"] == 17 and g["metadata"]["group"] == 7 and len(g["vector"]) == 8, "get by integer id")
check(db.get(name, "doc-α")["metadata"] == {"group": 99}, "get by string id (non-ASCII)")
raises(lambda: db.get(name, 999999), 404, "not_found", "get of an absent id")
hits = db.search(name, pts[42]["vector"], k=5)
check(hits[0]["id"] == 42 and hits[0]["score"] < 1e-4 and len(hits) == 5, "search finds the point itself first")
f = {"and": [{"field": "group", "eq": 3}, {"field": "lang", "eq": "en"}]}
hits = db.search(name, pts[42]["vector"], k=10, filter=f)
check(len(hits) == 10 and all(h["metadata"]["group"] == 3 and h["metadata"]["lang"] == "en" for h in hits),
      "filtered search returns only matching points")
hits = db.search(name, pts[42]["vector"], k=10, filter={"field": "group", "eq": 99})
check([h["id"] for h in hits] == ["doc-α"], "a filter matching one point returns just it")
res = db.search_batch(name, [pts[1]["vector"], pts[2]["vector"]], k=3,
                      filters=[None, {"field": "tags", "eq": "t2"}])
check(res[0][0]["id"] == 1 and res[1][0]["id"] == 2 and all(h["metadata"]["tags"] == ["t2"] for h in res[1]),
      "search_batch with per-query filters")
raises(lambda: db.search(name, [0.0] * 7), 400, "wrong_dimension", "a query of the wrong dimension")
raises(lambda: db.search(name, [0.0] * 8, filter={"field": "group", "near": 3}), 400, "bad_filter", "a bad filter")
raises(lambda: db.search(name, [0.0] * 8, k=5000), 400, "k_too_large", "k over the limit")
raises(lambda: db.upsert(name, [{"id": -1, "vector": [0.0] * 8}]), 400, "bad_request", "a negative id")
before = db.describe(name)["stats"]["points"]
raises(lambda: db.upsert(name, [{"id": 90001, "vector": [0.0] * 8}, {"id": 90002, "vector": [0.0] * 9}]), 400,
       "wrong_dimension", "a batch with one bad point")
check(db.describe(name)["stats"]["points"] == before, "... applies nothing")
check(db.delete(name, ids=[1, 2, 3, 123456]) == 3, "delete by ids counts the ones that existed")
n_group5 = sum(1 for p in pts if p["metadata"]["group"] == 5)
check(db.delete(name, filter={"field": "group", "eq": 5}) == n_group5, "delete by filter")
check(db.search(name, [0.0] * 8, k=10, filter={"field": "group", "eq": 5}) == [], "nothing matches afterwards")
raises(lambda: db.search("no_such_collection", [0.0] * 8), 404, "not_found", "an unknown collection")
check("nearline_requests_total" in db.metrics(), "metrics in the Prometheus format")
check(db.health()["status"] == "ok" and db.ready(), "health and readiness")
db.drop_collection(name)
check(name not in db.list_collections(), "drop_collection")
print("# python client: %d failed" % fails)
sys.exit(1 if fails else 0)
