#!/usr/bin/env bash
# TLS at the edge: Ringway, nginx and HAProxy terminating wss:// with the same
# certificate, in one run on this machine; writes the table to
# docs/benchmarks.md (between <!-- tls:begin --> and <!-- tls:end -->):
#
#   bash e2e/bench/tls.sh
#
# One ECDSA P-256 certificate (for localhost and 127.0.0.1, signed by a CA
# made for the run) serves all three proxies. Each proxy in turn runs alone,
# pinned to CPU 0, in front of two ringway-echo backends (plain ws://); the
# load generator and the backends share CPU 1, as in compare.sh. Per proxy:
#   - full handshakes: HS_CONCURRENCY loops, each opening a wss:// connection
#     (TCP, TLS, upgrade through the proxy to a backend), checking one echo
#     of HS_ECHO_SIZE bytes, closing it and starting over, for HS_DURATION
#     seconds, with no TLS session resumption; the proxy's CPU time divided
#     by the connections opened, and its inverse, handshakes per second per
#     core; and the rate the whole setup reached;
#   - resumed handshakes: the same with the client offering the session
#     tickets it got before (--resume), and how many really resumed;
#   - CPU per message over wss:// at saturation, for each size in TP_SIZES;
#   - memory per idle TLS connection: RSS with IDLE_CONNECTIONS idle wss://
#     connections open, less RSS before, divided by their number.
#
# Settings, from the environment (defaults in brackets):
#   HS_DURATION [10] HS_CONCURRENCY [16] HS_ECHO_SIZE [64]
#   TP_DURATION [10] TP_CONNECTIONS [50] TP_WINDOW [16] TP_SIZES ["64 4096"]
#   IDLE_CONNECTIONS [5000] IDLE_SETTLE [3]   seconds between open and RSS
#   USED_EVERY [2]   seconds between the messages of the connections whose
#                    memory is measured again while they carry messages
#   PROXIES ["ringway nginx haproxy"]
#   PROXY_CPU [0] LOAD_CPU [1]
#   OUT [docs/benchmarks.md] ("-" to only print the table)
#   KEEP_WORK [0]   1 keeps the certificates, configs, logs and raw results
# The defaults finish in about four minutes, plus the release build.
set -euo pipefail
# shellcheck source=e2e/bench/common.sh
source "$(dirname "$0")/common.sh"
bench_init tls

HS_DURATION=${HS_DURATION:-10}
HS_CONCURRENCY=${HS_CONCURRENCY:-16}
HS_ECHO_SIZE=${HS_ECHO_SIZE:-64}
TP_DURATION=${TP_DURATION:-10}
TP_CONNECTIONS=${TP_CONNECTIONS:-50}
TP_WINDOW=${TP_WINDOW:-16}
TP_SIZES=${TP_SIZES:-"64 4096"}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
IDLE_SETTLE=${IDLE_SETTLE:-3}
USED_EVERY=${USED_EVERY:-2}
PROXIES=${PROXIES:-"ringway nginx haproxy"}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-docs/benchmarks.md}

# Idle connections come from their own source addresses, so that they never
# compete for ports with the TIME_WAIT left by the handshake loops.
IDLE_SOURCES=127.0.0.2-127.0.0.9
BACKEND_PORTS=(19001 19002)

declare -A PORT=([ringway]=18441 [nginx]=18442 [haproxy]=18443)
declare -A LABEL=([ringway]=Ringway [nginx]=nginx [haproxy]=HAProxy)
declare -A R=()    # results, R[proxy.metric]
declare -A SKIP=() # why a proxy has no results

if (($(nproc) < 2)); then
  log "only one CPU: the proxy and the load share it"
  PROXY_CPU=0 LOAD_CPU=0
fi

# ---------------------------------------------------------------- setup --

need=(jq openssl)
[[ " $PROXIES " == *" nginx "* ]] && need+=(nginx)
[[ " $PROXIES " == *" haproxy "* ]] && need+=(haproxy)
ensure_packages "${need[@]}"

log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release -p ringway-e2e -p ringway-dataplane >"$WORK/build.log" 2>&1 ||
  { tail -30 "$WORK/build.log" >&2; die "the release build failed"; }

# One CA and one leaf, both ECDSA P-256: the leaf is what every proxy serves
# (alone, no chain), the CA what the load generator trusts.
log "making an ECDSA P-256 certificate for localhost and 127.0.0.1"
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj '/CN=Ringway benchmark CA' -keyout "$WORK/ca.key" -out "$WORK/ca.pem" \
    -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign'
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=localhost' \
    -keyout "$WORK/key.pem" -out "$WORK/leaf.csr"
  printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=critical,CA:FALSE' \
    'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' >"$WORK/leaf.ext"
  openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/leaf.ext" -out "$WORK/cert.pem"
  # HAProxy takes the certificate and its key in one file.
  cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"
} >"$WORK/openssl.log" 2>&1 || { cat "$WORK/openssl.log" >&2; die "openssl failed"; }
# Every ringway-load run trusts that CA (its --ca-file).
export RINGWAY_LOAD_CA_FILE=$WORK/ca.pem

# Each proxy as its documentation recommends for resumption: Ringway's own
# (stateless tickets, dataplane/src/tls.rs); nginx's shared session cache
# and tickets; HAProxy's defaults (its session cache and tickets). TLS 1.2 and
# 1.3 everywhere, each library's default cipher suites and groups, and the
# client's order of preference followed (HAProxy's default is its own, which
# puts AES-256-GCM first): all three negotiate what a browser would.

TLS_CERT=$WORK/cert.pem TLS_KEY=$WORK/key.pem \
  write_ringway_config "$WORK/1/ringway.yaml" "${PORT[ringway]}" 19091 1 "${BACKEND_PORTS[@]}"
write_nginx_config "$WORK/1" 1 "listen 127.0.0.1:${PORT[nginx]} ssl backlog=4096;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;"
write_haproxy_config "$WORK/1" 1 "bind 127.0.0.1:${PORT[haproxy]} ssl crt $WORK/haproxy.pem alpn http/1.1 prefer-client-ciphers"
start_echo_backends "$LOAD_CPU" "${BACKEND_PORTS[@]}"

# ---------------------------------------------------------- measuring --

# measure_handshakes P URL KIND: connections opened and closed in loops,
# KIND full (no resumption) or resumed; R[P.KIND.cpu], the proxy's CPU time
# per connection in microseconds, R[P.KIND.core], its inverse (connections per
# second one core would take), R[P.KIND.rate], the rate reached.
measure_handshakes() {
  local p=$1 url=$2 kind=$3 json=$WORK/$1-handshakes-$3.json t0 t1 opened resumed
  local -a resume=()
  [[ $kind == resumed ]] && resume=(--resume)
  # shellcheck disable=SC2046
  t0=$(cpu_ticks $(proxy_pids "$p"))
  load "$json" handshakes --url "$url" --concurrency "$HS_CONCURRENCY" \
    --duration "$HS_DURATION" --echo-size "$HS_ECHO_SIZE" "${resume[@]}" || return 1
  # shellcheck disable=SC2046
  t1=$(cpu_ticks $(proxy_pids "$p"))
  opened=$(jq -r '.opened' "$json")
  resumed=$(jq -r '.resumed' "$json")
  ((opened > 0 && t1 > t0)) || return 1
  R[$p.$kind.cpu]=$(calc '%.1f' "($t1 - $t0) * 1000000 / $CLK_TCK / $opened")
  R[$p.$kind.core]=$(calc '%.0f' "$opened * $CLK_TCK / ($t1 - $t0)")
  R[$p.$kind.rate]=$(jq -r '.rate' "$json")
  R[$p.$kind.count]="$opened / $resumed / $(jq -r '.failed + .echo_errors' "$json")"
  R[$p.negotiated]=$(jq -r '.negotiated | keys | join(", ")' "$json")
}

for p in $PROXIES; do
  [[ -n ${PORT[$p]:-} ]] || die "unknown proxy $p (known: ${!PORT[*]})"
  CURRENT=$p
  log "${LABEL[$p]}: starting"
  if ! start_proxy "$p" 1; then
    log "${LABEL[$p]}: skipped, ${SKIP[$p]}"
    continue
  fi
  url="wss://localhost:${PORT[$p]}/echo"
  log "${LABEL[$p]}: routing check over wss://"
  if ! measure_routing "$p" "$url"; then
    SKIP[$p]="failed its routing check ($(last_error "$WORK/$p-probe.json.log"))"
    log "${LABEL[$p]}: skipped, ${SKIP[$p]}"
    stop_pid "$PROXY_PID"
    continue
  fi
  for kind in full resumed; do
    log "${LABEL[$p]}: $kind handshakes, $HS_CONCURRENCY loops for $HS_DURATION s"
    measure_handshakes "$p" "$url" "$kind" || R[$p.$kind.cpu]=failed
  done
  log "${LABEL[$p]}: memory with $IDLE_CONNECTIONS idle wss:// connections"
  measure_memory "$p" "$url" || R[$p.mem]=failed
  log "${LABEL[$p]}: memory with $IDLE_CONNECTIONS wss:// connections echoing a message every $USED_EVERY s"
  measure_memory "$p" "$url" "$USED_EVERY" || R[$p.mem_used]=failed
  for size in $TP_SIZES; do
    log "${LABEL[$p]}: CPU per message over wss:// at saturation, $size B"
    measure_cpu "$p" "$url" "$size" || R[$p.cpu$size]=failed
  done
  stop_pid "$PROXY_PID"
done

# --------------------------------------------------------------- table --

rows=(
  "full.cpu|full handshakes: proxy CPU per connection (µs)|low|%.1f"
  "full.core|full handshakes per second per core|high|%.0f"
  "full.rate|full handshakes per second reached|high|%.0f"
  "full.count|full handshakes: opened / resumed / failed|-|"
  "resumed.cpu|resumed handshakes: proxy CPU per connection (µs)|low|%.1f"
  "resumed.core|resumed handshakes per second per core|high|%.0f"
  "resumed.rate|resumed handshakes per second reached|high|%.0f"
  "resumed.count|resuming client: opened / resumed / failed|-|"
)
for size in $TP_SIZES; do
  rows+=("rate$size|echoed msg/s at saturation over wss://, $(size_label "$size")|high|%.0f")
  rows+=("cpu$size|CPU per message over wss://, $(size_label "$size") (µs)|low|%.2f")
done
rows+=(
  "mem|memory per idle TLS connection (KiB)|low|%.1f"
  "mem_used|memory per TLS connection that carries messages (KiB)|low|%.1f"
  "negotiated|negotiated (version, cipher suite, key exchange)|-|"
  "routing|keys per backend (of 32)|-|"
  "other|other processes' CPU during the runs, most (% of one CPU)|-|"
)

table=$WORK/table.md
{
  echo "### TLS at the edge, $(date -u '+%Y-%m-%d')"
  echo
  machine_description
  peer_versions
  printf '%s.\n' "$(openssl version | awk '{print $1, $2}')"
  echo
  printf 'Settings: proxy on CPU %s; load generator and both echo backends on CPU %s; ' "$PROXY_CPU" "$LOAD_CPU"
  printf 'one ECDSA P-256 certificate. Handshakes: %s loops, %s s each kind, one echo of %s per connection. ' \
    "$HS_CONCURRENCY" "$HS_DURATION" "$(size_label "$HS_ECHO_SIZE")"
  printf 'Saturation: %s connections × %s messages in flight, %s s per size. ' \
    "$TP_CONNECTIONS" "$TP_WINDOW" "$TP_DURATION"
  printf 'Memory: %s idle connections, RSS %s s after they opened; then %s connections each echoing a message every %s s, RSS %s s after they opened.\n' \
    "$IDLE_CONNECTIONS" "$IDLE_SETTLE" "$IDLE_CONNECTIONS" "$USED_EVERY" "$(calc '%g' "$USED_EVERY + $IDLE_SETTLE")"
  echo
  proxy_table "${rows[@]}"
  echo
  skipped_lines
} >"$table"

echo
cat "$table"
if [[ $OUT != - ]]; then
  write_section "$OUT" tls "$table" 'bash e2e/bench/tls.sh'
  log "wrote the table to $OUT"
fi
