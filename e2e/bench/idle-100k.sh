#!/usr/bin/env bash
# Holds 100,000 idle WebSocket connections through Ringway on this machine,
# then sends SIGTERM to every data-plane process and measures the drain:
#
#   bash e2e/bench/idle-100k.sh
#
# A process may hold 20,000 file descriptors and a proxied connection takes
# two, so the connections are spread over DATAPLANES data-plane processes
# (each at most 9,900 connections, on its own port 127.0.0.1:28100, :28101,
# ...), BACKENDS echo backends and one load generator per data-plane process,
# each with its own block of 127.0.1.x source addresses. After SIGTERM each
# data plane must close all its connections with 1001 (going away), at no
# more than MAX_CLOSES per second, within its drain window.
#
# It reports connections opened and failed, the data planes' memory per
# connection, and per process: closes with 1001, other closes, connections
# never closed, when the closes began and ended after SIGTERM, the peak
# closes per second and when the process exited. The results go to
# docs/benchmarks.md between <!-- idle100k:begin --> and <!-- idle100k:end -->.
#
# Settings, from the environment (defaults in brackets):
#   TOTAL [100000] DATAPLANES [11] BACKENDS [8]
#   RAMP [400]       new connections per second per load generator
#   SETTLE [5]       seconds between the last connection and the memory reading
#   DRAIN_WINDOW [20] CLOSE_TIMEOUT [5] MAX_CLOSES [500]   the data planes' drain
#   MAX_SECONDS [900] the whole run's bound
#   DIRECT [0]       1: no Ringway; the load generators connect straight to the
#                    backends and the backends get the SIGTERM (they drop their
#                    connections without a close frame): a check of this script
#                    at a small TOTAL, not a measurement
#   OUT [docs/benchmarks.md] ("-" to only print)   KEEP_WORK [0]
set -euo pipefail
# shellcheck source=e2e/bench/common.sh
source "$(dirname "$0")/common.sh"
bench_init idle100k

TOTAL=${TOTAL:-100000}
DATAPLANES=${DATAPLANES:-11}
BACKENDS=${BACKENDS:-8}
RAMP=${RAMP:-400}
SETTLE=${SETTLE:-5}
DRAIN_WINDOW=${DRAIN_WINDOW:-20}
CLOSE_TIMEOUT=${CLOSE_TIMEOUT:-5}
MAX_CLOSES=${MAX_CLOSES:-500}
MAX_SECONDS=${MAX_SECONDS:-900}
DIRECT=${DIRECT:-0}
OUT=${OUT:-docs/benchmarks.md}

DP_PORT=28100
ADMIN_PORT=28200
BACKEND_PORT=29100
MAX_PER_DATAPLANE=9900 # two descriptors per proxied connection, 20,000 per process
MAX_PER_BACKEND=19000  # one descriptor per connection
PORTS_PER_SOURCE=28000 # Linux's ephemeral range, 32768-60999
ALL_CPUS="0-$(($(nproc) - 1))"
STARTED_AT=$SECONDS

past_deadline() { ((SECONDS - STARTED_AT > MAX_SECONDS)); }

per_dataplane=$(((TOTAL + DATAPLANES - 1) / DATAPLANES))
per_backend=$(((TOTAL + BACKENDS - 1) / BACKENDS))
if ((DIRECT == 0 && per_dataplane > MAX_PER_DATAPLANE)); then
  die "$TOTAL connections over $DATAPLANES data planes is $per_dataplane each; at most $MAX_PER_DATAPLANE: raise DATAPLANES"
fi
if ((per_backend > MAX_PER_BACKEND || per_backend > PORTS_PER_SOURCE)); then
  die "$TOTAL connections over $BACKENDS backends is $per_backend each; at most $MAX_PER_BACKEND: raise BACKENDS"
fi
((DATAPLANES <= 60)) || die "at most 60 load generators (source blocks 127.0.1.1-127.0.1.240)"

log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
packages=(-p ringway-e2e)
((DIRECT)) || packages+=(-p ringway-dataplane)
cargo build --release "${packages[@]}" >"$WORK/build.log" 2>&1 ||
  { tail -30 "$WORK/build.log" >&2; die "the build failed"; }
ensure_packages jq

# ------------------------------------------------------------ backends --

backend_list=""
BACKEND_PIDS=() BACKEND_PORTS=()
for ((j = 0; j < BACKENDS; j++)); do
  port=$((BACKEND_PORT + j))
  start_bg "echo-$j" "$ALL_CPUS" "$BIN/ringway-echo" --listen "127.0.0.1:$port" --id "b$j" --workers 1
  BACKEND_PIDS+=("$LAST_PID")
  wait_listening "127.0.0.1:$port" "$LAST_PID" 10 || die "echo backend $j did not start: $(tail -1 "$WORK/echo-$j.log")"
  backend_list+="${backend_list:+, }127.0.0.1:$port"
  BACKEND_PORTS+=("$port")
done
log "$BACKENDS echo backends up ($backend_list)"

# --------------------------------------------------------- data planes --

DP_PIDS=()
if ((DIRECT)); then
  log "DIRECT=1: no data plane; load generators connect to the backends"
else
  for ((i = 0; i < DATAPLANES; i++)); do
    CONNECTIONS="heartbeat: {intervalSeconds: 20, timeoutSeconds: 10}, idleTimeoutSeconds: 600, maxConnections: $MAX_PER_DATAPLANE" \
      DRAIN="windowSeconds: $DRAIN_WINDOW, closeTimeoutSeconds: $CLOSE_TIMEOUT, maxClosesPerSecond: $MAX_CLOSES" \
      write_ringway_config "$WORK/dataplane-$i.yaml" $((DP_PORT + i)) $((ADMIN_PORT + i)) 1 "${BACKEND_PORTS[@]}"
    start_bg "dataplane-$i" "$ALL_CPUS" "$BIN/ringway-dataplane" --config "$WORK/dataplane-$i.yaml"
    DP_PIDS+=("$LAST_PID")
  done
  for ((i = 0; i < DATAPLANES; i++)); do
    wait_listening "127.0.0.1:$((DP_PORT + i))" "${DP_PIDS[i]}" 20 ||
      die "data plane $i did not start: $(tail -3 "$WORK/dataplane-$i.log" | tr '\n' ' ' | cut -c1-300)"
  done
  log "$DATAPLANES data planes up on 127.0.0.1:$DP_PORT-$((DP_PORT + DATAPLANES - 1))"
fi
rss_before=0
((DIRECT)) || rss_before=$(rss_kib "${DP_PIDS[@]}")

# ---------------------------------------------------- load generators --

# Long enough to open everything, settle, and drain; each generator stops
# by itself as soon as the server has closed all of its connections.
hold=$((TOTAL / (RAMP * DATAPLANES) + 60 + SETTLE + DRAIN_WINDOW + CLOSE_TIMEOUT + 60))
LOAD_PIDS=()
COUNTS=()
for ((i = 0; i < DATAPLANES; i++)); do
  count=$((TOTAL / DATAPLANES + (i < TOTAL % DATAPLANES ? 1 : 0)))
  COUNTS+=("$count")
  if ((DIRECT)); then
    url="ws://127.0.0.1:$((BACKEND_PORT + i % BACKENDS))/echo"
  else
    url="ws://127.0.0.1:$((DP_PORT + i))/echo"
  fi
  RUST_BACKTRACE=0 taskset -c "$ALL_CPUS" "$BIN/ringway-load" --threads 1 idle --url "$url" \
    --connections "$count" --ramp "$RAMP" --key-offset $((i * per_dataplane)) \
    --sources "127.0.1.$((i * 4 + 1))-127.0.1.$((i * 4 + 4))" \
    --hold "$hold" --until-closed --json >"$WORK/load-$i.json" 2>"$WORK/load-$i.log" &
  LOAD_PIDS+=("$!")
  BENCH_PIDS+=("$!")
done
log "opening $TOTAL connections: $DATAPLANES load generators at $RAMP/s each"

# Wait until every generator has opened what it could.
ready=0
while ((ready < DATAPLANES)); do
  past_deadline && die "connections still opening after ${MAX_SECONDS}s"
  sleep 1
  ready=0
  for ((i = 0; i < DATAPLANES; i++)); do
    if grep -q 'waiting for the server to close them' "$WORK/load-$i.log" || ! alive "${LOAD_PIDS[i]}"; then
      ready=$((ready + 1))
    fi
  done
  if ((SECONDS % 10 == 0)); then
    open=$(awk '/^connecting: / { last[FILENAME] = $2 } /^idle: .* open \(/ { last[FILENAME] = $2 }
      END { for (f in last) sum += last[f]; print sum + 0 }' "$WORK"/load-*.log)
    log "  $open connections open; $ready of $DATAPLANES load generators done opening"
  fi
done

opened=0 failed=0
for ((i = 0; i < DATAPLANES; i++)); do
  line=$(grep -m1 '^idle: .* connections open' "$WORK/load-$i.log" || true)
  [[ -n $line ]] || die "load generator $i ended before opening its connections: $(tail -2 "$WORK/load-$i.log" | tr '\n' ' ')"
  o=$(sed -n 's/^idle: \([0-9]*\) of .*/\1/p' <<<"$line")
  f=$(sed -n 's/.* open (\([0-9]*\) failed.*/\1/p' <<<"$line")
  opened=$((opened + o)) failed=$((failed + f))
done
log "$opened of $TOTAL connections open, $failed failed"
# Nothing to drain: the setup is broken, and that is no result to publish.
((opened > 0)) || die "no connection opened; why, in $WORK/load-0.log: $(grep -m1 '^idle: ' "$WORK/load-0.log" | cut -c1-300)"

sleep "$SETTLE"
if ((DIRECT)); then
  rss_after=0
  TERM_PIDS=("${BACKEND_PIDS[@]}")
else
  rss_after=$(rss_kib "${DP_PIDS[@]}")
  TERM_PIDS=("${DP_PIDS[@]}")
fi
per_conn_kib=—
((opened > 0)) && per_conn_kib=$(calc '%.1f' "($rss_after - $rss_before) / $opened")

# ---------------------------------------------------------------- drain --

# The machine's CPU during the drain: how busy it was, and how much of that
# was outside this run (a build, say). A drain measured on a saturated
# machine shows bursts that are the machine's, not the data plane's.
busy0=$(busy_ticks)
ours0=$(tree_ticks $$)

term_at=$(date +%s.%N)
log "SIGTERM to ${#TERM_PIDS[@]} $( ((DIRECT)) && echo backends || echo 'data planes')"
kill -TERM "${TERM_PIDS[@]}" 2>/dev/null || true

declare -A EXITED=()
while :; do
  past_deadline && { log "the run's bound (${MAX_SECONDS}s) is reached; stopping"; break; }
  running=0
  for ((i = 0; i < ${#TERM_PIDS[@]}; i++)); do
    if [[ -z ${EXITED[$i]:-} ]]; then
      if alive "${TERM_PIDS[i]}"; then
        running=$((running + 1))
      else
        EXITED[$i]=$(calc '%.1f' "$(date +%s.%N) - $term_at")
      fi
    fi
  done
  loading=0
  for pid in "${LOAD_PIDS[@]}"; do alive "$pid" && loading=$((loading + 1)); done
  ((running == 0 && loading == 0)) && break
  # A data plane still running well past its window and close timeout is
  # a finding, not something to wait for forever.
  if (($(calc '%d' "$(date +%s.%N) - $term_at > $DRAIN_WINDOW + $CLOSE_TIMEOUT + 60"))); then
    log "still running $((DRAIN_WINDOW + CLOSE_TIMEOUT + 60))s after SIGTERM: $running processes, $loading load generators"
    break
  fi
  sleep 0.2
done
busy1=$(busy_ticks)
ours1=$(tree_ticks $$)
drain_seconds=$(calc '%.3f' "$(date +%s.%N) - $term_at")
busy_pct=$(calc '%d' "100 * ($busy1 - $busy0) / ($drain_seconds * $CLK_TCK * $(nproc))")
other_pct=$(calc '%d' "100 * (($busy1 - $busy0) - ($ours1 - $ours0)) / ($drain_seconds * $CLK_TCK)")
for pid in "${LOAD_PIDS[@]}"; do stop_pid "$pid"; done

# -------------------------------------------------------------- report --

rows=() total_1001=0 total_other=0 total_open=0 worst_peak=0 worst_peak5=0 first_all='' last_all=''
for ((i = 0; i < DATAPLANES; i++)); do
  json=$WORK/load-$i.json
  if ! jq -e . "$json" >/dev/null 2>&1; then
    rows+=("| $i | ${COUNTS[i]} | no report: $(tail -1 "$WORK/load-$i.log" | cut -c1-80) | | | | | | | | |")
    continue
  fi
  read -r o f c1001 closed still span peak peak5 first last <<<"$(jq -r '[.opened, .failed,
    (.close_codes["1001"] // 0), .closed, .still_open, .close_span_seconds,
    .peak_closes_per_second, .peak_closes_per_second_over_5s, (.first_close_unix_seconds // "null"),
    (.last_close_unix_seconds // "null")] | map(tostring) | join(" ")' "$json")"
  other=$((closed - c1001))
  total_1001=$((total_1001 + c1001)) total_other=$((total_other + other)) total_open=$((total_open + still))
  ((peak > worst_peak)) && worst_peak=$peak
  (($(calc '%d' "$peak5 > $worst_peak5"))) && worst_peak5=$peak5
  if [[ $first != null ]]; then
    from=$(calc '%.1f' "$first - $term_at") to=$(calc '%.1f' "$last - $term_at")
    if [[ -z $first_all ]] || (($(calc '%d' "$from < $first_all"))); then first_all=$from; fi
    if [[ -z $last_all ]] || (($(calc '%d' "$to > $last_all"))); then last_all=$to; fi
  else
    from=— to=—
  fi
  codes=$(jq -r '.close_codes | to_entries | map(select(.key != "1001") | "\(.key): \(.value)") | join(", ")' "$json")
  exited=${EXITED[$i]:-not exited}
  ((DIRECT)) && exited=—
  rows+=("| $i | $o | $f | $c1001 | $other${codes:+ ($codes)} | $still | $from | $to | $span | $peak | $peak5 | $exited |")
done

# Why connections failed, summed over the load generators.
failures=$(jq -rs '[.[].failures // {} | to_entries[]] | group_by(.key)
  | map("\(.[0].key): \(map(.value) | add)") | join(", ")' "$WORK"/load-*.json 2>/dev/null || true)

section=$WORK/section.md
{
  echo "### $TOTAL idle connections and a drain, $(date -u '+%Y-%m-%d')"
  echo
  machine_description
  echo
  echo
  if ((DIRECT)); then
    echo "**DIRECT=1: no Ringway in the path; the backends got the SIGTERM. A check of the script, not a result.**"
    echo
  fi
  printf 'Settings: %s connections, %s data-plane processes (%s connections each), %s echo backends, ' \
    "$TOTAL" "$DATAPLANES" "$per_dataplane" "$BACKENDS"
  printf 'load generators opening %s connections/s each; drain window %s s, close timeout %s s, ' \
    "$RAMP" "$DRAIN_WINDOW" "$CLOSE_TIMEOUT"
  printf 'at most %s closes/s per process.\n\n' "$MAX_CLOSES"
  echo "- opened: **$opened** of $TOTAL, $failed failed${failures:+ ($failures)}"
  ((DIRECT)) || echo "- data-plane memory with all of them open: $((rss_after / 1024)) MiB in all, $((rss_before / 1024)) MiB before; **$per_conn_kib KiB per connection**"
  echo "- after SIGTERM: **$total_1001** closed with 1001 (going away), $total_other closed otherwise, $total_open never closed"
  echo "- closes began ${first_all:-—} s and ended ${last_all:-—} s after SIGTERM; meanwhile the machine's CPUs were $busy_pct% busy, $other_pct% of one CPU outside this run"
  echo "- most closes per second seen from one process: **$worst_peak** in one second, **$worst_peak5**/s averaged over 5 s (cap $MAX_CLOSES/s)"
  echo
  echo "| process | opened | failed | closed 1001 | closed otherwise | never closed | first close (s after SIGTERM) | last close (s) | closing took (s) | peak closes/s | over 5 s | exited (s after SIGTERM) |"
  echo "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Closes are timed by the load generators as they read them. With every process of the run on two CPUs a generator reads late at times, and the closes it missed land in the next second: one-second counts then borrow from their neighbours, so the 5-second average is the figure to hold against the cap."
} >"$section"

echo
cat "$section"
if [[ $OUT != - ]]; then
  write_section "$OUT" idle100k "$section" 'bash e2e/bench/idle-100k.sh'
  log "wrote the results to $OUT"
fi
