"""The `make run` demo's client side: loads a small generated catalogue into the server
(once; a second run finds it there), then runs a few searches with and without filters
through the Python client and prints them. Standard library only.
Usage: demo.py URL"""
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "clients", "python"))
import nearline  # noqa: E402

URL = sys.argv[1]
DIM, N, NAME = 32, 20000, "catalogue"
CATEGORIES = ["shoes", "jackets", "tents", "backpacks", "lamps", "stoves", "ropes", "maps"]
COLOURS = ["red", "blue", "green", "black", "orange"]

rng = random.Random(7)
centres = {c: [rng.gauss(0, 1) for _ in range(DIM)] for c in CATEGORIES}


def item(i):
    r = random.Random(1000 + i)
    cat = CATEGORIES[i % len(CATEGORIES)]
    v = [x + r.gauss(0, 0.45) for x in centres[cat]]
    norm = math.sqrt(sum(x * x for x in v))
    return {"id": i, "vector": [x / norm for x in v],
            "metadata": {"title": f"{r.choice(COLOURS)} {cat[:-1]} #{i}", "category": cat,
                         "price": round(r.uniform(5, 300), 2), "in_stock": r.random() < 0.7,
                         "tags": r.sample(["waterproof", "light", "sale", "new", "kids"], 2)}}


db = nearline.Client(URL)
existing = db.describe(NAME) if NAME in db.list_collections() else None
if existing and existing["dim"] == DIM and existing["stats"]["points"] == N:
    print(f"nearline: collection '{NAME}' already holds {N:,} items (from an earlier run): reusing it")
else:
    if existing:  # left over from something else (or half loaded): start again
        db.drop_collection(NAME)
    db.create_collection(NAME, dim=DIM, metric="cosine", index={"R": 32, "L": 64})
    t0 = time.time()
    db.upsert(NAME, (item(i) for i in range(N)), batch_size=2000)
    print(f"nearline: loaded {N:,} catalogue items ({DIM}-d embeddings + metadata) in {time.time() - t0:.1f} s "
          f"through the HTTP API (each batch durable before it is acknowledged)")
d = db.describe(NAME)["stats"]
print(f"          {d['points']:,} points, {d['segments']} disk segment(s), {d['fresh_points']:,} in the fresh index\n")

query = item(123)["vector"]  # a backpack


def show(title, hits):
    print(title)
    print(f"  {'id':>6}  {'score':>7}  {'title':<26} {'category':<10} {'price':>7}  in stock")
    for h in hits:
        m = h["metadata"]
        print(f"  {h['id']:>6}  {h['score']:>7.4f}  {m['title']:<26} {m['category']:<10} {m['price']:>7.2f}  "
              f"{'yes' if m['in_stock'] else 'no'}")
    print()


show("1. The 5 nearest items to item 123 (a backpack), no filter:", db.search(NAME, query, k=5))
f1 = {"and": [{"field": "category", "eq": "tents"}, {"field": "price", "lt": 100}, {"field": "in_stock", "eq": True}]}
show("2. The same query, filtered: in-stock tents under 100:", db.search(NAME, query, k=5, filter=f1))
f2 = {"and": [{"field": "tags", "eq": "waterproof"}, {"not": {"field": "category", "in": ["backpacks", "tents"]}}]}
show("3. Waterproof, but neither a backpack nor a tent:", db.search(NAME, query, k=5, filter=f2))
try:
    db.search(NAME, query, k=5, filter={"field": "price", "below": 10})
except nearline.NearlineError as e:
    print(f"4. A malformed filter is refused: HTTP {e.status} {e.code}: {e.message}\n")
