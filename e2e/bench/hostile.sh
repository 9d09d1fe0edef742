#!/usr/bin/env bash
# Hostile clients against one data-plane process with an echo backend,
# while one legitimate client keeps sending a message every 10 ms and
# timing its echo:
#
#   bash e2e/bench/hostile.sh
#
# `ringway-load hostile` runs the attacks one after another (slowloris,
# huge frames, slow consumers, malformed requests, frame violations,
# connection churn, half-sent requests; see e2e/src/load/hostile.rs), checks
# how every hostile connection ended and when, and reads the gateway's RSS
# and open descriptors before, at the peak of and after each attack. It
# fails (exit 1, the problems listed) when the legitimate client lost a
# message or its p99 in an attack was more than twice its baseline, when a
# connection ended the wrong way or too late, or when memory or descriptors
# did not come back. The table goes to docs/benchmarks.md between
# <!-- hostile:begin --> and <!-- hostile:end -->.
#
# Settings, from the environment (defaults in brackets):
#   SCALE [1]        multiplies every attack's connection count (0.01-1)
#   SETTLE [15]      seconds after an attack before memory is read again
#   SLOW_CONSUMER [10] the gateway's slowConsumerSeconds
#   BASELINE [15]    seconds the legitimate client is timed before the attacks
#   ONLY []          comma-separated attacks to run (all by default)
#   OUT [docs/benchmarks.md] ("-" to only print)   KEEP_WORK [0]
set -euo pipefail
# shellcheck source=e2e/bench/common.sh
source "$(dirname "$0")/common.sh"
bench_init hostile

SCALE=${SCALE:-1}
ONLY=${ONLY:-}
OUT=${OUT:-docs/benchmarks.md}
GW_PORT=28400
ADMIN_PORT=28401
BACKEND_PORT=28402
LEGIT_BACKEND_PORT=28403
# The gateway's timeouts, shorter than the defaults so that the run takes
# about three minutes; the probe is told them, to check every end.
HANDSHAKE_TIMEOUT=5
SLOW_CONSUMER=${SLOW_CONSUMER:-10}
HEARTBEAT_INTERVAL=10
HEARTBEAT_TIMEOUT=10
# Seconds after an attack before memory is read again: the gateway gives
# its free pages back within 5 s of 1,000 connections ending
# (dataplane/src/memory.rs), jemalloc the rest over its decay time (10 s).
SETTLE=${SETTLE:-15}
# Seconds the legitimate client is timed before the first attack: its p99
# is the bar (twice it) for every attack, so it needs enough samples
# (1,500 at one every 10 ms) not to be a handful of lucky ones.
BASELINE=${BASELINE:-15}
# The real-time priority of the echo backend and the legitimate client.
RT_PRIORITY=10

ulimit -n 20000 || die "cannot raise the open-files limit to 20,000"
log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release --locked -p ringway-e2e -p ringway-dataplane >"$WORK/build.log" 2>&1 ||
  { tail -30 "$WORK/build.log" >&2; die "the build failed"; }

# The legitimate client has a route and an echo backend of its own, as an
# unrelated application behind the same gateway would: the attackers' load
# on their backend stays out of its round trips. It and its backend stand
# for machines of their own; on this box they share CPU 1 with the
# attackers, so they run at a real-time priority (SCHED_FIFO) that the
# attackers cannot delay, the client above its backend: what the
# legitimate client measures is then the gateway, alone on CPU 0.
RT=(chrt -f "$RT_PRIORITY")
if ! "${RT[@]}" true 2>/dev/null; then
  log "warning: cannot use SCHED_FIFO here (chrt); the legitimate client and its backend share CPU 1 with the attackers"
  RT=() RT_PRIORITY=0
fi
start_bg echo 1 "$BIN/ringway-echo" --listen "127.0.0.1:$BACKEND_PORT" --id hostile
wait_listening "127.0.0.1:$BACKEND_PORT" "$LAST_PID" 10 || die "the echo backend did not start"
start_bg legit-echo 1 "${RT[@]}" "$BIN/ringway-echo" --listen "127.0.0.1:$LEGIT_BACKEND_PORT" --id legit
wait_listening "127.0.0.1:$LEGIT_BACKEND_PORT" "$LAST_PID" 10 || die "the legitimate client's echo backend did not start"
cat >"$WORK/gateway.yaml" <<YAML
listener: {address: 127.0.0.1:$GW_PORT}
admin: {address: 127.0.0.1:$ADMIN_PORT}
runtime: {workerThreads: 1}
routes:
  - name: echo
    pathPrefix: /echo
    key: {source: Query, name: room}
    backends: ["127.0.0.1:$BACKEND_PORT"]
  - name: legit
    pathPrefix: /legit
    key: {source: Query, name: room}
    backends: ["127.0.0.1:$LEGIT_BACKEND_PORT"]
connections:
  handshakeTimeoutSeconds: $HANDSHAKE_TIMEOUT
  slowConsumerSeconds: $SLOW_CONSUMER
  heartbeat: {intervalSeconds: $HEARTBEAT_INTERVAL, timeoutSeconds: $HEARTBEAT_TIMEOUT}
YAML
start_bg gateway 0 "$BIN/ringway-dataplane" --config "$WORK/gateway.yaml" --log warn
GW_PID=$LAST_PID
wait_listening "127.0.0.1:$GW_PORT" "$GW_PID" 10 || die "the gateway did not start: $(cat "$WORK/gateway.log")"

log "attacking (scale $SCALE${ONLY:+, only $ONLY})"
status=0
taskset -c 1 "$BIN/ringway-load" hostile --url "ws://127.0.0.1:$GW_PORT/echo" --pid "$GW_PID" \
  --legit-url "ws://127.0.0.1:$GW_PORT/legit" \
  --scale "$SCALE" ${ONLY:+--only "$ONLY"} \
  --handshake-timeout "$HANDSHAKE_TIMEOUT" --slow-consumer "$SLOW_CONSUMER" \
  --settle "$SETTLE" --baseline "$BASELINE" --legit-priority "$((RT_PRIORITY > 0 ? RT_PRIORITY + 1 : 0))" \
  >"$WORK/hostile.txt" 2>"$WORK/hostile.err" || status=$?
cat "$WORK/hostile.txt"
if grep -qi panic "$WORK/gateway.log"; then
  log "the gateway logged a panic:"; cat "$WORK/gateway.log" >&2; status=1
fi
alive "$GW_PID" || { log "the gateway died"; status=1; }

block=$WORK/block.md
{
  echo "$(machine_description) Gateway pinned to CPU 0 with one worker thread; the attackers, their echo backend, the legitimate client and its own echo backend (a route of its own) on CPU 1, the last two at real-time priority (SCHED_FIFO ${RT_PRIORITY}+; 0: none); \`SCALE=$SCALE\`; gateway timeouts: handshake ${HANDSHAKE_TIMEOUT} s, slow consumer ${SLOW_CONSUMER} s, heartbeat ${HEARTBEAT_INTERVAL} + ${HEARTBEAT_TIMEOUT} s."
  echo
  cat "$WORK/hostile.txt"
} >"$block"
if [[ $OUT != - ]]; then
  write_section "$OUT" hostile "$block" "bash e2e/bench/hostile.sh"
  log "wrote the table to $OUT"
fi
exit $status
