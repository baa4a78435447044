# lib.sh — what the scripted integration tests share (sourced): pass/fail/skip counters and
# their reporting, a field of the last JSON line of a file, and numeric comparisons.
pass=0; fail=0; skip=0
ok()   { pass=$((pass + 1)); echo "ok   - $1"; }
bad()  { fail=$((fail + 1)); echo "FAIL - $1"; }
skp()  { skip=$((skip + 1)); echo "skip - $1"; }
# field FILE NAME: the scalar NAME of the file's last line
field() { tail -1 "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p"; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
