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

# ------------------------------------------------ proxies side by side --
#
# compare.sh and tls.sh run Ringway, nginx and HAProxy one at a time in front
# of the same two ringway-echo backends and measure each the same way. The
# helpers below use the caller's globals: PORT[proxy] (the port each proxy
# listens on), BACKEND_PORTS, PROXY_CPU and LOAD_CPU; they set PROXY_PID,
# B1_PID and BACKEND_PIDS, and keep results in R[proxy.metric], why a proxy
# has none in SKIP[proxy], and its name in LABEL[proxy]; CURRENT is the proxy
# being measured. A ringway-load option given by environment (for instance
# RINGWAY_LOAD_CA_FILE for wss://) applies to every run.

# write_ringway_config LISTENER: $WORK/ringway.yaml, one worker thread,
# routing the `room` query parameter over both backends, with LISTENER (its
# YAML line, `listener: {address: ...}`).
write_ringway_config() {
  cat >"$WORK/ringway.yaml" <<EOF
$1
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
}

# write_nginx_config SERVER: $WORK/nginx/nginx.conf, one worker, hashing
# `room` consistently over both backends; SERVER is the server block's
# `listen` directive and what goes with it.
write_nginx_config() {
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
    $1
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

# write_haproxy_config BIND: $WORK/haproxy.cfg, one thread, hashing `room`
# consistently over both backends; BIND is the frontend's `bind` line.
write_haproxy_config() {
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
  $1
  default_backend echo
backend echo
  balance url_param room
  hash-type consistent
  server b1 127.0.0.1:${BACKEND_PORTS[0]}
  server b2 127.0.0.1:${BACKEND_PORTS[1]}
EOF
}

# start_echo_backends: the two ringway-echo backends on the load CPU.
start_echo_backends() {
  local i
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
}

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

# measure_memory P URL: R[P.mem], the KiB of resident memory P holds per
# idle connection, with IDLE_CONNECTIONS of them open (from IDLE_SOURCES)
# for IDLE_SETTLE seconds.
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

# measure_cpu P URL SIZE: R[P.cpuSIZE], P's CPU time per message of SIZE
# bytes echoed at saturation (TP_CONNECTIONS x TP_WINDOW for TP_DURATION
# seconds), in microseconds, and R[P.rateSIZE], the messages echoed per second.
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

# measure_routing P URL: R[P.routing], the keys per backend of 32 keys
# connected twice each, and whether every key reached the same backend.
measure_routing() {
  local p=$1 url=$2 json=$WORK/$1-probe.json
  load "$json" probe --url "$url" --keys 32 --repeat 2 || return 1
  R[$p.routing]=$(jq -r '([.keys_per_backend | to_entries[] | "\(.key) \(.value)"] | join(" / "))
    + (if .sticky then ", sticky" else ", NOT sticky" end)' "$json")
}

# size_label BYTES: 64 B, 4 KiB, 1 MiB.
size_label() {
  local b=$1
  if ((b >= 1048576 && b % 1048576 == 0)); then echo "$((b / 1048576)) MiB"
  elif ((b >= 1024 && b % 1024 == 0)); then echo "$((b / 1024)) KiB"
  else echo "$b B"; fi
}

# is_number V: whether V is a decimal number.
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

# proxy_table ROW...: the Markdown table of the results in R for the proxies
# in PROXIES, a ROW being "metric|label|better|format" (better: low or high,
# or - for no ratio; format: a printf format for numbers), with the
# "Ringway ÷ best peer" column when Ringway is among them.
proxy_table() {
  local header="| |" rule="|---|" p row metric label better format line
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
