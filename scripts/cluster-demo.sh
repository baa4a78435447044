#!/usr/bin/env bash
# cluster-demo.sh [BUILD_DIR] — `make cluster-demo`: a three-node nearline cluster on
# loopback, end to end, in about half a minute:
#   ZooKeeper (scripts/zookeeper.sh) and three `nearline serve --zookeeper` nodes;
#   a 6-shard collection created through node 1, 3,000 points loaded through node 1;
#   the same search through each node (identical answers); node 3 killed: the answer
#   through node 1 is marked partial and names node 3's shards; everything stopped.
# Every process it starts is stopped on exit, also on failure or Ctrl-C (trap).
set -euo pipefail
BUILD=${1:-build}
NL="$BUILD/tools/nearline"
[ -x "$NL" ] || { echo "cluster-demo: $NL missing: run make build" >&2; exit 1; }
DIR=$(mktemp -d /tmp/nearline-cluster-demo.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ZKPORT=$(port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  bash "$(dirname "$0")/zookeeper.sh" stop "$DIR/zk" "$ZKPORT" >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
say() { printf '\n== %s\n' "$*"; }

say "ZooKeeper on 127.0.0.1:$ZKPORT"
bash "$(dirname "$0")/zookeeper.sh" start "$DIR/zk" "$ZKPORT"
head -c 24 /dev/urandom | base64 > "$DIR/cluster.key"
declare -a PORTS
for i in 1 2 3; do
  PORTS[$i]=$(port)
  "$NL" serve --db "$DIR/node$i" --listen "127.0.0.1:${PORTS[$i]}" --zookeeper "127.0.0.1:$ZKPORT" \
    --node-id "node-$i" --cluster-key "$DIR/cluster.key" --session-timeout-ms 4000 --log-level warn \
    2> "$DIR/node$i.log" &
  PIDS+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 1 100); do curl -sf "127.0.0.1:${PORTS[$i]}/readyz" >/dev/null && break; sleep 0.1; done
done
U1="http://127.0.0.1:${PORTS[1]}"
say "three nodes registered (GET /v1/cluster through node 1)"
curl -s "$U1/v1/cluster" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("coordinator:", s["coordinator"]); [print(" ", n["id"], n.get("address", "(gone)")) for n in s["nodes"]]'

say "PUT /v1/collections/demo {dim 16, shards 6} through node 1"
curl -s -XPUT "$U1/v1/collections/demo" -d '{"dim":16,"shards":6}' | python3 -c 'import json,sys; d=json.load(sys.stdin); print("shard -> primary:", {s["shard"]: s["primary"] for s in d["shard_map"]})'

say "3,000 points upserted through node 1"
python3 - "$U1" <<'PY'
import json, random, sys, urllib.request
random.seed(7)
for b in range(3):
    pts = [{"id": b * 1000 + i, "vector": [random.gauss(0, 1) for _ in range(16)], "metadata": {"batch": b}} for i in range(1000)]
    req = urllib.request.Request(sys.argv[1] + "/v1/collections/demo/points", json.dumps({"points": pts}).encode(), method="POST")
    print(" ", json.load(urllib.request.urlopen(req)))
PY

Q='{"vector":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1,1.1,1.2,1.3,1.4,1.5,1.6],"k":5,"with_metadata":false}'
say "the same search through each node"
for i in 1 2 3; do
  printf '  node-%s: ' "$i"
  curl -s -XPOST "127.0.0.1:${PORTS[$i]}/v1/collections/demo/search" -d "$Q" | python3 -c 'import json,sys; d=json.load(sys.stdin); print([h["id"] for h in d["results"]], "partial:", d["partial"])'
done

say "node-3 killed: the answer through node 1 is partial and names the missing shards"
kill -9 "${PIDS[2]}"; wait "${PIDS[2]}" 2>/dev/null || true
curl -s -XPOST "$U1/v1/collections/demo/search" -d "$Q" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  results:", [h["id"] for h in d["results"]], "partial:", d["partial"], "missing_shards:", d["missing_shards"])'
printf '  with "require_complete": true -> HTTP '
curl -s -o /dev/null -w '%{http_code}\n' -XPOST "$U1/v1/collections/demo/search" -d "${Q%\}},\"require_complete\":true}"

say "stopping everything"
