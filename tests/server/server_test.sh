#!/usr/bin/env bash
# Integration test of `nearline serve` (issue 7) with curl and the Python client:
#  - every endpoint with good and bad input (status, error code, nothing applied on error);
#  - the Python client's whole surface (tests/server/test_client.py);
#  - API keys and roles over TLS (a self-signed certificate made here);
#  - limits: body size (413), concurrent requests (503 + Retry-After);
#  - graceful shutdown on SIGTERM (a request in flight completes, then a clean exit);
#  - kill -9 during acknowledged upserts, restart: every acknowledged point is there.
# Usage: server_test.sh NEARLINE_BINARY
set -u
NL=${1:?nearline binary}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
. "$HERE/common.sh"
W=$(mktemp -d -p "${NL_TEST_TMP:-$PWD}" servertest.XXXXXX)
trap 'kill -9 ${SRV_PID:-0} 2>/dev/null; rm -rf "$W"' EXIT
PORT=$(free_port)
U=http://127.0.0.1:$PORT
# req METHOD PATH [BODY] -> status in $ST, body in $W/r
req() {
  if [ $# -ge 3 ]; then ST=$(curl -s -o "$W/r" -w '%{http_code}' -X "$1" "$U$2" -H 'Content-Type: application/json' --data-binary "$3")
  else ST=$(curl -s -o "$W/r" -w '%{http_code}' -X "$1" "$U$2"); fi
}
expect() { # STATUS CODE-or-"" WHAT
  if [ "$ST" = "$1" ] && { [ -z "$2" ] || grep -q "\"code\":\"$2\"" "$W/r"; }; then ok "$3 -> $ST${2:+ $2}"
  else bad "$3: expected $1 $2, got $ST $(head -c 300 "$W/r")"; fi
}
points_now() { req GET /v1/collections/c; sed -n 's/.*"points":\([0-9]*\).*/\1/p' "$W/r"; }

# ---- endpoints, no auth ------------------------------------------------------------
start_server "$W/log" --db "$W/db" --listen 127.0.0.1:$PORT --max-body 1M || { bad "server start"; exit 1; }
req GET /healthz; expect 200 "" "healthz"
req GET /readyz; expect 200 "" "readyz"
req PUT /v1/collections/c '{"dim":3,"metric":"l2","index":{"R":8,"L":16}}'; expect 201 "" "create"
req PUT /v1/collections/c '{"dim":3}'; expect 409 exists "create an existing collection"
req PUT /v1/collections/d '{"dim":3,"colour":"red"}'; expect 400 bad_request "create with an unknown field"
req PUT /v1/collections/d '{"dim":0}'; expect 400 bad_request "create with dim 0"
req PUT '/v1/collections/bad%20name' '{"dim":3}'; expect 400 bad_request "create with a bad name"
req PUT /v1/collections/d '{"dim":3,"replicas":3}'; expect 400 bad_request "replicas > 1 on one node"
req GET /v1/collections; expect 200 "" "list"
grep -q '"collections":\["c"\]' "$W/r" && ok "list names c" || bad "list: $(cat "$W/r")"
req POST /v1/collections/c/points '{"points":[{"id":1,"vector":[1,0,0],"metadata":{"k":"a"}},{"id":"s","vector":[0,1,0]}]}'
expect 200 "" "upsert"
req POST /v1/collections/c/points '{"points":[{"id":5,"vector":[1,0,0]},{"id":6,"vector":[1,0]}]}'
expect 400 wrong_dimension "upsert with a short vector"
[ "$(points_now)" = 2 ] && ok "... applied nothing" || bad "a failed batch changed the count: $(points_now)"
req POST /v1/collections/c/points '{"points":[{"id":5,"vector":[1,"x",0]}]}'; expect 400 bad_request "upsert with a string in a vector"
req POST /v1/collections/c/points '{"points":[{"id":5,"vector":[1,0,0],"metadata":[1]}]}'; expect 400 bad_request "metadata not an object"
req POST /v1/collections/c/points '{"points":[{"id":5,"vector":[1,0,0]}'; expect 400 bad_json "truncated JSON"
req POST /v1/collections/c/points '[]'; expect 400 bad_json "a JSON array body"
req POST /v1/collections/c/points ''; expect 400 bad_json "an empty body"
req POST /v1/collections/c/search '{"vector":[1,0,0],"k":1}'; expect 200 "" "search"
grep -q '"id":1' "$W/r" && ok "search finds id 1" || bad "search: $(cat "$W/r")"
req POST /v1/collections/c/search '{"vector":[1,0,0],"k":2,"filter":{"field":"k","eq":"a"}}'; expect 200 "" "filtered search"
grep -q '"results":\[{"id":1,[^]]*\]' "$W/r" && ! grep -q '"id":"s"' "$W/r" && ok "filter keeps only id 1" || bad "filter: $(cat "$W/r")"
req POST /v1/collections/c/search '{"vector":[1,0,0],"filter":{"field":"k","op":"a"}}'; expect 400 bad_filter "a malformed filter"
grep -q 'at \$.op' "$W/r" && ok "the filter error names the place" || bad "filter message: $(cat "$W/r")"
req POST /v1/collections/c/search '{"vector":[1,0,0],"k":100000}'; expect 400 k_too_large "k over the limit"
req POST /v1/collections/c/search '{"vector":[1,0,0,0]}'; expect 400 wrong_dimension "a query of the wrong dimension"
req POST /v1/collections/c/search '{"vector":[1e999,0,0]}'; expect 400 bad_json "a number JSON cannot hold"
req POST /v1/collections/c/search/batch '{"vectors":[[1,0,0],[0,1,0]],"k":1}'; expect 200 "" "batch search"
req POST /v1/collections/c/search '{"vector":[1,0,0],"k":1,"segments":"each"}'; expect 200 "" "search with a walk per segment"
grep -q '"id":1' "$W/r" && ok "segments each finds id 1" || bad "segments each: $(cat "$W/r")"
req POST /v1/collections/c/search/batch '{"vectors":[[1,0,0]],"k":1,"segments":"joint"}'; expect 200 "" "batch search with one beam"
req POST /v1/collections/c/search '{"vector":[1,0,0],"segments":"some"}'; expect 400 bad_request "segments neither joint nor each"
req GET /v1/collections/c/points/s; expect 200 "" "get a string id"
req GET /v1/collections/c/points/1; expect 200 "" "get a numeric id"
req GET /v1/collections/c/points/77; expect 404 not_found "get an absent id"
req GET /v1/collections/nope; expect 404 not_found "describe an unknown collection"
req POST /v1/collections/nope/search '{"vector":[1,0,0]}'; expect 404 not_found "search an unknown collection"
req GET /v1/collections/c/search; expect 405 method_not_allowed "GET on search"
req GET /v2/things; expect 404 not_found "an unknown path"
req POST /v1/collections/c/points/delete '{"ids":[1],"filter":{"field":"k","eq":"a"}}'; expect 400 bad_request "delete with ids and filter"
req POST /v1/collections/c/points/delete '{"ids":["s", 99]}'; expect 200 "" "delete by ids"
grep -q '"deleted":1' "$W/r" && ok "one of two ids existed" || bad "delete count: $(cat "$W/r")"
head -c 1100000 /dev/zero | tr '\0' ' ' >"$W/big"
ST=$(curl -s -o "$W/r" -w '%{http_code}' -X POST "$U/v1/collections/c/search" --data-binary @"$W/big"); expect 413 too_large "a body over --max-body"
ST=$(curl -s -D "$W/h" -o "$W/r" -w '%{http_code}' "$U/healthz" -H 'X-Request-Id: trace-123')
grep -qi '^X-Request-Id: trace-123' "$W/h" && ok "the caller's request id is echoed" || bad "request id: $(cat "$W/h")"
grep -q '"request_id":"trace-123"' "$W/log" && ok "... and logged" || bad "log lacks the request id"
req GET /metrics; expect 200 "" "metrics"
grep -q 'nearline_requests_total{endpoint="search",code="400"}' "$W/r" && grep -q 'nearline_collection_points{collection="c"} 1' "$W/r" &&
  grep -q 'nearline_request_duration_seconds_bucket{endpoint="upsert",le="+Inf"}' "$W/r" &&
  grep -q 'nearline_collection_store_keys{collection="c"} [1-9]' "$W/r" && ok "metrics hold counts, gauges, histograms" ||
  bad "metrics: $(head -c 600 "$W/r")"
python3 "$HERE/test_client.py" "$U" >"$W/py" 2>&1 && ok "python client: $(grep -c '^ok' "$W/py") checks" ||
  bad "python client: $(grep -v '^ok' "$W/py" | head -20)"
python3 "$HERE/test_proto.py" "$U" >"$W/pb" 2>&1 && ok "protobuf API: $(grep -c '^ok' "$W/pb") checks" ||
  bad "protobuf API: $(grep -v '^ok' "$W/pb" | head -20)"
req DELETE /v1/collections/c; expect 200 "" "drop"
req GET /v1/collections/c; expect 404 not_found "describe after drop"
stop_server

# ---- API keys over TLS ---------------------------------------------------------------
if openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" -days 1 -subj /CN=127.0.0.1 \
     -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1; then
  printf '# test keys\nreader-key-0001 read\nwriter-key-0001 write\nadmin-key-00001 admin\n' >"$W/keys"
  start_server "$W/log" --db "$W/db" --listen 127.0.0.1:$PORT --api-keys "$W/keys" --tls-cert "$W/cert.pem" \
    --tls-key "$W/key.pem" || bad "TLS server start"
  T=https://127.0.0.1:$PORT
  sreq() { # KEY METHOD PATH [BODY]
    local key=$1 m=$2 p=$3; shift 3
    ST=$(curl -s --cacert "$W/cert.pem" -o "$W/r" -w '%{http_code}' -X "$m" "$T$p" ${key:+-H "Authorization: Bearer $key"} \
      ${1:+--data-binary "$1"})
  }
  sreq "" GET /healthz; expect 200 "" "TLS: healthz needs no key"
  ST=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz"); [ "$ST" != 200 ] && ok "plain HTTP refused by the TLS port" || bad "plain HTTP answered"
  sreq "" GET /v1/collections; expect 401 unauthorized "no key"
  sreq "wrong-key-0000" GET /v1/collections; expect 401 unauthorized "an unknown key"
  sreq reader-key-0001 PUT /v1/collections/t '{"dim":2}'; expect 403 forbidden "read key creating a collection"
  sreq writer-key-0001 PUT /v1/collections/t '{"dim":2}'; expect 403 forbidden "write key creating a collection"
  sreq admin-key-00001 PUT /v1/collections/t '{"dim":2}'; expect 201 "" "admin key creates"
  sreq reader-key-0001 POST /v1/collections/t/points '{"points":[{"id":1,"vector":[1,2]}]}'; expect 403 forbidden "read key upserting"
  sreq writer-key-0001 POST /v1/collections/t/points '{"points":[{"id":1,"vector":[1,2]}]}'; expect 200 "" "write key upserts"
  sreq reader-key-0001 POST /v1/collections/t/search '{"vector":[1,2],"k":1}'; expect 200 "" "read key searches"
  sreq reader-key-0001 GET /metrics; expect 200 "" "read key reads metrics"
  sreq "" GET /metrics; expect 401 unauthorized "metrics without a key"
  sreq writer-key-0001 DELETE /v1/collections/t; expect 403 forbidden "write key dropping"
  NL_CAFILE="$W/cert.pem" python3 "$HERE/test_client.py" "$T" admin-key-00001 >"$W/py" 2>&1 &&
    ok "python client over TLS with an admin key" || bad "python client over TLS: $(grep -v '^ok' "$W/py" | head)"
  NL_CAFILE="$W/cert.pem" python3 - "$T" "$HERE" <<'PY' >"$W/py" 2>&1 && ok "python client raises 403 with the server's code" || bad "403 via client: $(cat "$W/py")"
import os, sys
sys.path.insert(0, os.path.join(sys.argv[2], "..", "..", "clients", "python"))
import nearline
db = nearline.Client(sys.argv[1], api_key="reader-key-0001", cafile=os.environ["NL_CAFILE"])
try:
    db.upsert("t", [{"id": 2, "vector": [1, 2]}])
except nearline.NearlineError as e:
    print(e.status, e.code, e.message)
    sys.exit(0 if (e.status, e.code) == (403, "forbidden") and e.request_id else 1)
sys.exit(1)
PY
  stop_server
  printf 'short read\n' >"$W/badkeys"
  "$NL" serve --db "$W/db" --listen 127.0.0.1:$PORT --api-keys "$W/badkeys" >"$W/o" 2>&1
  [ $? -ne 0 ] && grep -q 'line 1' "$W/o" && ok "a malformed key file is refused with its line" || bad "bad key file: $(cat "$W/o")"
else
  skp "openssl could not make a certificate: TLS and auth checks skipped"
fi

# ---- overload and graceful shutdown -------------------------------------------------
start_server "$W/log" --db "$W/db2" --listen 127.0.0.1:$PORT --max-concurrent 1 || bad "server start (limits)"
req PUT /v1/collections/c '{"dim":2}'
python3 -c "
import json; print(json.dumps({'points':[{'id':i,'vector':[i,1.5]} for i in range(3000)]}))" >"$W/slow.json"
# A slow upload holds the only slot for a few seconds.
curl -s -o "$W/slow_out" -w '%{http_code}' --limit-rate 20k -X POST "$U/v1/collections/c/points" \
  --data-binary @"$W/slow.json" >"$W/slow_status" &
CURL_PID=$!
sleep 1
ST=$(curl -s -D "$W/h" -o "$W/r" -w '%{http_code}' -X POST "$U/v1/collections/c/search" -d '{"vector":[1,1]}')
expect 503 overloaded "a request beyond --max-concurrent"
grep -qi '^Retry-After: 1' "$W/h" && ok "503 carries Retry-After" || bad "no Retry-After: $(cat "$W/h")"
kill -TERM $SRV_PID   # while the slow upload is in flight
sleep 0.5
ST=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$U/healthz"); [ "$ST" != 200 ] && ok "no new connections after SIGTERM" || bad "accepted after SIGTERM"
wait $CURL_PID
[ "$(cat "$W/slow_status")" = 200 ] && grep -q '"upserted":3000' "$W/slow_out" && ok "the request in flight completed" ||
  bad "in-flight request: $(cat "$W/slow_status") $(cat "$W/slow_out")"
wait $SRV_PID; rc=$?
[ $rc -eq 0 ] && grep -q 'stopped cleanly' "$W/log" && ok "clean exit after draining and flushing" || bad "shutdown exit $rc"
"$NL" inspect --db "$W/db2" --collection c >"$W/i" 2>&1
grep -q '"points":3000' "$W/i" && ok "the drained upsert is in the database" || bad "after shutdown: $(head -c 300 "$W/i")"

# ---- a second signal exits at once ----------------------------------------------------
start_server "$W/log" --db "$W/db2" --listen 127.0.0.1:$PORT || bad "server start (second signal)"
curl -s -o /dev/null --limit-rate 20k -X POST "$U/v1/collections/c/points" --data-binary @"$W/slow.json" &
CURL_PID=$!
sleep 1
kill -TERM $SRV_PID; sleep 0.3; kill -TERM $SRV_PID
t0=$(date +%s%N); wait $SRV_PID; rc=$?; t1=$(date +%s%N)
kill $CURL_PID 2>/dev/null; wait $CURL_PID 2>/dev/null
[ $rc -ne 0 ] && [ $(( (t1 - t0) / 1000000 )) -lt 2000 ] && ok "a second signal exits at once (exit $rc)" ||
  bad "second signal: exit $rc after $(( (t1 - t0) / 1000000 )) ms"
"$NL" verify --db "$W/db2" >"$W/v" 2>&1 && grep -q '"points":3000' <("$NL" inspect --db "$W/db2" --collection c 2>&1) &&
  ok "... and the database is intact (verify, 3000 points)" || bad "after the second signal: $(cat "$W/v")"

# ---- kill -9 during upserts -----------------------------------------------------------
start_server "$W/log" --db "$W/db3" --listen 127.0.0.1:$PORT || bad "server start (crash)"
req PUT /v1/collections/c '{"dim":4}'
python3 - "$U" "$W/acked" "$HERE" <<'PY' &
import os, sys, random
sys.path.insert(0, os.path.join(sys.argv[3], "..", "..", "clients", "python"))
import nearline
db = nearline.Client(sys.argv[1], retries=0, timeout=5)
rng = random.Random(1)
with open(sys.argv[2], "w") as out:
    for b in range(100000):
        pts = [{"id": b * 50 + i, "vector": [rng.random() for _ in range(4)], "metadata": {"b": b}} for i in range(50)]
        try:
            db.upsert("c", pts)
        except nearline.NearlineError:
            break
        out.write("%d\n" % b)
        out.flush()
PY
WRITER=$!
sleep 2
kill -9 $SRV_PID; wait $SRV_PID 2>/dev/null
wait $WRITER
acked=$(wc -l <"$W/acked")
start_server "$W/log" --db "$W/db3" --listen 127.0.0.1:$PORT || bad "restart after kill -9"
python3 - "$U" "$W/acked" "$HERE" <<'PY' >"$W/v" 2>&1
import os, sys
sys.path.insert(0, os.path.join(sys.argv[3], "..", "..", "clients", "python"))
import nearline
db = nearline.Client(sys.argv[1])
batches = [int(x) for x in open(sys.argv[2])]
missing = 0
for b in batches:
    for i in (0, 25, 49):
        try:
            p = db.get("c", b * 50 + i)
            missing += p["metadata"]["b"] != b
        except nearline.NearlineError:
            missing += 1
pts = db.describe("c")["stats"]["points"]
print("acked batches %d, points %d, missing %d" % (len(batches), pts, missing))
sys.exit(0 if missing == 0 and pts >= 50 * len(batches) else 1)
PY
[ $? -eq 0 ] && [ "$acked" -gt 0 ] && ok "kill -9 mid-upserts: $(cat "$W/v")" || bad "after kill -9: $(cat "$W/v") (acked $acked)"
stop_server

echo "# $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
