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
