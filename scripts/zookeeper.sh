#!/usr/bin/env bash
# zookeeper.sh start|stop|status DIR PORT — a standalone ZooKeeper for development, tests
# and the demo, from Debian's zookeeper package, started directly with java (zkServer.sh
# needs more environment). Data, log and pid live in DIR; it listens on 127.0.0.1:PORT
# only (ZK_ADDRESS=IP for another local address: the partition test's namespaces), with
# the admin server off. start returns once ZooKeeper answers (about 3 s), or
# fails with its log. Production clusters point `nearline serve --zookeeper` at their own
# ensemble instead (docs/cluster.md).
set -euo pipefail
cmd=${1:-}; dir=${2:-}; port=${3:-}
if [ -z "$cmd" ] || [ -z "$dir" ] || { [ "$cmd" != stop ] && [ -z "$port" ]; }; then
  echo "usage: $0 start|stop|status DIR PORT" >&2; exit 2
fi
pidf="$dir/zookeeper.pid"
addr=${ZK_ADDRESS:-127.0.0.1}

ruok() { # a four-letter word through bash's /dev/tcp: no client tool needed
  { exec 3<>"/dev/tcp/$addr/$port"; } 2>/dev/null || return 1
  printf srvr >&3; local a; a=$(timeout 2 cat <&3 || true); exec 3>&- 3<&- || true
  [[ "$a" == *Mode:* ]]
}

case "$cmd" in
start)
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then echo "zookeeper: already running (pid $(cat "$pidf"))"; exit 0; fi
  for f in /usr/share/java/zookeeper.jar /etc/zookeeper/conf; do
    [ -e "$f" ] || { echo "zookeeper: $f missing: run scripts/install-deps.sh" >&2; exit 1; }
  done
  command -v java >/dev/null || { echo "zookeeper: java missing: run scripts/install-deps.sh" >&2; exit 1; }
  mkdir -p "$dir/data"
  cat > "$dir/zoo.cfg" <<CFG
tickTime=500
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=$port
clientPortAddress=$addr
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok,mntr
maxSessionTimeout=60000
minSessionTimeout=1000
CFG
  # log4j writes to DIR/zookeeper.log (Debian's conf reads these properties)
  ZOO_LOG_DIR="$dir" setsid java -Xmx256m -Dzookeeper.log.dir="$dir" -Dzookeeper.root.logger=INFO,CONSOLE \
    -cp "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/*" \
    org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg" > "$dir/zookeeper.log" 2>&1 < /dev/null &
  echo $! > "$pidf"
  for _ in $(seq 1 150); do
    if ruok; then echo "zookeeper: up on $addr:$port (pid $(cat "$pidf"), data in $dir)"; exit 0; fi
    kill -0 "$(cat "$pidf")" 2>/dev/null || break
    sleep 0.1
  done
  echo "zookeeper: did not come up on $addr:$port; its log:" >&2; tail -20 "$dir/zookeeper.log" >&2
  kill "$(cat "$pidf")" 2>/dev/null || true; rm -f "$pidf"; exit 1 ;;
stop)
  [ -f "$pidf" ] || { echo "zookeeper: not running"; exit 0; }
  pid=$(cat "$pidf")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidf"; echo "zookeeper: stopped" ;;
status)
  if ruok; then echo "zookeeper: serving on 127.0.0.1:$port"; else echo "zookeeper: not answering on 127.0.0.1:$port"; exit 1; fi ;;
*) echo "usage: $0 start|stop|status DIR PORT" >&2; exit 2 ;;
esac
