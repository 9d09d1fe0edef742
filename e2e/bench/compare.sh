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
#     open, less RSS before they opened, divided by their number; and again
#     with connections that each echo a message every USED_EVERY seconds;
#   - latency: round trips at a fixed rate (open loop), p50 to max;
#   - CPU per message: the proxy's CPU time (utime + stime, all its
#     processes) during a closed-loop saturation run, divided by the messages
#     echoed, for each size in TP_SIZES.
# A proxy that does not start (Ringway's data plane before it runs) is
# skipped and the table says why.
#
# With CORES=2 it asks instead how each proxy scales from one worker to two
# (`runtime: {workerThreads}`, `worker_processes`, `nbthread`), and writes
# that table between <!-- cores:begin --> and <!-- cores:end -->:
#
#   CORES=2 bash e2e/bench/compare.sh
#
# The proxies, the load generator (CORES threads) and the backends then all
# run on CPUs 0 to CORES-1, unpinned within them, and each proxy runs with one
# worker and with CORES workers in turn; only the saturation runs are made,
# and each reports, besides msg/s and CPU per message, how many CPUs the proxy
# kept busy and how its CPU time split between its two busiest threads or
# processes. docs/benchmarks.md says why a machine whose load generator
# shares the proxy's cores cannot show a proxy's throughput doubling.
#
# Settings, from the environment (defaults in brackets):
#   DURATION [10] WARMUP [3]      latency: measured and warmup seconds, of
#   LAT_RUNS [3]                   runs; the table has the median of each number
#   LAT_CONNECTIONS [1000] LAT_RATE [20000] LAT_SIZE [64]
#   TP_DURATION [10] TP_CONNECTIONS [50] TP_WINDOW [16] TP_SIZES ["64 4096"]
#   TP_RUNS [1; with CORES, 3]   saturation runs per size; the median counts
#   IDLE_CONNECTIONS [5000] IDLE_SETTLE [3]   seconds between open and RSS
#   USED_EVERY [2]   seconds between the messages of the connections whose
#                    memory is measured again while they carry messages
#   PROXIES ["direct ringway nginx haproxy"; with CORES, "ringway nginx haproxy"]
#   PROXY_CPU [0] LOAD_CPU [1] (taskset CPU lists; with CORES, both 0-(CORES-1))
#   CORES [1]   more than 1: the scaling run above
#   LOAD_THREADS [1; with CORES, CORES]   the load generator's threads
#   OUT [docs/benchmarks.md] ("-" to only print the table)
#   KEEP_WORK [0]   1 keeps the configs, logs and raw JSON results
# The defaults finish in about six minutes, plus the release build.
set -euo pipefail
# shellcheck source=e2e/bench/common.sh
source "$(dirname "$0")/common.sh"
bench_init compare

load_settings
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
IDLE_SETTLE=${IDLE_SETTLE:-3}
USED_EVERY=${USED_EVERY:-2}
CORES=${CORES:-1}
OUT=${OUT:-docs/benchmarks.md}
if ((CORES > 1)); then
  (($(nproc) >= CORES)) || die "CORES=$CORES but this machine has $(nproc) CPUs"
  PROXIES=${PROXIES:-"ringway nginx haproxy"}
  PROXY_CPU=${PROXY_CPU:-0-$((CORES - 1))}
  LOAD_CPU=${LOAD_CPU:-0-$((CORES - 1))}
  LOAD_THREADS=${LOAD_THREADS:-$CORES}
  TP_RUNS=${TP_RUNS:-3}
  WORKER_COUNTS="1 $CORES"
else
  PROXIES=${PROXIES:-"direct ringway nginx haproxy"}
  PROXY_CPU=${PROXY_CPU:-0}
  LOAD_CPU=${LOAD_CPU:-1}
  LOAD_THREADS=${LOAD_THREADS:-1}
  TP_RUNS=${TP_RUNS:-1}
  WORKER_COUNTS=1
fi

# Idle connections come from their own source addresses, so that they never
# compete for ports with the TIME_WAIT left by earlier runs on 127.0.0.1.
IDLE_SOURCES=127.0.0.2-127.0.0.9
BACKEND_PORTS=(19001 19002)

declare -A PORT=([direct]=19001 [ringway]=18081 [nginx]=18082 [haproxy]=18083)
declare -A LABEL=([direct]=direct [ringway]=Ringway [nginx]=nginx [haproxy]=HAProxy)
declare -A R=()    # results, R[proxy.metric]
declare -A SKIP=() # why a proxy has no results

if ((CORES == 1 && $(nproc) < 2)); then
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

# write_configs W: each proxy's config with W workers (processes or threads),
# in $WORK/W/.
write_configs() {
  local w=$1 dir=$WORK/$1
  write_ringway_config "$dir/ringway.yaml" "${PORT[ringway]}" 19091 "$w" "${BACKEND_PORTS[@]}"
  write_nginx_config "$dir" "$w" "listen 127.0.0.1:${PORT[nginx]} backlog=4096;"
  write_haproxy_config "$dir" "$w" "bind 127.0.0.1:${PORT[haproxy]}"
}

for w in $WORKER_COUNTS; do write_configs "$w"; done
start_echo_backends "$LOAD_CPU" "${BACKEND_PORTS[@]}"

# ---------------------------------------------------------- measuring --

# measure_proxy P W: starts proxy P with W workers and measures it into
# R[KEY.*] (KEY: P, or P-wW with CORES); fails, with SKIP[P] set, when P
# does not start or routes wrongly.
measure_proxy() {
  local p=$1 w=$2 key url
  key=$(column_key "$p" "$w")
  CURRENT=$key
  log "${LABEL[$p]}: starting with $w worker(s)"
  start_proxy "$p" "$w" || return 1
  url="ws://127.0.0.1:${PORT[$p]}/echo"
  log "${LABEL[$p]}: routing check"
  if ! measure_routing "$key" "$url"; then
    SKIP[$p]="failed its routing check ($(last_error "$WORK/$key-probe.json.log"))"
    [[ $p == direct ]] || stop_pid "$PROXY_PID"
    return 1
  fi
  if ((CORES == 1)); then
    log "${LABEL[$p]}: memory with $IDLE_CONNECTIONS idle connections"
    measure_memory "$key" "$url" || R[$key.mem]=failed
    log "${LABEL[$p]}: memory with $IDLE_CONNECTIONS connections echoing a message every $USED_EVERY s"
    measure_memory "$key" "$url" "$USED_EVERY" || R[$key.mem_used]=failed
    log "${LABEL[$p]}: latency, $LAT_CONNECTIONS connections x $LAT_RATE msg/s"
    measure_latency "$key" "$url" || R[$key.p50]=failed
  fi
  measure_sizes "$key" "$url" "${LABEL[$p]} with $w worker(s)"
  [[ $p == direct ]] || stop_pid "$PROXY_PID"
}

# column_key P W: where the results of P with W workers go in R.
column_key() { if ((CORES == 1)); then echo "$1"; else echo "$1-w$2"; fi; }

for p in $PROXIES; do
  [[ -n ${PORT[$p]:-} ]] || die "unknown proxy $p (known: ${!PORT[*]})"
  # direct is the echo backend itself, with its one worker.
  workers=$WORKER_COUNTS
  [[ $p == direct ]] && workers=1
  for w in $workers; do
    if [[ -z ${SKIP[$p]:-} ]] && measure_proxy "$p" "$w"; then continue; fi
    log "${LABEL[$p]}: skipped, ${SKIP[$p]}"
    break
  done
done

# --------------------------------------------------------------- table --

load_rows
rows+=(
  "mem|memory per idle connection (KiB)|low|%.1f"
  "mem_used|memory per connection that carries messages (KiB)|low|%.1f"
  "routing|keys per backend (of 32)|-|"
  "other|other processes' CPU during the runs, most (% of one CPU)|-|"
)

compare_table() {
  echo "### Proxies compared, $(date -u '+%Y-%m-%d')"
  echo
  machine_description
  peer_versions
  echo
  printf 'Settings: proxy on CPU %s; load generator and both echo backends on CPU %s. ' "$PROXY_CPU" "$LOAD_CPU"
  printf 'Latency: %s connections, %s msg/s in all of %s, %s s warmup + %s s measured, median of %s runs. ' \
    "$LAT_CONNECTIONS" "$LAT_RATE" "$(size_label "$LAT_SIZE")" "$WARMUP" "$DURATION" "$LAT_RUNS"
  printf 'Saturation: %s connections × %s messages in flight, %s s per size%s. ' \
    "$TP_CONNECTIONS" "$TP_WINDOW" "$TP_DURATION" "$( ((TP_RUNS == 1)) || echo ", median of $TP_RUNS runs")"
  printf 'Memory: %s idle connections, RSS %s s after they opened; then %s connections each echoing a message every %s s, RSS %s s after they opened.\n' \
    "$IDLE_CONNECTIONS" "$IDLE_SETTLE" "$IDLE_CONNECTIONS" "$USED_EVERY" "$(calc '%g' "$USED_EVERY + $IDLE_SETTLE")"
  echo
  proxy_table "${rows[@]}"
  echo
  echo "The last row is CPU time the machine spent outside the measurement (a build, say) while a proxy's runs went on; more than a few percent means that column's latencies are disturbed."
  if [[ " $PROXIES " == *" direct "* ]]; then
    echo "*direct*: the client talks to echo backend b1 itself; its CPU and memory rows are b1's own, what the echo costs, not a proxy's."
  fi
  skipped_lines
}

# cores_table: the CORES run: a row per proxy and worker count, then each
# proxy at its most workers, with the ratios to one worker and to the peers.
cores_table() {
  local most=${WORKER_COUNTS##* } p w key size line metric other
  local -a summary=()
  echo "### One worker and $most, $(date -u '+%Y-%m-%d')"
  echo
  machine_description
  peer_versions
  echo
  printf 'Settings: every process on CPUs %s, unpinned within them: the proxy, the load generator (%s threads) and both echo backends (one thread each). ' \
    "$PROXY_CPU" "$LOAD_THREADS"
  printf 'Saturation: %s connections × %s messages in flight, %s s per size and worker count, median of %s runs.\n' \
    "$TP_CONNECTIONS" "$TP_WINDOW" "$TP_DURATION" "$TP_RUNS"
  echo
  line="| proxy | workers |"
  for size in $TP_SIZES; do
    line+=" msg/s, $(size_label "$size") | CPU per message (µs) | CPUs busy | busiest two threads (% of its CPU) |"
  done
  echo "$line"
  line="|---|---:|"
  for size in $TP_SIZES; do line+="---:|---:|---:|---:|"; done
  echo "$line"
  for p in $PROXIES; do
    for w in $WORKER_COUNTS; do
      [[ $p == direct && $w != 1 ]] && continue
      key=$(column_key "$p" "$w")
      line="| ${LABEL[$p]} | $w |"
      for size in $TP_SIZES; do
        line+=" $(cell "$key" "rate$size" %.0f) | $(cell "$key" "cpu$size" %.2f) | $(cell "$key" "cores$size" %.2f) | $(cell "$key" "split$size") |"
      done
      echo "$line"
    done
  done
  echo
  # The summary's columns are the proxies at their most workers.
  for p in $PROXIES; do
    key=$(column_key "$p" "$most")
    other=0
    for w in $WORKER_COUNTS; do
      metric=${R[$(column_key "$p" "$w").other]:-0}
      ((metric > other)) && other=$metric
    done
    R[$p.other]=$other
    for size in $TP_SIZES; do
      R[$p.rate$size]=${R[$key.rate$size]:-}
      R[$p.cpu$size]=${R[$key.cpu$size]:-}
      R[$p.rate_scale$size]=$(scaled "$p" "rate$size")
      R[$p.cpu_scale$size]=$(scaled "$p" "cpu$size")
    done
  done
  for size in $TP_SIZES; do
    summary+=("rate$size|msg/s at saturation, $most workers, $(size_label "$size")|high|%.0f")
    summary+=("rate_scale$size|… ÷ the same with 1 worker|-|%.2f")
    summary+=("cpu$size|CPU per message, $most workers, $(size_label "$size") (µs)|low|%.2f")
    summary+=("cpu_scale$size|… ÷ the same with 1 worker|-|%.2f")
  done
  summary+=("other|other processes' CPU during the runs, most (% of one CPU)|-|")
  proxy_table "${summary[@]}"
  echo
  echo "*CPUs busy*: the proxy's CPU time over the run's time; *busiest two threads*: the shares of the proxy's CPU time taken by its two busiest threads (nginx: processes), which tell whether the second worker carried half the work."
  skipped_lines
}

# scaled P METRIC: P's METRIC with its most workers over with one.
scaled() {
  local one=${R[$(column_key "$1" 1).$2]:-} most=${R[$(column_key "$1" "${WORKER_COUNTS##* }").$2]:-}
  if is_number "$one" && is_number "$most" && (($(calc '%d' "$one > 0"))); then
    calc '%.2f' "$most / $one"
  fi
}

table=$WORK/table.md
if ((CORES > 1)); then
  cores_table >"$table"
  section=cores rerun="CORES=$CORES bash e2e/bench/compare.sh"
else
  compare_table >"$table"
  section=compare rerun='bash e2e/bench/compare.sh'
fi

echo
cat "$table"
if [[ $OUT != - ]]; then
  write_section "$OUT" "$section" "$table" "$rerun"
  log "wrote the table to $OUT"
fi
