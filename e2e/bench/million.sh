#!/usr/bin/env bash
# Holds as many idle WebSocket connections through Ringway as this machine
# allows, up to a million, answers the gateway's heartbeats and echoes a
# sample of them throughout, then drains them all at a paced rate:
#
#   bash e2e/bench/million.sh
#   TOTAL=100000 bash e2e/bench/million.sh   # a tenth, in about 2 minutes
#
# A process may hold 20,000 file descriptors, so the run is made of CELLS
# cells of PER_CELL connections each: one ringway-load idle process dialing
# one data-plane process (two descriptors per connection: at most 9,900)
# that relays to one ringway-echo backend. Each data plane listens on its
# own port (127.0.0.1:20000 + cell) and dials its own backend
# (127.0.0.1:22000 + cell), so no (source, destination) pair needs more
# than PER_CELL of the ~14,000 ephemeral ports connect() gets per
# destination. Every proxied connection is four loopback sockets in this
# one kernel: client, gateway (client side), gateway (backend side), backend.
#
# Memory is the limit. Before it starts anything the script reads
# MemAvailable and fits TOTAL to it (EST_KIB per connection, RESERVE_MIB
# kept free for the rest of the machine), scaling down with a message
# rather than pushing the box into the OOM killer; while connections open it
# stops the run if MemAvailable falls below FLOOR_MIB. It raises
# fs.file-max when the run needs more files than the kernel allows (4 per
# connection) and puts it back at the end.
#
# It reports connections held (and why any failed), connects per second,
# memory per connection of each party (the data planes' RSS, the backends',
# the load generators', the kernel's slab and TCP buffer memory) and the
# machine's in all, the heartbeats answered and connections the gateway
# closed before the drain (a heartbeat timeout would show there), the
# sample's echoes, and after SIGTERM to every data plane: closes with 1001,
# gateway-wide closes per second, how long the drain took. The results go
# to docs/benchmarks.md between <!-- million:begin --> and <!-- million:end -->.
#
# Settings, from the environment (defaults in brackets):
#   TOTAL [1000000]   connections to hold (fitted to the memory available)
#   PER_CELL [9800]   connections per data plane, backend and load generator
#   CONNECT_RATE [3000] new connections per second, all generators together
#                     (at 5,000/s the two CPUs fell behind: 3,333/s, and
#                     7 % of the connections timed out)
#   HEARTBEAT [60] HEARTBEAT_TIMEOUT [30]  the data planes' pings, seconds
#   HOLD [70]         seconds all connections stay open before the drain (at
#                     least one heartbeat: every connection answers a ping
#                     while all are open)
#   ECHO_EVERY [30] ECHO_ONE_IN [100]  one connection in ECHO_ONE_IN sends a
#                     message every ECHO_EVERY seconds and checks its echo
#   DRAIN_RATE [4000] closes per second, gateway-wide (DRAIN_RATE / CELLS
#                     per data plane, over the time that takes plus
#                     DRAIN_SLACK [20] seconds of window: a data plane that
#                     falls behind its pace on busy CPUs sends the rest at
#                     once when the window ends)
#   READ_BUFFER [256] the echo backends' read buffer per connection
#   EST_KIB [32] RESERVE_MIB [4096] FLOOR_MIB [1536]  the memory fit: KiB
#                     per connection, all parties (31 measured at 200,000),
#                     MiB left to the rest of the machine, MiB of
#                     MemAvailable below which the run stops
#   MAX_SECONDS [900] the whole run's bound
#   OUT [docs/benchmarks.md] ("-" to only print)   KEEP_WORK [0]
set -euo pipefail
# shellcheck source=e2e/bench/common.sh
source "$(dirname "$0")/common.sh"
bench_init million

million_exit() {
  local status=$?
  stop_all
  restore_sysctls
  (exit "$status")
  bench_cleanup
}
trap million_exit EXIT

TOTAL=${TOTAL:-1000000}
PER_CELL=${PER_CELL:-9800}
CONNECT_RATE=${CONNECT_RATE:-3000}
HEARTBEAT=${HEARTBEAT:-60}
HEARTBEAT_TIMEOUT=${HEARTBEAT_TIMEOUT:-30}
HOLD=${HOLD:-70}
ECHO_EVERY=${ECHO_EVERY:-30}
ECHO_ONE_IN=${ECHO_ONE_IN:-100}
DRAIN_RATE=${DRAIN_RATE:-4000}
READ_BUFFER=${READ_BUFFER:-256}
EST_KIB=${EST_KIB:-32}
RESERVE_MIB=${RESERVE_MIB:-4096}
FLOOR_MIB=${FLOOR_MIB:-1536}
MAX_SECONDS=${MAX_SECONDS:-900}
DRAIN_SLACK=${DRAIN_SLACK:-20}
OUT=${OUT:-docs/benchmarks.md}

DP_PORT=20000
ADMIN_PORT=21000
BACKEND_PORT=22000
CLOSE_TIMEOUT=5
MAX_PER_CELL=9900 # a data plane: two descriptors per connection, 20,000 per process
BASE_KIB=12288    # a cell's three processes before any connection, about
ALL_CPUS="0-$(($(nproc) - 1))"
STARTED_AT=$SECONDS

past_deadline() { ((SECONDS - STARTED_AT > MAX_SECONDS)); }

((PER_CELL <= MAX_PER_CELL)) || die "PER_CELL=$PER_CELL: a data plane relays at most $MAX_PER_CELL"
((TOTAL > 0)) || die "TOTAL must be more than 0"

# ------------------------------------------------------- memory fit --

asked=$TOTAL
avail_kib=$(meminfo_kib MemAvailable)
fit=$(((avail_kib - RESERVE_MIB * 1024) * PER_CELL / (EST_KIB * PER_CELL + BASE_KIB)))
fit=$((fit / 10000 * 10000))
((fit > 0)) || die "only $((avail_kib / 1024)) MiB available, and $RESERVE_MIB MiB are kept free: no room for a run"
fit_note=""
if ((TOTAL > fit)); then
  fit_note="asked for $asked; $((avail_kib / 1024)) MiB were available, $RESERVE_MIB MiB kept free and about $EST_KIB KiB per connection fit $fit"
  log "scaling down: $fit_note"
  TOTAL=$fit
fi
CELLS=$(((TOTAL + PER_CELL - 1) / PER_CELL))
((CELLS <= 900)) || die "$CELLS cells need more ports than 20000-20899 (raise PER_CELL)"
per_dp_rate=$(((DRAIN_RATE + CELLS - 1) / CELLS))
window=$(((PER_CELL + per_dp_rate - 1) / per_dp_rate + DRAIN_SLACK))
ramp=$(((CONNECT_RATE + CELLS - 1) / CELLS))
log "$TOTAL connections: $CELLS cells of up to $PER_CELL; opening $ramp/s per cell, draining $per_dp_rate/s per data plane over ${window}s"

# ------------------------------------------------------------ kernel --

# Four sockets, so four files, per connection, and the processes' own.
set_sysctl fs.file-max "$(($(sysctl -n fs.file-max) > TOTAL * 4 + 200000 ? $(sysctl -n fs.file-max) : TOTAL * 4 + 200000))"
SYSCTLS=(fs.file-max fs.nr_open net.ipv4.ip_local_port_range net.ipv4.tcp_mem net.core.somaxconn
  net.ipv4.tcp_max_orphans net.ipv4.tcp_max_tw_buckets)
sysctl_line=$(for s in "${SYSCTLS[@]}"; do printf '%s %s; ' "$s" "$(sysctl -n "$s" | tr '\t' ' ')"; done)
log "kernel: ${sysctl_line%; }"

log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release -p ringway-e2e -p ringway-dataplane >"$WORK/build.log" 2>&1 ||
  { tail -30 "$WORK/build.log" >&2; die "the build failed"; }
ensure_packages jq curl

# ------------------------------------------------------------- cells --

BACKEND_PIDS=() DP_PIDS=() LOAD_PIDS=() COUNTS=()
for ((i = 0; i < CELLS; i++)); do
  start_bg "echo-$i" "$ALL_CPUS" "$BIN/ringway-echo" --listen "127.0.0.1:$((BACKEND_PORT + i))" \
    --id "b$i" --workers 1 --read-buffer "$READ_BUFFER"
  BACKEND_PIDS+=("$LAST_PID")
  CONNECTIONS="heartbeat: {intervalSeconds: $HEARTBEAT, timeoutSeconds: $HEARTBEAT_TIMEOUT}, idleTimeoutSeconds: 0, maxConnections: $MAX_PER_CELL" \
    DRAIN="windowSeconds: $window, closeTimeoutSeconds: $CLOSE_TIMEOUT, maxClosesPerSecond: $per_dp_rate" \
    write_ringway_config "$WORK/dataplane-$i.yaml" $((DP_PORT + i)) $((ADMIN_PORT + i)) 1 $((BACKEND_PORT + i))
  start_bg "dataplane-$i" "$ALL_CPUS" "$BIN/ringway-dataplane" --config "$WORK/dataplane-$i.yaml"
  DP_PIDS+=("$LAST_PID")
done
for ((i = 0; i < CELLS; i++)); do
  wait_listening "127.0.0.1:$((BACKEND_PORT + i))" "${BACKEND_PIDS[i]}" 30 ||
    die "echo backend $i did not start: $(tail -1 "$WORK/echo-$i.log")"
  wait_listening "127.0.0.1:$((DP_PORT + i))" "${DP_PIDS[i]}" 30 ||
    die "data plane $i did not start: $(tail -3 "$WORK/dataplane-$i.log" | tr '\n' ' ' | cut -c1-300)"
done
log "$CELLS echo backends and $CELLS data planes up"

# The machine before any connection: every cell's process is running.
sleep 2
mem0=$(meminfo_kib MemAvailable) slab0=$(meminfo_kib Slab) sunr0=$(meminfo_kib SUnreclaim)
tcpmem0=$(tcp_mem_pages)
dp_rss0=$(rss_kib "${DP_PIDS[@]}") echo_rss0=$(rss_kib "${BACKEND_PIDS[@]}")

# ----------------------------------------------------- connections --

# Long enough to open, hold and drain; each generator ends by itself once
# the gateway has closed all of its connections.
hold=$((PER_CELL / ramp + 60 + HOLD + window + CLOSE_TIMEOUT + 60))
for ((i = 0; i < CELLS; i++)); do
  count=$((TOTAL / CELLS + (i < TOTAL % CELLS ? 1 : 0)))
  COUNTS+=("$count")
  RUST_BACKTRACE=0 taskset -c "$ALL_CPUS" "$BIN/ringway-load" --threads 1 idle \
    --url "ws://127.0.0.1:$((DP_PORT + i))/echo" --connections "$count" --ramp "$ramp" \
    --key-offset $((i * PER_CELL)) --echo-every "$ECHO_EVERY" --echo-one-in "$ECHO_ONE_IN" \
    --hold "$hold" --until-closed --json >"$WORK/load-$i.json" 2>"$WORK/load-$i.log" &
  LOAD_PIDS+=("$!")
  BENCH_PIDS+=("$!")
done
ramp_from=$(date +%s.%N)
log "opening $TOTAL connections at $CONNECT_RATE/s"

# open_now: connections open, from each generator's latest progress line.
open_now() {
  awk '/^connecting: / { last[FILENAME] = $2 } /^idle: [0-9]* of .* open \(/ { last[FILENAME] = $2 }
    END { for (f in last) sum += last[f]; print sum + 0 }' "$WORK"/load-*.log
}

lowest_avail=$mem0
ready=0 stopped_by=""
while ((ready < CELLS)); do
  past_deadline && die "connections still opening after ${MAX_SECONDS}s ($(open_now) open)"
  sleep 1
  avail=$(meminfo_kib MemAvailable)
  ((avail < lowest_avail)) && lowest_avail=$avail
  if ((avail < FLOOR_MIB * 1024)); then
    stopped_by="MemAvailable fell to $((avail / 1024)) MiB (floor $FLOOR_MIB MiB) with $(open_now) connections open"
    break
  fi
  ready=0
  for ((i = 0; i < CELLS; i++)); do
    if grep -q 'waiting for the server to close them' "$WORK/load-$i.log"; then
      ready=$((ready + 1))
    elif ! alive "${LOAD_PIDS[i]}"; then
      die "load generator $i ended while opening: $(tail -2 "$WORK/load-$i.log" | tr '\n' ' ' | cut -c1-300)"
    fi
  done
  for ((i = 0; i < CELLS; i++)); do
    alive "${DP_PIDS[i]}" || die "data plane $i exited while connections opened: $(tail -2 "$WORK/dataplane-$i.log" | tr '\n' ' ' | cut -c1-300)"
  done
  if ((SECONDS % 10 == 0)); then
    log "  $(open_now) open; $ready of $CELLS generators done; MemAvailable $((avail / 1024)) MiB"
  fi
done
if [[ -n $stopped_by ]]; then
  # Memory, not Ringway, ends the run: no drain to measure, and the box
  # must get its memory back now.
  for pid in "${LOAD_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  die "stopped: $stopped_by; lower TOTAL or EST_KIB's fit (RESERVE_MIB)"
fi
ramp_seconds=$(calc '%.1f' "$(date +%s.%N) - $ramp_from")

opened=0 failed=0
for ((i = 0; i < CELLS; i++)); do
  line=$(grep -m1 '^idle: .* connections open' "$WORK/load-$i.log")
  opened=$((opened + $(sed -n 's/^idle: \([0-9]*\) of .*/\1/p' <<<"$line")))
  failed=$((failed + $(sed -n 's/.* open (\([0-9]*\) failed.*/\1/p' <<<"$line")))
done
((opened > 0)) || die "no connection opened; why, in $WORK/load-0.log: $(grep -m1 '^idle: ' "$WORK/load-0.log" | cut -c1-300)"
connects_per_second=$(calc '%d' "$opened / $ramp_seconds")
log "$opened of $TOTAL open, $failed failed, in ${ramp_seconds}s ($connects_per_second/s); holding ${HOLD}s"

# Hold: every connection gets at least one ping while all are open.
hold_until=$((SECONDS + HOLD))
while ((SECONDS < hold_until)); do
  past_deadline && die "past MAX_SECONDS while holding"
  avail=$(meminfo_kib MemAvailable)
  ((avail < lowest_avail)) && lowest_avail=$avail
  sleep 1
done
mem1=$(meminfo_kib MemAvailable) slab1=$(meminfo_kib Slab) sunr1=$(meminfo_kib SUnreclaim)
tcpmem1=$(tcp_mem_pages)
sockets=$(awk '$1 == "TCP:" {print $3}' /proc/net/sockstat)
dp_rss1=$(rss_kib "${DP_PIDS[@]}") echo_rss1=$(rss_kib "${BACKEND_PIDS[@]}") load_rss1=$(rss_kib "${LOAD_PIDS[@]}")

# The gateway's own count of what it closed before the drain (a heartbeat
# that timed out shows here as 1011 heartbeat_timeout).
for ((i = 0; i < CELLS; i++)); do
  curl -fsS --max-time 5 "http://127.0.0.1:$((ADMIN_PORT + i))/metrics" || true
done | awk '/^ringway_closes_total\{/ { split($1, a, "{"); by[a[2]] += $2 } END { for (k in by) print k, by[k] }' \
  >"$WORK/closes-before-drain.txt"
closes_before=$(awk '{ gsub(/[}"]|code=|reason=/, "", $1); sub(/,/, " ", $1)
  printf "%s%s: %d", (NR > 1 ? ", " : ""), $1, $2 }' "$WORK/closes-before-drain.txt")

# ------------------------------------------------------------- drain --

busy0=$(busy_ticks)
ours0=$(tree_ticks $$)
term_at=$(date +%s.%N)
log "SIGTERM to $CELLS data planes: ${per_dp_rate} closes/s each over a ${window}s window"
kill -TERM "${DP_PIDS[@]}" 2>/dev/null || true
while :; do
  running=0
  for pid in "${DP_PIDS[@]}" "${LOAD_PIDS[@]}"; do alive "$pid" && running=$((running + 1)); done
  ((running == 0)) && break
  if past_deadline || (($(calc '%d' "$(date +%s.%N) - $term_at > $window + $CLOSE_TIMEOUT + 60"))); then
    log "still running $(calc '%.0f' "$(date +%s.%N) - $term_at")s after SIGTERM: $running processes"
    break
  fi
  sleep 0.5
done
drain_seconds=$(calc '%.3f' "$(date +%s.%N) - $term_at")
busy1=$(busy_ticks)
ours1=$(tree_ticks $$)
busy_pct=$(calc '%d' "100 * ($busy1 - $busy0) / ($drain_seconds * $CLK_TCK * $(nproc))")
other_pct=$(calc '%d' "100 * (($busy1 - $busy0) - ($ours1 - $ours0)) / ($drain_seconds * $CLK_TCK)")
for pid in "${LOAD_PIDS[@]}" "${DP_PIDS[@]}"; do stop_pid "$pid"; done

# ------------------------------------------------------------ report --

for ((i = 0; i < CELLS; i++)); do
  jq -e . "$WORK/load-$i.json" >/dev/null 2>&1 ||
    die "load generator $i wrote no report: $(tail -2 "$WORK/load-$i.log" | tr '\n' ' ' | cut -c1-300)"
done
totals=$(jq -s --argjson t0 "$term_at" '{
    opened: (map(.opened) | add), failed: (map(.failed) | add),
    failures: (map(.failures // {} | to_entries[]) | group_by(.key) | map("\(.[0].key): \(map(.value) | add)") | join(", ")),
    closed: (map(.closed) | add), still_open: (map(.still_open) | add),
    while_opening: (map(.closed_while_opening) | add), pings: (map(.pings) | add),
    codes: (map(.close_codes | to_entries[]) | group_by(.key) | map({(.[0].key): (map(.value) | add)}) | add // {}),
    first: ((map(.first_close_unix_seconds | select(. != null)) | min // $t0) - $t0),
    last: ((map(.last_close_unix_seconds | select(. != null)) | max // $t0) - $t0),
    sent: (map(.echo.sent // 0) | add), echoed: (map(.echo.echoed // 0) | add),
    lost: (map(.echo.lost // 0) | add), in_flight: (map(.echo.in_flight_at_close // 0) | add),
    lost_examples: (map(.echo.lost_examples // []) | add | .[:5]),
    slowest_connect: (map(.connect_seconds) | max)
  }' "$WORK"/load-*.json)
# Gateway-wide closes in each wall-clock second, from the generators' own
# per-second counts placed at their first close.
# Only the seconds from the SIGTERM on: a close before it (a heartbeat that
# timed out) is counted apart.
timeline=$(jq -s --argjson t0 "$term_at" '[.[] | select(.first_close_unix_seconds != null) | . as $r
    | .closes_per_second | to_entries[] | {s: (($r.first_close_unix_seconds | floor) + .key), n: .value}
    | select(.s >= ($t0 | floor))] | group_by(.s) | map({s: .[0].s, n: (map(.n) | add)})' "$WORK"/load-*.json)
drain_first=$(jq --argjson t0 "$term_at" 'map(select(.n > 0)) | (.[0].s // $t0) - ($t0 | floor)' <<<"$timeline")
drain_closed=$(jq 'map(.n) | add // 0' <<<"$timeline")
timeline=$(jq -c 'map(.n)' <<<"$timeline")
peak=$(jq 'max // 0' <<<"$timeline")
peak5=$(jq '[range(0; (length - 4) | if . < 1 then 1 else . end) as $i | .[$i:$i + 5] | add / length] | max // 0 | floor' <<<"$timeline")
closed=$(jq .closed <<<"$totals")
closed_1001=$(jq '.codes["1001"] // 0' <<<"$totals")
span=$(calc '%.3f' "$(jq .last <<<"$totals") - $drain_first")
drain_mean=$(calc '%d' "$drain_closed / ($span > 1 ? $span : 1)")

per_conn() { calc '%.2f' "($1) / $opened"; }
dp_per=$(per_conn "$dp_rss1 - $dp_rss0")
echo_per=$(per_conn "$echo_rss1 - $echo_rss0")
load_per=$(per_conn "$load_rss1")
slab_per=$(per_conn "$slab1 - $slab0")
sunr_per=$(per_conn "$sunr1 - $sunr0")
tcpmem_per=$(per_conn "($tcpmem1 - $tcpmem0) * 4")
# MemAvailable counts the sockets' inodes and dentries (reclaimable slab)
# as available although they are in use, so its drop is less than what the
# connections hold; the sum of the parts is the figure to plan with.
avail_per=$(per_conn "$mem0 - $mem1")
all_per=$(calc '%.2f' "$dp_per + $echo_per + $load_per + $slab_per + ($tcpmem_per > 0 ? $tcpmem_per : 0)")

# Where the run stopped, when short of the million.
if ((opened < 1000000)); then
  why=()
  [[ -n $fit_note ]] && why+=("memory: $fit_note")
  ((asked < 1000000)) && why+=("TOTAL was set to $asked")
  ((failed > 0)) && why+=("$failed connections failed to open: $(jq -r .failures <<<"$totals")")
  stop_line="short of a million:" sep=" "
  for w in "${why[@]}"; do stop_line+="$sep$w" sep="; "; done
  fit_million=$(calc '%.1f' "(1000000 * $all_per + $CELLS * $BASE_KIB) / 1048576")
fi

section=$WORK/section.md
{
  echo "### $opened idle connections through Ringway, $(date -u '+%Y-%m-%d')"
  echo
  machine_description
  echo
  echo
  printf 'Settings: %s connections asked, %s cells (a ringway-load idle process → a data-plane process → a ringway-echo backend, each with its own port), ' "$TOTAL" "$CELLS"
  printf 'up to %s connections each; opening %s/s in all; heartbeat every %s s (timeout %s s); held %s s once all were open; ' "$PER_CELL" "$CONNECT_RATE" "$HEARTBEAT" "$HEARTBEAT_TIMEOUT" "$HOLD"
  printf 'one connection in %s echoes a message every %s s; drain: SIGTERM to every data plane, %s closes/s each (%s/s gateway-wide) over a %s s window. ' "$ECHO_ONE_IN" "$ECHO_EVERY" "$per_dp_rate" "$((per_dp_rate * CELLS))" "$window"
  printf 'Echo backends and load generators read with %s-byte buffers. Kernel: %s.\n\n' "$READ_BUFFER" "${sysctl_line%; }"
  failures=""
  ((failed == 0)) || failures=" ($(jq -r .failures <<<"$totals"))"
  echo "- held: **$opened** of $TOTAL, $failed failed$failures"
  [[ -n ${stop_line:-} ]] && echo "- $stop_line"
  echo "- opened in $ramp_seconds s: **$connects_per_second connections/s** (the slowest generator took $(jq .slowest_connect <<<"$totals") s)"
  echo "- memory per connection, with all open after the hold: data plane RSS **$dp_per KiB**, echo backend $echo_per KiB, load generator $load_per KiB (its whole RSS); kernel slab **$slab_per KiB** (unreclaimable $sunr_per KiB; $sockets TCP sockets), TCP buffers $tcpmem_per KiB; **$all_per KiB** in all (MemAvailable fell $avail_per KiB per connection, $((mem0 / 1024)) → $((mem1 / 1024)) MiB, lowest $((lowest_avail / 1024)) MiB)"
  [[ -n ${fit_million:-} ]] && echo "- at that rate a million would take $fit_million GiB, cells' processes included"
  echo "- heartbeats: **$(jq .pings <<<"$totals") pings answered**; closed before the drain: $(jq .while_opening <<<"$totals") while others opened, gateway's count ${closes_before:-none}"
  jq -r '"- echo sample: \(.sent) sent, \(.echoed) echoed, **\(.lost) lost**, \(.in_flight) in flight at the close"' <<<"$totals"
  jq -r 'if (.lost_examples | length) > 0 then "- lost, for example: \(.lost_examples | join("; "))" else empty end' <<<"$totals"
  echo "- drain: **$closed_1001** closed with 1001 (going away) of $closed closed ($(jq -r '.codes | to_entries | map("\(.key): \(.value)") | join(", ")' <<<"$totals")), $(jq .still_open <<<"$totals") never closed"
  echo "- closes began $drain_first s (to the second) and ended **$(calc '%.1f' "$(jq .last <<<"$totals")") s** after SIGTERM: $drain_closed closes, **$drain_mean closes/s** on average, peak $peak in one second, $peak5/s over 5 s (cap $((per_dp_rate * CELLS))/s); the CPUs were $busy_pct% busy, $other_pct% of one CPU outside this run"
  echo
  echo "Closes per second, gateway-wide: $(jq -r 'map(tostring) | join(" ")' <<<"$timeline")"
} >"$section"

echo
cat "$section"
if [[ $OUT != - ]]; then
  write_section "$OUT" million "$section" 'bash e2e/bench/million.sh'
  log "wrote the results to $OUT"
fi
