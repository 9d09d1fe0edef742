#!/usr/bin/env bash
# RFC 6455 conformance through Ringway: the Autobahn|Testsuite fuzzingclient
# against an echo backend directly and through the data plane in one run.
# The gateway must give exactly the backend's own result in every case, and
# no case may fail.
#
# usage: e2e/conformance/run.sh [--deflate] [OUTDIR]
#   default:    the 301 non-compression cases, backend: ringway-echo (tokio-tungstenite)
#   --deflate:  the compression slice 12.1.*, 13.1.* against a Python
#               `websockets` backend that negotiates permessage-deflate
# Needs: release builds of ringway-dataplane and ringway-echo (built here),
# Python 2.7 under pyenv for wstest (setup_wstest.sh), python3.
# setup_wstest.sh, run_fuzzingclient.sh, ab_summary.py and py_echo.py are the
# team's shared conformance scripts, copied here so the repo is self-contained.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DEFLATE=0
if [ "${1:-}" = "--deflate" ]; then DEFLATE=1; shift; fi
OUT=${1:-$ROOT/target/autobahn}
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

if [ $DEFLATE = 1 ]; then
  python3 -c 'import websockets' 2>/dev/null || pip install -q websockets
  python3 "$HERE/py_echo.py" "$BACKEND_PORT" --deflate & pids+=($!)
  CASES='["12.1.*","13.1.*"]'; EXCLUDE='[]'
else
  "$BIN/ringway-echo" --listen "127.0.0.1:$BACKEND_PORT" --id autobahn 2>"$WORK/echo.log" & pids+=($!)
  CASES='["*"]'; EXCLUDE='["12.*","13.*"]'
fi

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

rm -rf "$OUT"; mkdir -p "$OUT"
WSTEST=${WSTEST:-$HOME/.cache/wstest-py2/bin/wstest}
SPEC="$WORK/spec.json"
cat > "$SPEC" <<JSON
{"outdir": "$OUT", "servers": [
   {"agent": "backend", "url": "ws://127.0.0.1:$BACKEND_PORT"},
   {"agent": "ringway", "url": "ws://127.0.0.1:$GATEWAY_PORT"}],
 "cases": $CASES, "exclude-cases": $EXCLUDE, "exclude-agent-cases": {}}
JSON
start=$(date +%s)
"$WSTEST" -m fuzzingclient -s "$SPEC" > "$OUT/wstest.log" 2>&1
echo "wstest took $(( $(date +%s) - start )) s; report: $OUT/index.html"

status=0
python3 "$HERE/ab_summary.py" "$OUT" || status=1
python3 "$HERE/compare.py" "$OUT" backend ringway || status=1
if grep -qi "panic" "$WORK/gateway.log"; then echo "the gateway logged a panic:"; cat "$WORK/gateway.log"; status=1; fi
exit $status
