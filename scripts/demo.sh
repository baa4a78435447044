#!/usr/bin/env bash
# `make run`: nearline as a server on this machine, with nothing but the repository.
# Starts `nearline serve` on 127.0.0.1:7700 (NEARLINE_DEMO_PORT to change) over a local
# database in .demo/db (NEARLINE_DEMO_DIR), loads a generated catalogue of 20,000 items through the Python
# client (only the first time: a second run reuses it), runs searches with and without
# filters, and shows how to query it with curl. On a terminal the server keeps running
# until Ctrl-C; otherwise (or with NEARLINE_DEMO_EXIT=1) it is stopped after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
NL="$BUILD_DIR/tools/nearline"
PORT=${NEARLINE_DEMO_PORT:-7700}
DIR=${NEARLINE_DEMO_DIR:-.demo}
URL="http://127.0.0.1:$PORT"
mkdir -p "$DIR"
started=0
if curl -sf "$URL/healthz" >/dev/null 2>&1; then
  echo "nearline: a server already answers on $URL: using it"
else
  echo "nearline: starting the server: $NL serve --db $DIR/db --listen 127.0.0.1:$PORT (log: $DIR/server.log)"
  "$NL" serve --db "$DIR/db" --listen "127.0.0.1:$PORT" >>"$DIR/server.log" 2>&1 &
  SRV=$!
  started=1
  for _ in $(seq 1 100); do
    curl -sf "$URL/healthz" >/dev/null 2>&1 && break
    if ! kill -0 $SRV 2>/dev/null; then
      echo "nearline: the server did not start:"; tail -5 "$DIR/server.log"; exit 1
    fi
    sleep 0.1
  done
fi
stop() { if [ $started = 1 ]; then kill -TERM $SRV 2>/dev/null; wait $SRV 2>/dev/null || true; fi; }
trap stop EXIT
python3 scripts/demo.py "$URL"
cat <<EOT
Query it yourself with curl:
  curl -s $URL/v1/collections/catalogue
  curl -s -X POST $URL/v1/collections/catalogue/search -d '{"vector": [$(python3 -c "print(', '.join(['0.1']*32))")], "k": 3,
       "filter": {"field": "category", "eq": "maps"}}'
  curl -s $URL/v1/collections/catalogue/points/42
  curl -s $URL/metrics | grep nearline_search
The API is described in docs/api.md; the Python client is clients/python.
EOT
if [ $started = 1 ] && [ -t 0 ] && [ "${NEARLINE_DEMO_EXIT:-0}" != 1 ]; then
  echo "The server keeps running on $URL: press Ctrl-C to stop it."
  trap 'echo; stop; exit 0' INT TERM
  wait $SRV || true
fi
