#!/usr/bin/env bash
# Sharding benchmarks, with real shard processes steered over the control
# channel (`ringway-fleet` starts them and pushes the snapshot):
#
#   bash e2e/bench/shards.sh            # both parts
#   PARTS=handoff bash e2e/bench/shards.sh
#   PARTS=drain TOTAL=20000 bash e2e/bench/shards.sh
#
# handoff: what a hand-off costs. Two shards; only shard-1 owns keys, so a
# client of shard-0 is always handed to shard-1 (client -> shard-0 -> shard-1
# -> backend) while a client of shard-1 is served directly. Round-trip
# latency of the two paths, alternated HANDOFF_RUNS times, and memory per
# idle connection: the owner's alone (direct) against edge + owner (hand-off).
#
# drain: TOTAL idle connections through SHARDS shards (all owning keys; each
# load generator dials one shard with keys that shard owns, as a client that
# knows the ring would: on two CPUs, hand-offs for 24 of 25 connections
# would double the gateway's work), each connection echoing a message every
# ECHO_EVERY seconds; then a Drain
# RPC to every shard at a gateway-wide RATE closes per second (RATE/SHARDS
# per shard). Reports how long the drain took, the gateway-wide closes per
# second, the close codes, and messages lost: echoes of messages sent at
# least 0.5 s before their connection's close that never arrived.
#
# Results go to docs/benchmarks.md between <!-- handoff:begin/end --> and
# <!-- drain100k:begin/end -->.
#
# Settings (defaults in brackets): PARTS [handoff drain]
#   HANDOFF_RUNS [3] LAT_CONNECTIONS [50] LAT_RATE [2000] DURATION [8]
#   IDLE_CONNECTIONS [5000] IDLE_SETTLE [3]
#   TOTAL [100000] SHARDS [11] BACKENDS [10] RAMP [100] (per load generator;
#     BACKENDS: every shard dials the backends from 127.0.0.1, and this
#     kernel gives connect() about 14,000 source ports per destination: past
#     ~14,000 connections per backend, new ones time out)
#   HEARTBEAT [300] seconds between the shards' pings in the drain part:
#     ringway-load idle reads, and so answers pings, only once all its
#     connections are open, so the ramp must end within HEARTBEAT + 10 s
#   RATE [5000] WINDOW [20] ECHO_EVERY [30] MAX_SECONDS [900]
#   OUT [docs/benchmarks.md] ("-" to only print)   KEEP_WORK [0]
set -euo pipefail
# shellcheck source=e2e/bench/common.sh
source "$(dirname "$0")/common.sh"
bench_init shards

PARTS=${PARTS:-handoff drain}
HANDOFF_RUNS=${HANDOFF_RUNS:-3}
LAT_CONNECTIONS=${LAT_CONNECTIONS:-50}
LAT_RATE=${LAT_RATE:-2000}
DURATION=${DURATION:-8}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
IDLE_SETTLE=${IDLE_SETTLE:-3}
TOTAL=${TOTAL:-100000}
SHARDS=${SHARDS:-11}
BACKENDS=${BACKENDS:-10}
RAMP=${RAMP:-100}
HEARTBEAT=${HEARTBEAT:-300}
RATE=${RATE:-5000}
WINDOW=${WINDOW:-20}
ECHO_EVERY=${ECHO_EVERY:-30}
MAX_SECONDS=${MAX_SECONDS:-900}
OUT=${OUT:-docs/benchmarks.md}
STARTED_AT=$SECONDS

log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release -p ringway-dataplane -p ringway-e2e -p ringway-control >"$WORK/build.log" 2>&1 ||
  { tail -30 "$WORK/build.log" >&2; die "the build failed"; }
ensure_packages jq

# fleet NAME ARGS...: starts ringway-fleet; waits for its fleet.json.
fleet() {
  local name=$1
  shift
  rm -rf "$WORK/$name"
  start_bg "fleet-$name" "0-$(($(nproc) - 1))" "$BIN/ringway-fleet" \
    --dataplane "$BIN/ringway-dataplane" --echo "$BIN/ringway-echo" --out "$WORK/$name" "$@"
  FLEET_PID=$LAST_PID
  local deadline=$((SECONDS + 60))
  until [[ -s $WORK/$name/fleet.json ]]; do
    alive "$FLEET_PID" || die "ringway-fleet failed: $(tail -3 "$WORK/fleet-$name.log")"
    ((SECONDS < deadline)) || die "ringway-fleet did not come up"
    sleep 0.2
  done
  FLEET=$WORK/$name/fleet.json
}

shard() { jq -r ".shards[$1].$2" "$FLEET"; }

# ctl ARGS...: ringway-ctl with the fleet's operator certificate.
ctl() {
  "$BIN/ringway-ctl" --ca "$(jq -r .ca "$FLEET")" --cert "$(jq -r .cert "$FLEET")" \
    --key "$(jq -r .key "$FLEET")" "$@"
}

# idle_rss URL PIDS...: opens IDLE_CONNECTIONS idle connections to URL and
# prints the RSS growth of PIDS (KiB) with them open.
idle_rss() {
  local url=$1 json=$WORK/idle-$RANDOM.json lpid before after deadline
  shift
  before=$(rss_kib "$@")
  RUST_BACKTRACE=0 "$BIN/ringway-load" --threads 1 idle --url "$url" --connections "$IDLE_CONNECTIONS" \
    --hold $((IDLE_SETTLE + 5)) --json >"$json" 2>"$json.log" &
  lpid=$!
  BENCH_PIDS+=("$lpid")
  deadline=$((SECONDS + IDLE_CONNECTIONS / 500 + 30))
  until grep -q 'connections open' "$json.log" 2>/dev/null; do
    alive "$lpid" || die "ringway-load idle failed: $(tail -1 "$json.log")"
    ((SECONDS < deadline)) || die "ringway-load idle did not open its connections"
    sleep 0.2
  done
  sleep "$IDLE_SETTLE"
  after=$(rss_kib "$@")
  while alive "$lpid"; do sleep 0.2; done
  local opened
  opened=$(jq -r '.opened' "$json")
  calc '%.2f' "($after - $before) / $opened"
  sleep 2 # let the connections close before the next measurement
}

handoff_part() {
  log "hand-off: 2 shards (only shard-1 owns keys), 1 backend"
  fleet handoff --shards 2 --backends 1 --ring last
  local edge owner edge_pid owner_pid run
  edge=ws://$(shard 0 client)/chat owner=ws://$(shard 1 client)/chat
  edge_pid=$(shard 0 pid) owner_pid=$(shard 1 pid)
  local -a d50=() d99=() h50=() h99=()
  for ((run = 1; run <= HANDOFF_RUNS; run++)); do
    for path in direct handoff; do
      local url=$owner json=$WORK/latency-$path-$run.json
      [[ $path == handoff ]] && url=$edge
      RUST_BACKTRACE=0 "$BIN/ringway-load" --threads 1 latency --url "$url" \
        --connections "$LAT_CONNECTIONS" --rate "$LAT_RATE" --size 64 --duration "$DURATION" --warmup 2 \
        --json >"$json" 2>"$json.log" || die "latency run failed: $(tail -1 "$json.log")"
      if [[ $path == direct ]]; then
        d50+=("$(jq -r .round_trip.p50_us "$json")") d99+=("$(jq -r .round_trip.p99_us "$json")")
      else
        h50+=("$(jq -r .round_trip.p50_us "$json")") h99+=("$(jq -r .round_trip.p99_us "$json")")
      fi
    done
  done
  log "hand-off: memory with $IDLE_CONNECTIONS idle connections"
  local mem_direct mem_handoff mem_edge
  mem_direct=$(idle_rss "$owner" "$owner_pid")
  mem_handoff=$(idle_rss "$edge" "$edge_pid" "$owner_pid")
  mem_edge=$(calc '%.2f' "$mem_handoff - $mem_direct")
  stop_pid "$FLEET_PID"
  local section=$WORK/handoff.md
  {
    echo "### Hand-off cost, $(date -u '+%Y-%m-%d')"
    echo
    machine_description
    echo
    echo
    echo "Two shards; the snapshot gives every key to shard-1, so a client of shard-0 is handed to it over the peer port. Latency: $LAT_CONNECTIONS connections, $LAT_RATE messages/s of 64 B for $DURATION s, direct and handed-off runs alternated $HANDOFF_RUNS times (each cell lists the runs). Memory: RSS growth with $IDLE_CONNECTIONS idle connections, $IDLE_SETTLE s after they opened."
    echo
    echo "| path | round trip p50 (µs) | p99 (µs) | memory per connection (KiB) |"
    echo "|---|---|---|---:|"
    echo "| direct (client → owner → backend) | ${d50[*]} | ${d99[*]} | $mem_direct |"
    echo "| handed off (client → edge → owner → backend) | ${h50[*]} | ${h99[*]} | $mem_handoff (edge $mem_edge + owner) |"
    echo
    echo "Every process runs on the same two CPUs as the load generator, so these latencies include its scheduling; the difference between the rows is what a hand-off adds: one more loopback hop and one more frame-aware relay."
  } >"$section"
  cat "$section"
  [[ $OUT == - ]] || write_section "$OUT" handoff "$section" 'bash e2e/bench/shards.sh'
}

drain_part() {
  local per_shard_rate=$((RATE / SHARDS)) per_load=$(((TOTAL + SHARDS - 1) / SHARDS))
  log "drain: $TOTAL connections over $SHARDS shards and $BACKENDS backends; drain at $RATE/s ($per_shard_rate/s per shard)"
  fleet drain --shards "$SHARDS" --backends "$BACKENDS" --ring all --heartbeat-seconds "$HEARTBEAT"
  ((TOTAL / BACKENDS <= 14000)) || die "$TOTAL connections over $BACKENDS backends is more than 14,000 each from one source address: raise BACKENDS"
  ((per_load <= 9900)) || die "$TOTAL connections over $SHARDS shards is $per_load each; at most 9,900: raise SHARDS"
  ((per_load / RAMP < HEARTBEAT)) || die "opening $per_load connections at $RAMP/s takes longer than the shards' heartbeat allows: raise RAMP or HEARTBEAT"
  # No --sources: every shard has an address of its own, so each generator
  # has a whole ephemeral port range towards its shard, and bound source
  # ports would be taken out of the range the shards' own connections to
  # the backends draw from.
  local hold=$((TOTAL / (RAMP * SHARDS) + ECHO_EVERY * 2 + WINDOW * 3 + 120)) i ring
  ring=$(jq -r '[.shards[].id] | join(",")' "$FLEET")
  local -a loads=() counts=()
  for ((i = 0; i < SHARDS; i++)); do
    local count=$((TOTAL / SHARDS + (i < TOTAL % SHARDS ? 1 : 0)))
    counts+=("$count")
    RUST_BACKTRACE=0 "$BIN/ringway-load" --threads 1 idle --url "ws://$(shard "$i" client)/chat" \
      --connections "$count" --ramp "$RAMP" --owned-by "$(shard "$i" id)" --ring "$ring" \
      --echo-every "$ECHO_EVERY" \
      --hold "$hold" --until-closed --json >"$WORK/drain-load-$i.json" 2>"$WORK/drain-load-$i.log" &
    loads+=("$!")
    BENCH_PIDS+=("$!")
  done
  local deadline=$((SECONDS + TOTAL / (RAMP * SHARDS) + 120))
  for ((i = 0; i < SHARDS; i++)); do
    until grep -q 'connections open' "$WORK/drain-load-$i.log" 2>/dev/null; do
      alive "${loads[i]}" || die "load generator $i failed: $(tail -1 "$WORK/drain-load-$i.log")"
      ((SECONDS < deadline)) || die "load generator $i did not open its connections"
      sleep 0.5
    done
  done
  local opened=0
  for ((i = 0; i < SHARDS; i++)); do
    opened=$((opened + $(grep -m1 -o 'idle: [0-9]* of' "$WORK/drain-load-$i.log" | awk '{print $2}')))
  done
  log "drain: $opened connections open; letting them echo for $((ECHO_EVERY * 2)) s"
  sleep $((ECHO_EVERY * 2))
  local -a controls=()
  for ((i = 0; i < SHARDS; i++)); do controls+=("$(shard "$i" control)"); done
  local t0
  t0=$(date +%s.%N)
  ctl drain "${controls[@]}" --window-ms $((WINDOW * 1000)) --rate "$per_shard_rate" >"$WORK/drain-rpc.log" 2>&1 ||
    die "the drain RPC failed: $(tail -3 "$WORK/drain-rpc.log")"
  log "drain: requested on every shard; waiting for the load generators"
  for pid in "${loads[@]}"; do
    while alive "$pid"; do
      ((SECONDS - STARTED_AT < MAX_SECONDS)) || die "past MAX_SECONDS"
      sleep 0.5
    done
  done
  stop_pid "$FLEET_PID"
  # Gateway-wide closes per second: each generator's per-second counts,
  # placed at its first close's wall-clock second.
  local totals timeline
  totals=$(jq -s --argjson t0 "$t0" '{
      opened: (map(.opened) | add), failed: (map(.failed) | add),
      closed: (map(.closed) | add), still_open: (map(.still_open) | add),
      codes: (map(.close_codes | to_entries[]) | group_by(.key) | map({(.[0].key): (map(.value) | add)}) | add),
      first: ((map(.first_close_unix_seconds | select(. != null)) | min) - $t0),
      last: ((map(.last_close_unix_seconds | select(. != null)) | max) - $t0),
      sent: (map(.echo.sent // 0) | add), echoed: (map(.echo.echoed // 0) | add),
      lost: (map(.echo.lost // 0) | add), in_flight: (map(.echo.in_flight_at_close // 0) | add),
      lost_examples: (map(.echo.lost_examples // []) | add | .[:5])
    }' "$WORK"/drain-load-*.json)
  timeline=$(jq -s '[.[] | select(.first_close_unix_seconds != null) | . as $r
      | .closes_per_second | to_entries[] | {s: (($r.first_close_unix_seconds | floor) + .key), n: .value}]
      | group_by(.s) | map(map(.n) | add)' "$WORK"/drain-load-*.json)
  local peak peak5 took
  peak=$(jq 'max // 0' <<<"$timeline")
  peak5=$(jq '[range(0; (length - 4) | if . < 1 then 1 else . end) as $i | .[$i:$i + 5] | add / length] | max // 0 | floor' <<<"$timeline")
  took=$(jq -r '.last' <<<"$totals")
  local section=$WORK/drain.md
  {
    echo "### $TOTAL connections drained over the control channel, $(date -u '+%Y-%m-%d')"
    echo
    machine_description
    echo
    echo
    echo "$SHARDS shard processes, all owning keys, and $BACKENDS echo backends; one load generator per shard dials it with keys that shard owns (rendezvous over the snapshot's ring, as the shards compute it), so no connection is handed off. Every connection sends a message every $ECHO_EVERY s and counts the echoes. Then one Drain RPC to every shard: window $WINDOW s, $per_shard_rate closes/s per shard ($RATE/s gateway-wide)."
    echo
    jq -r '"- opened: **\(.opened)** of '"$TOTAL"', \(.failed) failed; closed by the drain: \(.closed) (\(.codes | to_entries | map("\(.key): \(.value)") | join(", "))), never closed: \(.still_open)"' <<<"$totals"
    jq -r '"- closes began \(.first * 10 | round / 10) s and ended **\(.last * 10 | round / 10) s** after the drain RPC"' <<<"$totals"
    echo "- gateway-wide closes per second: peak **$peak** in one second, **$peak5**/s averaged over 5 s (cap $RATE/s)"
    jq -r '"- messages: \(.sent) sent, \(.echoed) echoed, **\(.lost) lost** (sent ≥ 0.5 s before their connection closed and never echoed), \(.in_flight) in flight at the close (sent in the last 0.5 s; a gateway sends no data after its close)"' <<<"$totals"
    jq -r 'if (.lost_examples | length) > 0 then "- lost, for example: \(.lost_examples | join("; "))" else empty end' <<<"$totals"
    echo
    echo "Closes per second, gateway-wide: $(jq -r 'map(tostring) | join(" ")' <<<"$timeline")"
  } >"$section"
  cat "$section"
  log "drain took $took s"
  [[ $OUT == - ]] || write_section "$OUT" drain100k "$section" 'bash e2e/bench/shards.sh'
}

for part in $PARTS; do
  case $part in
  handoff) handoff_part ;;
  drain) drain_part ;;
  *) die "unknown part $part (handoff, drain)" ;;
  esac
done
