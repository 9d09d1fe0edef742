# Helpers shared by the benchmark scripts in e2e/bench/. Sourced, not run:
#
#   source "$(dirname "$0")/common.sh"
#
# Every process a script starts goes through `start_bg`, which remembers its
# pid; the EXIT trap set by `bench_init` stops exactly those processes, so a
# script that fails or is interrupted leaves nothing running.

# shellcheck shell=bash
# The variables set here are used by the scripts that source this file.
# shellcheck disable=SC2034
# The functions for proxies side by side read the caller's associative
# arrays (PORT, LABEL, SKIP, R), which shellcheck cannot see from here.
# shellcheck disable=SC2004,SC2153,SC2154

BENCH_PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# bench_init NAME: the repository root as the working directory, the shared
# build directory, a scratch directory ($WORK) and the cleanup trap.
bench_init() {
  local name=$1
  ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  cd "$ROOT" || exit
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ringway/target}
  BIN=$CARGO_TARGET_DIR/release
  WORK=$(mktemp -d "/tmp/ringway-$name.XXXXXX")
  CLK_TCK=$(getconf CLK_TCK)
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

bench_cleanup() {
  local status=$?
  stop_all
  if [[ ${KEEP_WORK:-0} == 1 || $status != 0 ]]; then
    log "logs and raw results kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}

# ensure_packages PKG...: installs the Debian packages that are missing,
# without letting their init scripts start the system services.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]} from Debian"
  local guard=/usr/sbin/policy-rc.d added_guard=0
  if [[ ! -e $guard ]]; then
    # Debian's documented switch: exit 101 means "do not start services".
    printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod +x "$guard" && added_guard=1
  fi
  local status=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
    >"$WORK/apt.log" 2>&1 || status=$?
  ((added_guard)) && rm -f "$guard"
  ((status == 0)) || { tail -20 "$WORK/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
}

# start_bg NAME CPU CMD...: runs CMD pinned to CPU, output in $WORK/NAME.log;
# sets LAST_PID. taskset execs CMD, so the pid is CMD's own.
start_bg() {
  local name=$1 cpu=$2
  shift 2
  taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  BENCH_PIDS+=("$LAST_PID")
}

# alive PID: whether PID runs (a child that exited but was not reaped yet
# is a zombie, which kill -0 still finds).
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
  local pid=$1 i
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${BENCH_PIDS[@]}"; do
    stop_pid "$pid"
  done
  BENCH_PIDS=()
}

# wait_listening HOST:PORT PID SECONDS: until HOST:PORT accepts a TCP
# connection; fails when PID exits first or time runs out.
wait_listening() {
  local host=${1%:*} port=${1##*:} pid=$2 deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    alive "$pid" || return 1
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

# with_children PID: PID and its child processes (nginx's workers).
with_children() {
  echo "$1"
  pgrep -P "$1" || true
}

# cpu_ticks PID...: user + system CPU time of the processes, in clock ticks.
cpu_ticks() {
  local pid total=0 ticks
  for pid in "$@"; do
    # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
    ticks=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || ticks=0
    total=$((total + ${ticks:-0}))
  done
  echo "$total"
}

# tree_ticks PID: CPU time, in clock ticks, of PID and every process under
# it, those that already ended included: a child's time moves into its
# parent's cutime and cstime when it is reaped, and bash reaps at once.
tree_ticks() {
  awk -v root="$1" '
    {
      # "pid (comm) state ppid ...": split after the last ") ", since comm
      # may hold spaces.
      n = split($0, parts, ") ")
      split(parts[n], f, " ")
      ppid[$1] = f[2]
      ticks[$1] = f[12] + f[13] + f[14] + f[15]
    }
    END {
      queue[1] = root; head = 1; tail = 1; seen[root] = 1
      while (head <= tail) {
        p = queue[head++]; sum += ticks[p]
        for (c in ppid) if (ppid[c] == p && !(c in seen)) { seen[c] = 1; queue[++tail] = c }
      }
      print sum + 0
    }' /proc/[0-9]*/stat 2>/dev/null
}

# busy_ticks: CPU time the whole machine used so far, in clock ticks (user,
# nice, system, irq, softirq and steal in /proc/stat).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# rss_kib PID...: resident memory of the processes, summed, in KiB.
rss_kib() {
  local pid total=0 rss
  for pid in "$@"; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || rss=0
    total=$((total + ${rss:-0}))
  done
  echo "$total"
}

# calc FORMAT EXPRESSION: floating-point arithmetic (and comparisons, as 1
# or 0) through awk, printed with a printf FORMAT ("%.2f", "%d"). The
# parentheses keep awk from reading ">" as a redirection to a file.
calc() { awk "BEGIN { printf \"$1\", ($2) }" </dev/null; }

# machine_description: one Markdown paragraph on what ran the benchmark.
machine_description() {
  local cpu commit
  cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if ! git -C "$ROOT" diff --quiet HEAD 2>/dev/null; then commit="$commit + uncommitted changes"; fi
  printf 'Machine: %s CPUs (%s), %s GiB of memory, Linux %s; Ringway at %s; %s.' \
    "$(nproc)" "${cpu:-unknown CPU}" \
    "$(awk '/^MemTotal:/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)" \
    "$(uname -r)" "$commit" "$(date -u '+%Y-%m-%d %H:%M UTC')"
}

# write_section FILE NAME BLOCK [RERUN]: creates FILE (naming the RERUN command)
# when it does not exist, then puts the contents of the file BLOCK between
# "<!-- NAME:begin -->" and "<!-- NAME:end -->" in FILE, keeping everything
# outside the markers; appends the markers when FILE has none.
write_section() {
  local file=$1 name=$2 block=$3 rerun=${4:-}
  local begin="<!-- $name:begin -->" end="<!-- $name:end -->"
  if [[ ! -f $file ]]; then
    # shellcheck disable=SC2016 # the backquotes are Markdown
    printf '# Benchmarks\n\nRerun: `%s`.\n' "$rerun" >"$file"
  fi
  if ! grep -qF "$begin" "$file" || ! grep -qF "$end" "$file"; then
    printf '\n%s\n%s\n' "$begin" "$end" >>"$file"
  fi
  awk -v begin="$begin" -v end="$end" -v block="$block" '
    $0 == begin { print; while ((getline line < block) > 0) print line; skipping = 1; next }
    $0 == end { skipping = 0 }
    !skipping { print }
  ' "$file" >"$file.new"
  mv "$file.new" "$file"
}

# set_sysctl NAME VALUE: sets a kernel setting for the run, remembering the
# value it had; restore_sysctls puts back every one set so, last first.
BENCH_SYSCTLS=()
set_sysctl() {
  local name=$1 value=$2 was
  was=$(sysctl -n "$name" | tr '\t' ' ')
  [[ $was == "$value" ]] && return 0
  sysctl -q -w "$name=$value" >/dev/null || die "could not set $name=$value (run as root)"
  BENCH_SYSCTLS+=("$name=$was")
  log "sysctl $name: $was -> $value (restored at the end)"
}

restore_sysctls() {
  local i
  for ((i = ${#BENCH_SYSCTLS[@]} - 1; i >= 0; i--)); do
    sysctl -q -w "${BENCH_SYSCTLS[i]}" >/dev/null || log "could not restore ${BENCH_SYSCTLS[i]}"
  done
  BENCH_SYSCTLS=()
}

# meminfo_kib FIELD: a line of /proc/meminfo (MemAvailable, Slab,
# SUnreclaim, ...), in KiB.
meminfo_kib() { awk -v f="$1:" '$1 == f {print $2}' /proc/meminfo; }

# tcp_mem_pages: the memory TCP has charged for its sockets' buffers, in
# pages (the "mem" of /proc/net/sockstat, what net.ipv4.tcp_mem bounds).
tcp_mem_pages() { awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat; }

# ------------------------------------------------------ one URL under load --
# Used by compare.sh and uring.sh: the echo backends, a Ringway config, and
# latency and saturation runs against one URL. They read the caller's
# settings: LOAD_CPU (a taskset CPU list) and LOAD_THREADS [1] for the load
# generator, LAT_* and TP_* (listed in compare.sh), CURRENT (the column being
# measured), and a function `proxy_pids KEY` that prints the processes whose
# CPU counts for that column; they write results into R[KEY.metric].

# load_settings: the latency and saturation settings, from the environment
# or their defaults (listed in compare.sh).
load_settings() {
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
}

# start_echo_backends CPU PORT...: one ringway-echo with one worker per port,
# pinned to CPU; sets B1_PID (the first) and BACKEND_PIDS.
start_echo_backends() {
  local cpu=$1 i=0 port
  shift
  B1_PID=
  BACKEND_PIDS=()
  for port in "$@"; do
    i=$((i + 1))
    start_bg "echo-b$i" "$cpu" "$BIN/ringway-echo" --listen "127.0.0.1:$port" --id "b$i" --workers 1
    [[ -z $B1_PID ]] && B1_PID=$LAST_PID
    BACKEND_PIDS+=("$LAST_PID")
    wait_listening "127.0.0.1:$port" "$LAST_PID" 10 ||
      die "echo backend b$i did not start: $(tail -1 "$WORK/echo-b$i.log")"
  done
}

# write_ringway_config FILE PORT ADMIN_PORT WORKERS BACKEND_PORT...: a
# standalone data plane on PORT that hashes the `room` query parameter over
# the backends, with WORKERS runtime threads; over TLS when TLS_CERT and
# TLS_KEY name a certificate and its key. CONNECTIONS replaces the
# `connections` settings (a YAML flow mapping's entries; by default a
# heartbeat every 20 s, 10 min idle timeout, 19,000 connections) and DRAIN,
# when set, gives the `drain` settings the same way.
write_ringway_config() {
  local file=$1 port=$2 admin=$3 workers=$4 backends listener
  local connections=${CONNECTIONS:-"heartbeat: {intervalSeconds: 20, timeoutSeconds: 10}, idleTimeoutSeconds: 600, maxConnections: 19000"}
  shift 4
  backends=$(printf '127.0.0.1:%s, ' "$@")
  listener="address: 127.0.0.1:$port"
  mkdir -p "$(dirname "$file")"
  [[ -n ${TLS_CERT:-} ]] && listener+=", tls: {certFile: $TLS_CERT, keyFile: $TLS_KEY}"
  cat >"$file" <<EOT
listener: {$listener}
admin: {address: 127.0.0.1:$admin}
routes:
  - name: echo
    pathPrefix: /
    key: {source: Query, name: room}
    missingKey: Random
    backends: [${backends%, }]
connections: {$connections}
runtime: {workerThreads: $workers}
EOT
  if [[ -n ${DRAIN:-} ]]; then echo "drain: {$DRAIN}" >>"$file"; fi
}

# load OUT ARGS...: ringway-load on the load CPUs, its JSON report into OUT
# and its human lines into OUT.log, printed when it ends. Keeps in
# R[$CURRENT.other] the most CPU (in % of one CPU) that processes outside this
# script's tree used during any of the column's runs: the machine is shared,
# and a compiler running meanwhile shows up here before it shows up as
# latency.
load() {
  local out=$1 pid busy0 ours0 busy1 ours1 started other status=0
  shift
  busy0=$(busy_ticks)
  ours0=$(tree_ticks $$)
  started=$(date +%s.%N)
  RUST_BACKTRACE=0 taskset -c "$LOAD_CPU" "$BIN/ringway-load" --threads "${LOAD_THREADS:-1}" "$@" --json \
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

# median N...: the median of numbers (the lower middle of an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# measure_latency KEY URL: LAT_RUNS latency runs; each result is the median
# of the runs', so that one run disturbed by a stall does not make the table.
measure_latency() {
  local key=$1 url=$2 run json
  local -a p50=() p99=() p999=() max=() lag=()
  local sent=0 received=0 errors=0
  for ((run = 1; run <= LAT_RUNS; run++)); do
    json=$WORK/$key-latency-$run.json
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
  R[$key.p50]=$(median "${p50[@]}")
  R[$key.p99]=$(median "${p99[@]}")
  R[$key.p999]=$(median "${p999[@]}")
  R[$key.max]=$(median "${max[@]}")
  R[$key.lag]=$(median "${lag[@]}")
  R[$key.msgs]="$sent / $received / $errors"
}

# thread_ticks PID...: "TID TICKS" for every thread of the processes (user +
# system CPU time, in clock ticks).
thread_ticks() {
  local pid
  for pid in "$@"; do
    awk '{ n = split($0, parts, ") "); split(parts[n], f, " "); print $1, f[12] + f[13] }' \
      "/proc/$pid"/task/*/stat 2>/dev/null || true
  done
}

# measure_cpu KEY URL SIZE: TP_RUNS [1] closed-loop saturation runs of
# SIZE-byte messages; each result is the median of the runs'.
# R[KEY.rateSIZE]: messages echoed per second; R[KEY.cpuSIZE]: the
# processes' CPU time per message echoed, in µs; R[KEY.coresSIZE]: their CPU
# time over the run's, in CPUs; R[KEY.splitSIZE]: the shares of that time of
# the two busiest threads (or processes), in %, in the last run.
measure_cpu() {
  local key=$1 url=$2 size=$3 run json t0 t1 echoed started
  local -a pids rate=() cpu=() cores=()
  mapfile -t pids < <(proxy_pids "$key")
  for ((run = 1; run <= ${TP_RUNS:-1}; run++)); do
    json=$WORK/$key-throughput-$size-$run.json
    t0=$(cpu_ticks "${pids[@]}")
    thread_ticks "${pids[@]}" >"$json.threads0"
    started=$(date +%s.%N)
    load "$json" throughput --url "$url" --connections "$TP_CONNECTIONS" --window "$TP_WINDOW" \
      --size "$size" --duration "$TP_DURATION" || return 1
    t1=$(cpu_ticks "${pids[@]}")
    thread_ticks "${pids[@]}" >"$json.threads1"
    echoed=$(jq -r '.echoed_total' "$json")
    ((echoed > 0)) || return 1
    rate+=("$(jq -r '.rate' "$json")")
    cpu+=("$(calc '%.4f' "($t1 - $t0) * 1000000 / $CLK_TCK / $echoed")")
    cores+=("$(calc '%.4f' "($t1 - $t0) / $CLK_TCK / ($(date +%s.%N) - $started)")")
  done
  R[$key.rate$size]=$(median "${rate[@]}")
  R[$key.cpu$size]=$(calc '%.2f' "$(median "${cpu[@]}")")
  R[$key.cores$size]=$(calc '%.2f' "$(median "${cores[@]}")")
  R[$key.split$size]=$(awk 'NR == FNR { before[$1] = $2; next } { print $2 - before[$1] }' \
    "$json.threads0" "$json.threads1" | sort -rn | awk '
      { used[NR] = $1; total += $1 }
      END { if (total > 0) printf "%.0f / %.0f", 100 * used[1] / total, 100 * used[2] / total; else print "—" }')
}

# measure_sizes KEY URL WHAT: measure_cpu for each size in TP_SIZES, logged
# as WHAT's; a size whose runs fail is marked failed.
measure_sizes() {
  local size
  for size in $TP_SIZES; do
    log "$3: CPU per message at saturation, $(size_label "$size")"
    measure_cpu "$1" "$2" "$size" || R[$1.cpu$size]=failed
  done
}

# ---------------------------------------------------------------- tables --

size_label() {
  local b=$1
  if ((b >= 1048576 && b % 1048576 == 0)); then echo "$((b / 1048576)) MiB"
  elif ((b >= 1024 && b % 1024 == 0)); then echo "$((b / 1024)) KiB"
  else echo "$b B"; fi
}

is_number() { [[ $1 =~ ^-?[0-9]+([.][0-9]+)?$ ]]; }

# cell KEY METRIC [FORMAT]: R[KEY.METRIC] as printed in a table, "skipped"
# when SKIP[KEY] says why there is none.
cell() {
  local v=${R[$1.$2]:-}
  if [[ -n ${SKIP[$1]:-} ]]; then echo "skipped"
  elif [[ -z $v ]]; then echo "—"
  elif is_number "$v" && [[ -n ${3:-} ]]; then calc "$3" "$v"
  else echo "$v"; fi
}

# load_rows: sets the array `rows` to the table rows of the latency and saturation
# results, "metric|label|better|format" (better: low, high, or - for none).
load_rows() {
  local size
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
}

# ------------------------------------------------ proxies side by side --
# Used by compare.sh and tls.sh: the same job done by Ringway, nginx and
# HAProxy (and "direct", the first echo backend itself), each started from
# its config in $WORK/W/ (W: its number of workers) and measured into R[KEY.*],
# and the table that compares them. They read the caller's PORT, LABEL,
# PROXIES, PROXY_CPU, SKIP, IDLE_CONNECTIONS, IDLE_SETTLE and IDLE_SOURCES.

# write_nginx_config DIR WORKERS LISTEN: DIR/nginx/nginx.conf, nginx with
# WORKERS worker processes proxying WebSockets to the backends
# (BACKEND_PORTS), hashing the `room` query parameter; LISTEN is the server's
# `listen` directive and any directives that go with it (TLS).
write_nginx_config() {
  local dir=$1 workers=$2 listen=$3
  mkdir -p "$dir/nginx/tmp"
  cat >"$dir/nginx/nginx.conf" <<EOF
worker_processes $workers;
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
    $listen
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
}

# write_haproxy_config DIR WORKERS BIND: DIR/haproxy.cfg, HAProxy with
# WORKERS threads and the same routing; BIND is the frontend's `bind` line.
write_haproxy_config() {
  local dir=$1 workers=$2 bind=$3
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread $workers
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  timeout http-request 10s
frontend ws
  $bind
  default_backend echo
backend echo
  balance url_param room
  hash-type consistent
  server b1 127.0.0.1:${BACKEND_PORTS[0]}
  server b2 127.0.0.1:${BACKEND_PORTS[1]}
EOF
}

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

# measure_memory KEY URL [EVERY]: R[KEY.mem], the proxy's RSS per connection
# with IDLE_CONNECTIONS idle connections open, IDLE_SETTLE s after the last
# opened, less its RSS before it held any. With EVERY (seconds), R[KEY.mem_used] instead: each
# connection sends a message every EVERY seconds and checks its echo, and the
# RSS is read once every connection had time to send (EVERY + IDLE_SETTLE s),
# between its messages: what a connection that carries messages holds.
measure_memory() {
  local p=$1 url=$2 every=${3:-0} json lpid before after opened echoed deadline settle metric=mem
  local -a echo=()
  settle=$IDLE_SETTLE
  if [[ $every != 0 ]]; then
    metric=mem_used echo=(--echo-every "$every") settle=$(calc '%.1f' "$every + $IDLE_SETTLE")
  fi
  json=$WORK/$p-$metric.json
  sleep 1
  # Against the proxy's RSS before its first connections: a second run
  # reuses the memory the first freed, and its own growth would be nothing.
  if [[ -z ${R[$p.rss0]:-} ]]; then
    # shellcheck disable=SC2046
    R[$p.rss0]=$(rss_kib $(proxy_pids "$p"))
  fi
  before=${R[$p.rss0]}
  RUST_BACKTRACE=0 taskset -c "$LOAD_CPU" "$BIN/ringway-load" --threads 1 idle --url "$url" \
    --connections "$IDLE_CONNECTIONS" --hold "$(calc '%.0f' "$settle + 5")" --sources "$IDLE_SOURCES" \
    "${echo[@]}" --json >"$json" 2>"$json.log" &
  lpid=$!
  BENCH_PIDS+=("$lpid")
  deadline=$((SECONDS + IDLE_CONNECTIONS / 1000 + 30))
  until grep -q 'holding them up to' "$json.log"; do
    if ! alive "$lpid" || ((SECONDS > deadline)); then
      log "  idle connections did not open: $(last_error "$json.log")"
      stop_pid "$lpid"
      return 1
    fi
    sleep 0.2
  done
  sleep "$settle"
  # shellcheck disable=SC2046
  after=$(rss_kib $(proxy_pids "$p"))
  wait "$lpid" || true
  sed 's/^/    /' "$json.log" >&2
  opened=$(jq -r '.opened // 0' "$json" 2>/dev/null || echo 0)
  ((opened > 0)) || return 1
  if [[ $every != 0 ]]; then
    echoed=$(jq -r '.echo.echoed // 0' "$json")
    ((echoed >= opened)) || { log "  only $echoed echoes for $opened connections"; return 1; }
  fi
  R[$p.$metric]=$(calc '%.1f' "($after - $before) / $opened")
}

measure_routing() {
  local key=$1 url=$2 json=$WORK/$1-probe.json
  load "$json" probe --url "$url" --keys 32 --repeat 2 || return 1
  R[$key.routing]=$(jq -r '([.keys_per_backend | to_entries[] | "\(.key) \(.value)"] | join(" / "))
    + (if .sticky then ", sticky" else ", NOT sticky" end)' "$json")
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
