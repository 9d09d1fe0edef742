#!/usr/bin/env bash
# RFC 6455 conformance through Ringway, with Autobahn|Testsuite playing
# either end. Each leg runs the cases directly and through the data plane;
# the gateway must give exactly the direct result in every case, and no
# case may fail.
#
# usage: e2e/conformance/run.sh [--deflate | --backend-leg] [OUTDIR]
#   default:        the client leg: wstest's fuzzingclient against an echo
#                   backend (ringway-echo, tokio-tungstenite), the 301
#                   non-compression cases
#   --deflate:      the client leg's compression slice 12.1.*, 13.1.* against
#                   a Python `websockets` backend that negotiates permessage-deflate
#   --backend-leg:  wstest's fuzzingserver is the backend and ringway-echo-client
#                   (tokio-tungstenite) the echoing client, the same 301 cases:
#                   what Ringway does with a broken or vanishing backend
# Needs: release builds of ringway-dataplane and the e2e bins (built here),
# Python 2.7 under pyenv for wstest (setup_wstest.sh), python3.
# setup_wstest.sh, run_fuzzingclient.sh, ab_summary.py and py_echo.py are the
# team's shared conformance scripts, copied here so the repo is self-contained.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODE=client
case "${1:-}" in
  --deflate) MODE=deflate; shift ;;
  --backend-leg) MODE=backend; shift ;;
esac
if [ $MODE = backend ]; then OUT=${1:-$ROOT/target/autobahn-backend}; else OUT=${1:-$ROOT/target/autobahn}; fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ringway/target}
BIN=$CARGO_TARGET_DIR/release

bash "$HERE/setup_wstest.sh" >/dev/null
(cd "$ROOT" && cargo build -q --release --locked -p ringway-dataplane -p ringway-e2e --bins)

BACKEND_PORT=${BACKEND_PORT:-19611}
GATEWAY_PORT=${GATEWAY_PORT:-19612}
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

rm -rf "$OUT"; mkdir -p "$OUT"
WSTEST=${WSTEST:-$HOME/.cache/wstest-py2/bin/wstest}
SPEC="$WORK/spec.json"
CASES='["*"]'; EXCLUDE='["12.*","13.*"]'
case $MODE in
  deflate)
    python3 -c 'import websockets' 2>/dev/null || pip install -q websockets
    python3 "$HERE/py_echo.py" "$BACKEND_PORT" --deflate & pids+=($!)
    CASES='["12.1.*","13.1.*"]'; EXCLUDE='[]' ;;
  client)
    "$BIN/ringway-echo" --listen "127.0.0.1:$BACKEND_PORT" --id autobahn 2>"$WORK/echo.log" & pids+=($!) ;;
  backend)
    # No embedded web server (--webport 0): only the WebSocket port.
    cat > "$SPEC" <<JSON
{"url": "ws://127.0.0.1:$BACKEND_PORT", "outdir": "$OUT",
 "cases": $CASES, "exclude-cases": $EXCLUDE, "exclude-agent-cases": {}}
JSON
    "$WSTEST" -m fuzzingserver -s "$SPEC" --webport 0 > "$OUT/wstest.log" 2>&1 & pids+=($!) ;;
esac

# Frame and message limits above the suite's largest (16 MiB) messages, and
# no gateway pings during a case: the suite compares every frame it gets.
cat > "$WORK/gateway.yaml" <<YAML
listener: {address: 127.0.0.1:$GATEWAY_PORT}
routes:
  - name: autobahn
    pathPrefix: /
    key: {source: Query, name: agent}
    missingKey: Random
    backends: ["127.0.0.1:$BACKEND_PORT"]
connections:
  heartbeat: {intervalSeconds: 3600, timeoutSeconds: 60}
  maxFrameBytes: 67108864
  maxMessageBytes: 67108864
YAML
"$BIN/ringway-dataplane" --config "$WORK/gateway.yaml" --log warn 2>"$WORK/gateway.log" & pids+=($!)

for port in "$BACKEND_PORT" "$GATEWAY_PORT"; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

start=$(date +%s)
if [ $MODE = backend ]; then
  # The agent name travels in the query (agent=...), which Ringway passes
  # on, as it does the Host header: the fuzzingserver wants its own port there.
  HOST_HEADER="127.0.0.1:$BACKEND_PORT"
  "$BIN/ringway-echo-client" --url "ws://127.0.0.1:$BACKEND_PORT" --host "$HOST_HEADER" \
    --agent client 2>"$WORK/client.log"
  "$BIN/ringway-echo-client" --url "ws://127.0.0.1:$GATEWAY_PORT" --host "$HOST_HEADER" \
    --agent ringway 2>>"$WORK/client.log"
  DIRECT=client
else
  cat > "$SPEC" <<JSON
{"outdir": "$OUT", "servers": [
   {"agent": "backend", "url": "ws://127.0.0.1:$BACKEND_PORT"},
   {"agent": "ringway", "url": "ws://127.0.0.1:$GATEWAY_PORT"}],
 "cases": $CASES, "exclude-cases": $EXCLUDE, "exclude-agent-cases": {}}
JSON
  "$WSTEST" -m fuzzingclient -s "$SPEC" > "$OUT/wstest.log" 2>&1
  DIRECT=backend
fi
echo "the $MODE leg took $(( $(date +%s) - start )) s; report: $OUT/index.html"

status=0
python3 "$HERE/ab_summary.py" "$OUT" || status=1
SAME_END=(); if [ $MODE = backend ]; then SAME_END=(--same-end); fi
python3 "$HERE/compare.py" "${SAME_END[@]}" "$OUT" "$DIRECT" ringway || status=1
if [ $MODE = backend ] && grep -q "timed out" "$WORK/client.log"; then
  echo "ringway-echo-client gave up on a case:"; grep "timed out" "$WORK/client.log"; status=1
fi
if grep -qi "panic" "$WORK/gateway.log"; then echo "the gateway logged a panic:"; cat "$WORK/gateway.log"; status=1; fi
exit $status
