# common.sh — starting and stopping `nearline serve` for the server tests (sourced).
# free_port: an unused TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_server LOG ARGS...: starts it in the background (SRV_PID), waits for /healthz.
start_server() {
  local log=$1; shift
  "$NL" serve "$@" >>"$log" 2>&1 &
  SRV_PID=$!
  local scheme=http; case " $* " in *" --tls-cert "*) scheme=https;; esac
  for _ in $(seq 1 100); do
    if curl -sk "$scheme://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 $SRV_PID 2>/dev/null; then echo "server exited: $(tail -5 "$log")"; return 1; fi
    sleep 0.1
  done
  echo "server did not come up: $(tail -5 "$log")"; return 1
}
stop_server() { kill -TERM $SRV_PID 2>/dev/null; wait $SRV_PID 2>/dev/null; }
