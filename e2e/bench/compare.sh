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
  mkdir -p "$dir/nginx/tmp"
  write_ringway_config "$dir/ringway.yaml" "${PORT[ringway]}" 19091 "$w" "${BACKEND_PORTS[@]}"
  cat >"$dir/nginx/nginx.conf" <<EOF
worker_processes $w;
daemon off;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path tmp/body;
  proxy_temp_path tmp/proxy;
  fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi;
  scgi_temp_path tmp/scgi;
  upstream echo {
    hash \$arg_room consistent;
    server 127.0.0.1:${BACKEND_PORTS[0]};
    server 127.0.0.1:${BACKEND_PORTS[1]};
  }
  server {
    listen 127.0.0.1:${PORT[nginx]} backlog=4096;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host \$host;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
EOF
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread $w
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  timeout http-request 10s
frontend ws
  bind 127.0.0.1:${PORT[haproxy]}
  default_backend echo
backend echo
  balance url_param room
  hash-type consistent
  server b1 127.0.0.1:${BACKEND_PORTS[0]}
  server b2 127.0.0.1:${BACKEND_PORTS[1]}
EOF
}

for w in $WORKER_COUNTS; do write_configs "$w"; done
start_echo_backends "$LOAD_CPU" "${BACKEND_PORTS[@]}"

# ---------------------------------------------------------- measuring --

# start_proxy P W: starts proxy P with W workers and waits for its port;
# sets PROXY_PID.
start_proxy() {
  local p=$1 dir=$WORK/$2
  case $p in
    direct)
      PROXY_PID=$B1_PID
      return 0
      ;;
    ringway)
      [[ -x $BIN/ringway-dataplane ]] || { SKIP[ringway]="no ringway-dataplane binary"; return 1; }
      start_bg ringway "$PROXY_CPU" "$BIN/ringway-dataplane" --config "$dir/ringway.yaml"
      ;;
    nginx)
      start_bg nginx "$PROXY_CPU" nginx -p "$dir/nginx/" -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log"
      ;;
    haproxy)
      start_bg haproxy "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg"
      ;;
  esac
  PROXY_PID=$LAST_PID
  if ! wait_listening "127.0.0.1:${PORT[$p]}" "$PROXY_PID" 15; then
    SKIP[$p]="did not start: $(tail -1 "$WORK/$p.log" 2>/dev/null | cut -c1-160)"
    stop_pid "$PROXY_PID"
    return 1
  fi
}

# proxy_pids KEY: the processes whose CPU and memory count for the column
# KEY (P, or P-wW with CORES).
proxy_pids() {
  if [[ $1 == nginx* ]]; then with_children "$PROXY_PID"; else echo "$PROXY_PID"; fi
}

measure_memory() {
  local p=$1 url=$2 json=$WORK/$1-idle.json lpid before after opened deadline
  sleep 1
  # shellcheck disable=SC2046
  before=$(rss_kib $(proxy_pids "$p"))
  RUST_BACKTRACE=0 taskset -c "$LOAD_CPU" "$BIN/ringway-load" --threads 1 idle --url "$url" \
    --connections "$IDLE_CONNECTIONS" --hold $((IDLE_SETTLE + 5)) --sources "$IDLE_SOURCES" \
    --json >"$json" 2>"$WORK/$p-idle.log" &
  lpid=$!
  BENCH_PIDS+=("$lpid")
  deadline=$((SECONDS + IDLE_CONNECTIONS / 1000 + 30))
  until grep -q 'holding them up to' "$WORK/$p-idle.log"; do
    if ! alive "$lpid" || ((SECONDS > deadline)); then
      log "  idle connections did not open: $(last_error "$WORK/$p-idle.log")"
      stop_pid "$lpid"
      return 1
    fi
    sleep 0.2
  done
  sleep "$IDLE_SETTLE"
  # shellcheck disable=SC2046
  after=$(rss_kib $(proxy_pids "$p"))
  wait "$lpid" || true
  sed 's/^/    /' "$WORK/$p-idle.log" >&2
  opened=$(jq -r '.opened // 0' "$json" 2>/dev/null || echo 0)
  ((opened > 0)) || return 1
  R[$p.mem]=$(calc '%.1f' "($after - $before) / $opened")
  R[$p.mem_opened]=$opened
}

measure_routing() {
  local key=$1 url=$2 json=$WORK/$1-probe.json
  load "$json" probe --url "$url" --keys 32 --repeat 2 || return 1
  R[$key.routing]=$(jq -r '([.keys_per_backend | to_entries[] | "\(.key) \(.value)"] | join(" / "))
    + (if .sticky then ", sticky" else ", NOT sticky" end)' "$json")
}

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

# ratio METRIC BETTER: Ringway's result over the best of nginx and HAProxy
# ("low" or "high" is better).
ratio() {
  local metric=$1 better=$2 best='' best_name='' peer v
  local mine=${R[ringway.$metric]:-}
  if [[ -n ${SKIP[ringway]:-} ]] || ! is_number "$mine"; then
    echo "—"
    return
  fi
  for peer in nginx haproxy; do
    v=${R[$peer.$metric]:-}
    if [[ -n ${SKIP[$peer]:-} ]] || ! is_number "$v"; then continue; fi
    if [[ -z $best ]] ||
      { [[ $better == low ]] && (($(calc '%d' "$v < $best"))); } ||
      { [[ $better == high ]] && (($(calc '%d' "$v > $best"))); }; then
      best=$v best_name=${LABEL[$peer]}
    fi
  done
  if [[ -z $best ]] || (($(calc '%d' "$best <= 0"))); then
    echo "—"
    return
  fi
  echo "$(calc '%.2f' "$mine / $best")× $best_name"
}

load_rows
rows+=(
  "mem|memory per idle connection (KiB)|low|%.1f"
  "routing|keys per backend (of 32)|-|"
  "other|other processes' CPU during the runs, most (% of one CPU)|-|"
)

# peer_versions: the sentence naming the peers' versions.
peer_versions() {
  printf ' nginx %s, HAProxy %s.\n' \
    "$(nginx -v 2>&1 | sed 's|.*nginx/||' || echo '?')" \
    "$(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}' || echo '?')"
}

# proxy_table ROW...: a table with a column per proxy and one per ROW
# ("metric|label|better|format", better: low, high or - for no ratio).
proxy_table() {
  local header="| |" rule="|---|" row metric label better format line p
  for p in $PROXIES; do header+=" ${LABEL[$p]} |"; rule+="---:|"; done
  if [[ " $PROXIES " == *" ringway "* ]]; then header+=" Ringway ÷ best peer |"; rule+="---:|"; fi
  echo "$header"
  echo "$rule"
  for row in "$@"; do
    IFS='|' read -r metric label better format <<<"$row"
    line="| $label |"
    for p in $PROXIES; do line+=" $(cell "$p" "$metric" "$format") |"; done
    if [[ " $PROXIES " == *" ringway "* ]]; then
      if [[ $better == - ]]; then line+=" |"; else line+=" $(ratio "$metric" "$better") |"; fi
    fi
    echo "$line"
  done
}

skipped_lines() {
  local p
  for p in $PROXIES; do
    if [[ -n ${SKIP[$p]:-} ]]; then echo "*${LABEL[$p]}* was skipped: ${SKIP[$p]}."; fi
  done
}

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
  printf 'Memory: %s idle connections, RSS %s s after they opened.\n' "$IDLE_CONNECTIONS" "$IDLE_SETTLE"
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
