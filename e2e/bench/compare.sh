#!/usr/bin/env bash
# Compares Ringway with nginx and HAProxy as WebSocket proxies, and all three
# with no proxy at all, in one run on this machine, and writes the table to
# docs/benchmarks.md (between <!-- compare:begin --> and <!-- compare:end -->):
#
#   bash e2e/bench/compare.sh
#
# Each proxy in turn runs alone, pinned to CPU 0, in front of two
# ringway-echo backends; the load generator and the backends share CPU 1.
# All three proxies hash the same key (the `room` query parameter)
# consistently over the same two backends. Per proxy it measures:
#   - memory per idle connection: RSS with IDLE_CONNECTIONS idle connections
#     open, less RSS before they opened, divided by their number;
#   - latency: round trips at a fixed rate (open loop), p50 to max;
#   - CPU per message: the proxy's CPU time (utime + stime, all its
#     processes) during a closed-loop saturation run, divided by the messages
#     echoed, for each size in TP_SIZES.
# A proxy that does not start (Ringway's data plane before it runs) is
# skipped and the table says why.
#
# Settings, from the environment (defaults in brackets):
#   DURATION [10] WARMUP [3]      latency: measured and warmup seconds, of
#   LAT_RUNS [3]                   runs; the table has the median of each number
#   LAT_CONNECTIONS [1000] LAT_RATE [20000] LAT_SIZE [64]
#   TP_DURATION [10] TP_CONNECTIONS [50] TP_WINDOW [16] TP_SIZES ["64 4096"]
#   IDLE_CONNECTIONS [5000] IDLE_SETTLE [3]   seconds between open and RSS
#   PROXIES ["direct ringway nginx haproxy"]
#   PROXY_CPU [0] LOAD_CPU [1]
#   OUT [docs/benchmarks.md] ("-" to only print the table)
#   KEEP_WORK [0]   1 keeps the configs, logs and raw JSON results
# The defaults finish in about six minutes, plus the release build.
set -euo pipefail
# shellcheck source=e2e/bench/common.sh
source "$(dirname "$0")/common.sh"
bench_init compare

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
LAT_RUNS=${LAT_RUNS:-3}
LAT_CONNECTIONS=${LAT_CONNECTIONS:-1000}
LAT_RATE=${LAT_RATE:-20000}
LAT_SIZE=${LAT_SIZE:-64}
TP_DURATION=${TP_DURATION:-10}
TP_CONNECTIONS=${TP_CONNECTIONS:-50}
TP_WINDOW=${TP_WINDOW:-16}
TP_SIZES=${TP_SIZES:-"64 4096"}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
IDLE_SETTLE=${IDLE_SETTLE:-3}
PROXIES=${PROXIES:-"direct ringway nginx haproxy"}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-docs/benchmarks.md}

# Idle connections come from their own source addresses, so that they never
# compete for ports with the TIME_WAIT left by earlier runs on 127.0.0.1.
IDLE_SOURCES=127.0.0.2-127.0.0.9
BACKEND_PORTS=(19001 19002)

declare -A PORT=([direct]=19001 [ringway]=18081 [nginx]=18082 [haproxy]=18083)
declare -A LABEL=([direct]=direct [ringway]=Ringway [nginx]=nginx [haproxy]=HAProxy)
declare -A R=()    # results, R[proxy.metric]
declare -A SKIP=() # why a proxy has no results

if (($(nproc) < 2)); then
  log "only one CPU: the proxy and the load share it"
  PROXY_CPU=0 LOAD_CPU=0
fi

# ---------------------------------------------------------------- setup --

need=(jq)
[[ " $PROXIES " == *" nginx "* ]] && need+=(nginx)
[[ " $PROXIES " == *" haproxy "* ]] && need+=(haproxy)
ensure_packages "${need[@]}"

log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
if ! cargo build --release -p ringway-e2e -p ringway-dataplane >"$WORK/build.log" 2>&1; then
  SKIP[ringway]="ringway-dataplane does not build: $(grep -m1 '^error' "$WORK/build.log" || echo 'see the build log')"
  cargo build --release -p ringway-e2e >"$WORK/build-e2e.log" 2>&1 ||
    { tail -30 "$WORK/build-e2e.log" >&2; die "ringway-e2e does not build"; }
fi

write_ringway_config "listener: {address: 127.0.0.1:${PORT[ringway]}}"
write_nginx_config "listen 127.0.0.1:${PORT[nginx]} backlog=4096;"
write_haproxy_config "bind 127.0.0.1:${PORT[haproxy]}"
start_echo_backends

# ---------------------------------------------------------- measuring --

# measure_latency P URL: LAT_RUNS latency runs; each row is the median of the
# runs', so that one run disturbed by a stall does not make the table.
measure_latency() {
  local p=$1 url=$2 run json
  local -a p50=() p99=() p999=() max=() lag=()
  local sent=0 received=0 errors=0
  for ((run = 1; run <= LAT_RUNS; run++)); do
    json=$WORK/$p-latency-$run.json
    load "$json" latency --url "$url" --connections "$LAT_CONNECTIONS" --rate "$LAT_RATE" \
      --size "$LAT_SIZE" --duration "$DURATION" --warmup "$WARMUP" || return 1
    p50+=("$(jq -r '.round_trip.p50_us' "$json")")
    p99+=("$(jq -r '.round_trip.p99_us' "$json")")
    p999+=("$(jq -r '.round_trip.p999_us' "$json")")
    max+=("$(jq -r '.round_trip.max_us' "$json")")
    lag+=("$(jq -r '.send_lag.p99_us' "$json")")
    sent=$((sent + $(jq -r '.sent' "$json")))
    received=$((received + $(jq -r '.received' "$json")))
    errors=$((errors + $(jq -r '.errors + .failed' "$json")))
  done
  R[$p.p50]=$(median "${p50[@]}")
  R[$p.p99]=$(median "${p99[@]}")
  R[$p.p999]=$(median "${p999[@]}")
  R[$p.max]=$(median "${max[@]}")
  R[$p.lag]=$(median "${lag[@]}")
  R[$p.msgs]="$sent / $received / $errors"
}

for p in $PROXIES; do
  [[ -n ${PORT[$p]:-} ]] || die "unknown proxy $p (known: ${!PORT[*]})"
  CURRENT=$p
  if [[ -n ${SKIP[$p]:-} ]]; then
    log "${LABEL[$p]}: skipped, ${SKIP[$p]}"
    continue
  fi
  log "${LABEL[$p]}: starting"
  if ! start_proxy "$p"; then
    log "${LABEL[$p]}: skipped, ${SKIP[$p]}"
    continue
  fi
  url="ws://127.0.0.1:${PORT[$p]}/echo"
  log "${LABEL[$p]}: routing check"
  if ! measure_routing "$p" "$url"; then
    SKIP[$p]="failed its routing check ($(last_error "$WORK/$p-probe.json.log"))"
    log "${LABEL[$p]}: skipped, ${SKIP[$p]}"
    [[ $p == direct ]] || stop_pid "$PROXY_PID"
    continue
  fi
  log "${LABEL[$p]}: memory with $IDLE_CONNECTIONS idle connections"
  measure_memory "$p" "$url" || R[$p.mem]=failed
  log "${LABEL[$p]}: latency, $LAT_CONNECTIONS connections x $LAT_RATE msg/s"
  measure_latency "$p" "$url" || R[$p.p50]=failed
  for size in $TP_SIZES; do
    log "${LABEL[$p]}: CPU per message at saturation, $size B"
    measure_cpu "$p" "$url" "$size" || R[$p.cpu$size]=failed
  done
  [[ $p == direct ]] || stop_pid "$PROXY_PID"
done

# --------------------------------------------------------------- table --

rows=(
  "p50|round trip p50 (µs)|low|%.0f"
  "p99|round trip p99 (µs)|low|%.0f"
  "p999|round trip p99.9 (µs)|low|%.0f"
  "max|round trip max (µs)|low|%.0f"
  "msgs|latency runs: sent / received / errors|-|"
  "lag|latency runs: load generator late by, p99 (µs)|-|%.0f"
)
for size in $TP_SIZES; do
  rows+=("rate$size|echoed msg/s at saturation, $(size_label "$size")|high|%.0f")
  rows+=("cpu$size|CPU per message, $(size_label "$size") (µs)|low|%.2f")
done
rows+=(
  "mem|memory per idle connection (KiB)|low|%.1f"
  "routing|keys per backend (of 32)|-|"
  "other|other processes' CPU during the runs, most (% of one CPU)|-|"
)

table=$WORK/table.md
{
  echo "### Proxies compared, $(date -u '+%Y-%m-%d')"
  echo
  machine_description
  printf ' nginx %s, HAProxy %s.\n' \
    "$(nginx -v 2>&1 | sed 's|.*nginx/||' || echo '?')" \
    "$(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}' || echo '?')"
  echo
  printf 'Settings: proxy on CPU %s; load generator and both echo backends on CPU %s. ' "$PROXY_CPU" "$LOAD_CPU"
  printf 'Latency: %s connections, %s msg/s in all of %s, %s s warmup + %s s measured, median of %s runs. ' \
    "$LAT_CONNECTIONS" "$LAT_RATE" "$(size_label "$LAT_SIZE")" "$WARMUP" "$DURATION" "$LAT_RUNS"
  printf 'Saturation: %s connections × %s messages in flight, %s s per size. ' \
    "$TP_CONNECTIONS" "$TP_WINDOW" "$TP_DURATION"
  printf 'Memory: %s idle connections, RSS %s s after they opened.\n' "$IDLE_CONNECTIONS" "$IDLE_SETTLE"
  echo
  proxy_table "${rows[@]}"
  echo
  echo "The last row is CPU time the machine spent outside the measurement (a build, say) while a proxy's runs went on; more than a few percent means that column's latencies are disturbed."
  if [[ " $PROXIES " == *" direct "* ]]; then
    echo "*direct*: the client talks to echo backend b1 itself; its CPU and memory rows are b1's own, what the echo costs, not a proxy's."
  fi
  for p in $PROXIES; do
    if [[ -n ${SKIP[$p]:-} ]]; then echo "*${LABEL[$p]}* was skipped: ${SKIP[$p]}."; fi
  done
} >"$table"

echo
cat "$table"
if [[ $OUT != - ]]; then
  write_section "$OUT" compare "$table" 'bash e2e/bench/compare.sh'
  log "wrote the table to $OUT"
fi
