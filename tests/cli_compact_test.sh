#!/usr/bin/env bash
# Integration test of `nearline compact`, `verify` and `inspect` on a database that a
# writer left mid-flight: the crash harness runs a few rounds (SIGKILLed writers with
# background flushes and compactions), then the commands must recover, report, compact
# and verify it. Usage: cli_compact_test.sh NEARLINE_BINARY CRASH_HARNESS_BINARY
set -u
NL=${1:?nearline binary}
HARNESS=${2:?crash_harness binary}
W=$(mktemp -d -p "${NL_TEST_TMP:-$PWD}" compacttest.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0; fail=0
ok()  { pass=$((pass + 1)); echo "ok   - $1"; }
bad() { fail=$((fail + 1)); echo "FAIL - $1"; }
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" "$2" | head -1; }

"$HARNESS" "$W/db" --rounds 4 --seed 7 >"$W/h" 2>&1 && ok "crash harness rounds" || bad "harness: $(tail -3 "$W/h")"
DB="$W/db"
"$NL" verify --db "$DB" >"$W/v" 2>"$W/err" && grep -q '"ok":true' "$W/v" && ok "verify after the crash" || bad "verify: $(cat "$W/err")"
"$NL" inspect --db "$DB" --collection c >"$W/i0" 2>"$W/err" || bad "inspect: $(cat "$W/err")"
p0=$(field points "$W/i0"); t0=$(field tombstones "$W/i0")
[ -n "$p0" ] && ok "inspect reports $p0 points, $t0 tombstones" || bad "inspect output: $(cat "$W/i0")"

"$NL" compact --db "$DB" --collection c --dry-run >"$W/d" 2>"$W/err" || bad "dry run: $(cat "$W/err")"
grep -q "would merge\|nothing to compact" "$W/err" && ok "dry run says what it would do: $(cat "$W/err")" || bad "dry run message: $(cat "$W/err")"
"$NL" inspect --db "$DB" --collection c >"$W/i1" 2>/dev/null
[ "$(field segments "$W/i0")" = "$(field segments "$W/i1")" ] && ok "dry run changes nothing" || bad "dry run changed segments"

"$NL" compact --db "$DB" --collection c >"$W/c" 2>"$W/err" && ok "compact: $(cat "$W/err")" || bad "compact: $(cat "$W/err")"
"$NL" inspect --db "$DB" --collection c >"$W/i2" 2>/dev/null
[ "$(field segments "$W/i2")" = "1" ] && [ "$(field tombstones "$W/i2")" = "0" ] && [ "$(field points "$W/i2")" = "$p0" ] \
  && ok "one segment, no tombstones, $p0 points kept" || bad "after compact: $(cat "$W/i2")"
before=$(field disk_bytes_before "$W/c"); after=$(field disk_bytes_after "$W/c")
[ -n "$after" ] && ok "disk bytes $before -> $after" || bad "compact output: $(cat "$W/c")"
"$NL" verify --db "$DB" --collection c >/dev/null 2>"$W/err" && ok "verify after compaction" || bad "verify: $(cat "$W/err")"
"$NL" compact --db "$DB" --collection c 2>&1 >/dev/null | grep -q "nothing to compact" && ok "a second compaction has nothing to do" || bad "second compaction"

# Bad input: unknown collection, bad name, missing flags.
"$NL" compact --db "$DB" --collection nope >/dev/null 2>"$W/err"; rc=$?
[ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q "not found" "$W/err" && ok "unknown collection" || bad "unknown collection ($rc): $(cat "$W/err")"
"$NL" compact --db "$DB" --collection ../x >/dev/null 2>"$W/err"; rc=$?
[ $rc -ne 0 ] && [ $rc -lt 128 ] && ok "a path as a name is refused: $(head -c 120 "$W/err")" || bad "bad name ($rc)"
"$NL" compact --db "$DB" >/dev/null 2>"$W/err"; rc=$?
[ $rc -eq 2 ] && grep -q "required" "$W/err" && ok "missing --collection" || bad "missing flag ($rc)"

# Orphans: a stray segment and a temp file are removed at open.
cp "$DB/c/0/$(ls "$DB/c/0" | grep '^seg-' | head -1)" "$DB/c/0/seg-099999.nls"
touch "$DB/c/0/seg-000777.nls.tmp.1" "$DB/.tmp-import-x-1"
"$NL" verify --db "$DB" >/dev/null 2>"$W/err" && [ ! -e "$DB/c/0/seg-099999.nls" ] && [ ! -e "$DB/c/0/seg-000777.nls.tmp.1" ] \
  && [ ! -e "$DB/.tmp-import-x-1" ] && ok "orphaned files removed at open" || bad "orphans: $(cat "$W/err"); $(ls -a "$DB" "$DB/c/0")"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
