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

cat >"$WORK/ringway.yaml" <<EOF
listener: {address: 127.0.0.1:${PORT[ringway]}}
admin: {address: 127.0.0.1:19091}
routes:
  - name: echo
    pathPrefix: /
    key: {source: Query, name: room}
    missingKey: Random
    backends: [127.0.0.1:${BACKEND_PORTS[0]}, 127.0.0.1:${BACKEND_PORTS[1]}]
connections:
  heartbeat: {intervalSeconds: 20, timeoutSeconds: 10}
  idleTimeoutSeconds: 600
  maxConnections: 19000
runtime: {workerThreads: 1}
EOF

mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
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

cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
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

B1_PID=
BACKEND_PIDS=()
for i in 0 1; do
  start_bg "echo-b$((i + 1))" "$LOAD_CPU" "$BIN/ringway-echo" \
    --listen "127.0.0.1:${BACKEND_PORTS[i]}" --id "b$((i + 1))" --workers 1
  [[ -z $B1_PID ]] && B1_PID=$LAST_PID
  BACKEND_PIDS+=("$LAST_PID")
  wait_listening "127.0.0.1:${BACKEND_PORTS[i]}" "$LAST_PID" 10 ||
    die "echo backend b$((i + 1)) did not start: $(tail -1 "$WORK/echo-b$((i + 1)).log")"
done

# ---------------------------------------------------------- measuring --

# load OUT ARGS...: ringway-load on the load CPU, its JSON report into OUT
# and its human lines into OUT.log, printed when it ends. Keeps in
# R[$CURRENT.other] the most CPU (in % of one CPU) that processes outside this
# script's tree used during any of the proxy's runs: the machine is shared,
# and a compiler running meanwhile shows up here before it shows up as
# latency.
load() {
  local out=$1 pid busy0 ours0 busy1 ours1 started other status=0
  shift
  busy0=$(busy_ticks)
  ours0=$(tree_ticks $$)
  started=$(date +%s.%N)
  RUST_BACKTRACE=0 taskset -c "$LOAD_CPU" "$BIN/ringway-load" --threads 1 "$@" --json \
    >"$out" 2>"$out.log" &
  pid=$!
  BENCH_PIDS+=("$pid")
  while alive "$pid"; do sleep 0.2; done
  wait "$pid" || status=$?
  busy1=$(busy_ticks)
  ours1=$(tree_ticks $$)
  other=$(calc '%d' "100 * (($busy1 - $busy0) - ($ours1 - $ours0)) / (($(date +%s.%N) - $started) * $CLK_TCK)")
  ((other >= 0)) || other=0 # tick rounding
  if [[ -z ${R[$CURRENT.other]:-} ]] || ((other > R[$CURRENT.other])); then
    R[$CURRENT.other]=$other
  fi
  sed 's/^/    /' "$out.log" >&2
  return "$status"
}

# last_error LOG: the error a ringway-load run ended with, else its last line.
last_error() {
  { grep -m1 '^Error: ' "$1" || tail -1 "$1"; } 2>/dev/null | sed 's/^Error: //' | cut -c1-200
}

# start_proxy P: starts proxy P and waits for its port; sets PROXY_PID.
start_proxy() {
  local p=$1
  case $p in
    direct)
      PROXY_PID=$B1_PID
      return 0
      ;;
    ringway)
      [[ -x $BIN/ringway-dataplane ]] || { SKIP[ringway]="no ringway-dataplane binary"; return 1; }
      start_bg ringway "$PROXY_CPU" "$BIN/ringway-dataplane" --config "$WORK/ringway.yaml"
      ;;
    nginx)
      start_bg nginx "$PROXY_CPU" nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
      ;;
    haproxy)
      start_bg haproxy "$PROXY_CPU" haproxy -db -f "$WORK/haproxy.cfg"
      ;;
  esac
  PROXY_PID=$LAST_PID
  if ! wait_listening "127.0.0.1:${PORT[$p]}" "$PROXY_PID" 15; then
    SKIP[$p]="did not start: $(tail -1 "$WORK/$p.log" 2>/dev/null | cut -c1-160)"
    stop_pid "$PROXY_PID"
    return 1
  fi
}

# proxy_pids P: the processes whose CPU and memory count for P.
proxy_pids() {
  if [[ $1 == nginx ]]; then with_children "$PROXY_PID"; else echo "$PROXY_PID"; fi
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

# median N...: the median of numbers (the lower middle of an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

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

measure_cpu() {
  local p=$1 url=$2 size=$3 json=$WORK/$1-throughput-$3.json t0 t1 echoed
  # shellcheck disable=SC2046
  t0=$(cpu_ticks $(proxy_pids "$p"))
  load "$json" throughput --url "$url" --connections "$TP_CONNECTIONS" --window "$TP_WINDOW" \
    --size "$size" --duration "$TP_DURATION" || return 1
  # shellcheck disable=SC2046
  t1=$(cpu_ticks $(proxy_pids "$p"))
  echoed=$(jq -r '.echoed_total' "$json")
  ((echoed > 0)) || return 1
  R[$p.rate$size]=$(jq -r '.rate' "$json")
  R[$p.cpu$size]=$(calc '%.2f' "($t1 - $t0) * 1000000 / $CLK_TCK / $echoed")
}

measure_routing() {
  local p=$1 url=$2 json=$WORK/$1-probe.json
  load "$json" probe --url "$url" --keys 32 --repeat 2 || return 1
  R[$p.routing]=$(jq -r '([.keys_per_backend | to_entries[] | "\(.key) \(.value)"] | join(" / "))
    + (if .sticky then ", sticky" else ", NOT sticky" end)' "$json")
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

size_label() {
  local b=$1
  if ((b >= 1048576 && b % 1048576 == 0)); then echo "$((b / 1048576)) MiB"
  elif ((b >= 1024 && b % 1024 == 0)); then echo "$((b / 1024)) KiB"
  else echo "$b B"; fi
}

is_number() { [[ $1 =~ ^-?[0-9]+([.][0-9]+)?$ ]]; }

# cell P METRIC FORMAT: a result as printed in the table.
cell() {
  local v=${R[$1.$2]:-}
  if [[ -n ${SKIP[$1]:-} ]]; then echo "skipped"
  elif [[ -z $v ]]; then echo "—"
  elif is_number "$v" && [[ -n ${3:-} ]]; then calc "$3" "$v"
  else echo "$v"; fi
}

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
  header="| |" rule="|---|"
  for p in $PROXIES; do header+=" ${LABEL[$p]} |"; rule+="---:|"; done
  if [[ " $PROXIES " == *" ringway "* ]]; then header+=" Ringway ÷ best peer |"; rule+="---:|"; fi
  echo "$header"
  echo "$rule"
  for row in "${rows[@]}"; do
    IFS='|' read -r metric label better format <<<"$row"
    line="| $label |"
    for p in $PROXIES; do line+=" $(cell "$p" "$metric" "$format") |"; done
    if [[ " $PROXIES " == *" ringway "* ]]; then
      if [[ $better == - ]]; then line+=" |"; else line+=" $(ratio "$metric" "$better") |"; fi
    fi
    echo "$line"
  done
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
