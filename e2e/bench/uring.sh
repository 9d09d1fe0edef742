#!/usr/bin/env bash
# Would an io_uring data path make Ringway cheaper per message, or its tail
# shorter? Runs byte-level TCP relays (e2e/bench/uring-eval/, a standalone
# cargo project: one thread, two pumps per connection, no WebSocket parsing)
# on epoll and on io_uring, and Ringway's data plane for reference, in one
# run, and writes the table to docs/benchmarks.md (between
# <!-- uring:begin --> and <!-- uring:end -->):
#
#   bash e2e/bench/uring.sh
#
# Placed as in compare.sh: each relay runs alone, pinned to CPU 0, in front of
# two ringway-echo backends; the load generator and the backends share CPU 1.
# Per relay: round-trip latency at a fixed rate (open loop, median of
# LAT_RUNS runs) and, per size in TP_SIZES, msg/s and the relay's CPU time per
# message in a closed-loop saturation run. The relays alternate connections
# over the two backends (Ringway hashes its `room` key); the load generator
# names no room, so Ringway picks a backend at random.
#
# Settings, from the environment (defaults in brackets):
#   DURATION [10] WARMUP [3] LAT_RUNS [3]
#   LAT_CONNECTIONS [1000] LAT_RATE [20000] LAT_SIZE [64]
#   TP_DURATION [10] TP_CONNECTIONS [50] TP_WINDOW [16] TP_SIZES ["64 4096"]
#   TP_RUNS [3]   saturation runs per size; the table has the median
#   RELAYS ["ringway epoll tokio-uring monoio monoio-epoll"]
#   PROXY_CPU [0] LOAD_CPU [1]
#   OUT [docs/benchmarks.md] ("-" to only print the table)
#   KEEP_WORK [0]   1 keeps the logs and raw JSON results
# uring-eval builds into $CARGO_TARGET_DIR/uring-eval (outside the repository).
# The defaults finish in about ten minutes, plus the builds.
set -euo pipefail
# shellcheck source=e2e/bench/common.sh
source "$(dirname "$0")/common.sh"
bench_init uring

load_settings
TP_RUNS=${TP_RUNS:-3}
RELAYS=${RELAYS:-"ringway epoll tokio-uring monoio monoio-epoll"}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
LOAD_THREADS=1
OUT=${OUT:-docs/benchmarks.md}

BACKEND_PORTS=(19001 19002)
RELAY_PORT=18090
RINGWAY_PORT=18081
EVAL_TARGET=$CARGO_TARGET_DIR/uring-eval
declare -A LABEL=([ringway]=Ringway [epoll]="epoll (tokio)" [tokio-uring]="io_uring (tokio-uring)"
  [monoio]="io_uring (monoio)" [monoio-epoll]="epoll (monoio)")
declare -A R=()    # results, R[relay.metric]
declare -A SKIP=() # why a relay has no results

# ---------------------------------------------------------------- setup --

ensure_packages jq
log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release -p ringway-e2e -p ringway-dataplane >"$WORK/build.log" 2>&1 ||
  { tail -30 "$WORK/build.log" >&2; die "Ringway does not build"; }
log "building e2e/bench/uring-eval (CARGO_TARGET_DIR=$EVAL_TARGET)"
CARGO_TARGET_DIR=$EVAL_TARGET cargo build --release --locked \
  --manifest-path e2e/bench/uring-eval/Cargo.toml >"$WORK/build-eval.log" 2>&1 ||
  { tail -30 "$WORK/build-eval.log" >&2; die "uring-eval does not build"; }
write_ringway_config "$WORK/ringway.yaml" "$RINGWAY_PORT" 19091 1 "${BACKEND_PORTS[@]}"
# A thousand connections are two thousand sockets in a relay.
ulimit -n "$(ulimit -Hn)"
start_echo_backends "$LOAD_CPU" "${BACKEND_PORTS[@]}"

# ---------------------------------------------------------- measuring --

proxy_pids() { echo "$PROXY_PID"; }

# start_relay RELAY: starts it on the proxy CPU and waits for its port;
# sets PROXY_PID and URL.
start_relay() {
  local relay=$1 port=$RELAY_PORT
  if [[ $relay == ringway ]]; then
    port=$RINGWAY_PORT
    start_bg ringway "$PROXY_CPU" "$BIN/ringway-dataplane" --config "$WORK/ringway.yaml"
  else
    start_bg "$relay" "$PROXY_CPU" "$EVAL_TARGET/release/uring-eval" "$relay" "127.0.0.1:$port" \
      "${BACKEND_PORTS[@]/#/127.0.0.1:}"
  fi
  PROXY_PID=$LAST_PID
  URL="ws://127.0.0.1:$port/echo"
  if ! wait_listening "127.0.0.1:$port" "$PROXY_PID" 15; then
    SKIP[$relay]="did not start: $(tail -1 "$WORK/$relay.log" 2>/dev/null | cut -c1-160)"
    stop_pid "$PROXY_PID"
    return 1
  fi
}

for relay in $RELAYS; do
  [[ -n ${LABEL[$relay]:-} ]] || die "unknown relay $relay (known: ${!LABEL[*]})"
  CURRENT=$relay
  log "${LABEL[$relay]}: starting"
  if ! start_relay "$relay"; then
    log "${LABEL[$relay]}: skipped, ${SKIP[$relay]}"
    continue
  fi
  log "${LABEL[$relay]}: latency, $LAT_CONNECTIONS connections x $LAT_RATE msg/s"
  measure_latency "$relay" "$URL" || R[$relay.p50]=failed
  measure_sizes "$relay" "$URL" "${LABEL[$relay]}"
  stop_pid "$PROXY_PID"
done

# --------------------------------------------------------------- table --

# over A B METRIC: A's METRIC over B's, or nothing when either is missing.
over() {
  local a=${R[$1.$3]:-} b=${R[$2.$3]:-}
  if is_number "$a" && is_number "$b" && (($(calc '%d' "$b > 0"))); then calc '%.2f' "$a / $b"; fi
}

URING=()
for relay in tokio-uring monoio; do
  [[ " $RELAYS " == *" $relay "* && " $RELAYS " == *" epoll "* ]] && URING+=("$relay")
done

load_rows
rows+=("other|other processes' CPU during the runs, most (% of one CPU)|-|")

# verdict: whether an io_uring relay costs at least 10% less CPU per message
# than the epoll relay at every size, or has a p99 or p99.9 at least 10%
# shorter, with no other of these numbers 10% worse.
verdict() {
  local relay size r better worse
  for relay in "${URING[@]}"; do
    better='' worse=''
    for metric in $(for size in $TP_SIZES; do echo "cpu$size"; done) p99 p999; do
      r=$(over "$relay" epoll "$metric")
      [[ -n $r ]] || continue
      if (($(calc '%d' "$r <= 0.9"))); then better+=" $metric ×$r"; fi
      if (($(calc '%d' "$r >= 1.1"))); then worse+=" $metric ×$r"; fi
    done
    if [[ -n $better && -z $worse ]]; then
      echo "- ${LABEL[$relay]}: **clearly better than epoll** (at least 10% lower:$better)."
    else
      echo "- ${LABEL[$relay]}: not clearly better than epoll (10% or more lower:${better:- none}; 10% or more higher:${worse:- none})."
    fi
  done
}

table=$WORK/table.md
{
  echo "### epoll and io_uring relays, $(date -u '+%Y-%m-%d')"
  echo
  machine_description
  printf ' io_uring: /proc/sys/kernel/io_uring_disabled = %s.\n' "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo '?')"
  echo
  printf 'Settings: relay on CPU %s, one thread; load generator and both echo backends on CPU %s. ' "$PROXY_CPU" "$LOAD_CPU"
  printf 'Latency: %s connections, %s msg/s in all of %s B, %s s warmup + %s s measured, median of %s runs. ' \
    "$LAT_CONNECTIONS" "$LAT_RATE" "$LAT_SIZE" "$WARMUP" "$DURATION" "$LAT_RUNS"
  printf 'Saturation: %s connections × %s messages in flight, %s s per size, median of %s runs.\n' \
    "$TP_CONNECTIONS" "$TP_WINDOW" "$TP_DURATION" "$TP_RUNS"
  echo
  header="| |" rule="|---|"
  for relay in $RELAYS; do header+=" ${LABEL[$relay]} |"; rule+="---:|"; done
  for relay in "${URING[@]}"; do header+=" ${LABEL[$relay]} ÷ epoll (tokio) |"; rule+="---:|"; done
  echo "$header"
  echo "$rule"
  for row in "${rows[@]}"; do
    IFS='|' read -r metric label _ format <<<"$row"
    line="| $label |"
    for relay in $RELAYS; do line+=" $(cell "$relay" "$metric" "$format") |"; done
    for relay in "${URING[@]}"; do
      if [[ -n $format ]]; then line+=" $(over "$relay" epoll "$metric") |"; else line+=" |"; fi
    done
    echo "$line"
  done
  echo
  verdict
  for relay in $RELAYS; do
    if [[ -n ${SKIP[$relay]:-} ]]; then echo "*${LABEL[$relay]}* was skipped: ${SKIP[$relay]}."; fi
  done
} >"$table"

echo
cat "$table"
if [[ $OUT != - ]]; then
  write_section "$OUT" uring "$table" 'bash e2e/bench/uring.sh'
  log "wrote the table to $OUT"
fi
