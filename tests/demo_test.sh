#!/usr/bin/env bash
# `make run`'s demo, twice in a row on a scratch directory and a free port, without a
# terminal (so it stops its server after the demo): both runs must succeed, the second
# must reuse the data the first loaded, and the filtered searches must print.
# Usage: demo_test.sh BUILD_DIR
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
BUILD=$(cd "${1:?build dir}" && pwd)
W=$(mktemp -d -p "${NL_TEST_TMP:-$PWD}" demotest.XXXXXX)
trap 'rm -rf "$W"' EXIT
export NEARLINE_DEMO_DIR="$W/demo" NEARLINE_DEMO_EXIT=1
export NEARLINE_DEMO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bash "$HERE/../scripts/demo.sh" "$BUILD" </dev/null >"$W/run1" 2>&1 && grep -q "loaded 20,000 catalogue items" "$W/run1" &&
  grep -q "in-stock tents under 100" "$W/run1" && grep -q "HTTP 400 bad_filter" "$W/run1" && ok "first run loads and searches" ||
  bad "first run: $(tail -20 "$W/run1")"
bash "$HERE/../scripts/demo.sh" "$BUILD" </dev/null >"$W/run2" 2>&1 && grep -q "already holds 20,000 items" "$W/run2" &&
  grep -q "curl -s" "$W/run2" && ok "second run reuses the data" || bad "second run: $(tail -20 "$W/run2")"
! pgrep -f "serve --db $W/demo/db" >/dev/null && ok "no server left running" || bad "a demo server is still running"
echo "# $pass passed, $fail failed"
[ $fail -eq 0 ]
