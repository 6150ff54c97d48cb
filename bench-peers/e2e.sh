#!/usr/bin/env bash
# End-to-end load benchmark: wrk on loopback against one axum app served
# once per side (examples/e2e_server.rs):
#
#   static             the bare handler (1 KiB body, Cache-Control: max-age=3600)
#   tiered             the same handler behind tower_tiered_cache::CacheLayer
#                      (default builder): fresh L1 hits
#   tower_http_cache   the same behind tower-http-cache 0.6.1 (in-memory, TTL 3600 s)
#   http_cache_server  the same behind http-cache-tower-server 0.2.6 (MokaManager)
#
# Measured: requests/s and the 99th percentile latency that wrk reports for
# `GET /api/item?id=42` over keep-alive connections, and the server's CPU
# time (user + system, from /proc) per completed request, on each side in
# turn, interleaved over several rounds (the side order rotates every round).
# The table shows, per side and metric, the median of the rounds, the ratio
# of the medians to `static`, and in brackets the median of the per-round
# ratios to `static` (each side against the static run of the same round:
# the more robust figure on a machine whose load drifts; the target check
# uses it for requests/s).
#
# Checks: before timing, each side gets two requests: the first stores the
# entry, the second must be a hit (tower-tiered-cache: `cache-status: ...;
# hit`, http-cache: `x-cache: HIT`; tower-http-cache has no marker, so its
# handler count stands in), with status 200, the 1 KiB body and
# `Cache-Control` intact. After timing, each cached side's handler must have
# been called exactly once (every timed request was a hit), and the static
# side's at least once per completed request.
#
# Run from bench-peers/:   ./e2e.sh
#
# Environment (defaults in brackets):
#   E2E_DURATION     seconds per wrk run [3]
#   E2E_ROUNDS       rounds over all sides [5]
#   E2E_WARMUP       seconds of one discarded wrk run per side first, 0 = none [1]
#   E2E_CONNECTIONS  wrk connections [32]
#   E2E_THREADS      wrk threads [1]
#   E2E_WORKERS      server tokio worker threads [1]
#   E2E_SIDES        sides to run, `static` first ["static tiered tower_http_cache http_cache_server"]
#   E2E_PIN          1 = pin the server to CPU 0 and wrk to CPU 1 (taskset) [0]
#   E2E_TARGET       the ratio `tiered` should reach vs `static` [0.9]
#
# With the defaults: 4 sides x (1 s + 5 x 3 s) = 64 s of wrk, about 70 s in
# all once the example is built (the first build of bench-peers compiles
# ~330 crates). The script exits non-zero if a check fails; missing the
# target ratio is reported but not fatal (the machine is noisy).
set -euo pipefail

DURATION=${E2E_DURATION:-3}
ROUNDS=${E2E_ROUNDS:-5}
WARMUP=${E2E_WARMUP:-1}
CONNECTIONS=${E2E_CONNECTIONS:-32}
THREADS=${E2E_THREADS:-1}
WORKERS=${E2E_WORKERS:-1}
SIDES=${E2E_SIDES:-"static tiered tower_http_cache http_cache_server"}
PIN=${E2E_PIN:-0}
TARGET=${E2E_TARGET:-0.9}
ITEM_PATH="/api/item?id=42"

die() {
    echo "e2e.sh: $*" >&2
    exit 1
}

for v in DURATION ROUNDS WARMUP CONNECTIONS THREADS WORKERS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "E2E_$v must be a whole number, got '${!v}'"
done
((DURATION >= 1 && ROUNDS >= 1 && CONNECTIONS >= 1 && THREADS >= 1 && WORKERS >= 1)) ||
    die "E2E_DURATION, E2E_ROUNDS, E2E_CONNECTIONS, E2E_THREADS and E2E_WORKERS must be at least 1"
read -r -a SIDE_LIST <<<"$SIDES"
[[ ${SIDE_LIST[0]:-} == static ]] || die "E2E_SIDES must start with 'static' (the baseline)"

cd "$(dirname "${BASH_SOURCE[0]}")"
# wrk_figures, median, ratios (shared with benches/proxy_e2e.sh).
# shellcheck source=../benches/support/wrk_rounds.sh
. ../benches/support/wrk_rounds.sh

# --- tools -------------------------------------------------------------------

if ! command -v wrk >/dev/null 2>&1; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "wrk not found: installing it with apt-get" >&2
        apt-get install -y wrk >&2 || { apt-get update >&2 && apt-get install -y wrk >&2; } ||
            die "could not install wrk"
    else
        die "wrk is not installed (Debian/Ubuntu: sudo apt-get install -y wrk; or https://github.com/wg/wrk)"
    fi
fi
command -v curl >/dev/null 2>&1 || die "curl is not installed"
SERVER_PIN=()
WRK_PIN=()
if [[ $PIN == 1 ]]; then
    command -v taskset >/dev/null 2>&1 || die "E2E_PIN=1 needs taskset (util-linux)"
    SERVER_PIN=(taskset -c 0)
    WRK_PIN=(taskset -c 1)
fi

# --- build and start the server ----------------------------------------------

echo "building examples/e2e_server.rs (release)..." >&2
cargo build --release --example e2e_server >&2
BIN="${CARGO_TARGET_DIR:-target}/release/examples/e2e_server"
[[ -x $BIN ]] || die "built, but $BIN is missing"

TMP=$(mktemp -d)
SERVER_PID=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${SERVER_PIN[@]}" "$BIN" --workers "$WORKERS" >"$TMP/server.out" 2>"$TMP/server.err" &
SERVER_PID=$!

ADDR_LINE=
for _ in $(seq 100); do
    ADDR_LINE=$(grep -m1 '^E2E_ADDRS ' "$TMP/server.out" || true)
    [[ -n $ADDR_LINE ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "server exited: $(cat "$TMP/server.err")"
    sleep 0.1
done
[[ -n $ADDR_LINE ]] || die "no E2E_ADDRS line from the server within 10 s"

declare -A ADDR
# shellcheck disable=SC2086 # split the line into name=addr words
for kv in ${ADDR_LINE#E2E_ADDRS }; do
    ADDR[${kv%%=*}]=${kv#*=}
done
for side in "${SIDE_LIST[@]}"; do
    [[ -n ${ADDR[$side]:-} ]] || die "unknown side '$side' (the server has: ${!ADDR[*]})"
done

# --- check each side before timing --------------------------------------------

calls() {
    curl -sS --max-time 5 "http://${ADDR[$1]}/calls"
}

# Prints the response headers (lower-cased names, no CR) of one GET; checks
# status 200, the 1 KiB body and the stored Cache-Control.
get_checked() {
    local side=$1 body_len headers
    headers=$(curl -sS --max-time 5 -D - -o "$TMP/body" "http://${ADDR[$side]}$ITEM_PATH" | tr -d '\r')
    body_len=$(wc -c <"$TMP/body")
    [[ $headers == "HTTP/1.1 200"* ]] || die "$side: not a 200: $(head -1 <<<"$headers")"
    ((body_len == 1024)) || die "$side: body is $body_len bytes, not 1024"
    grep -qi '^cache-control: max-age=3600$' <<<"$headers" || die "$side: Cache-Control lost"
    printf '%s\n' "$headers"
}

for side in "${SIDE_LIST[@]}"; do
    get_checked "$side" >/dev/null
    headers=$(get_checked "$side")
    case $side in
    tiered)
        grep -qiE '^cache-status: tower-tiered-cache; hit' <<<"$headers" ||
            die "tiered: second request not a hit: $(grep -i '^cache-status' <<<"$headers")"
        ;;
    http_cache_server)
        grep -qi '^x-cache: HIT$' <<<"$headers" || die "http_cache_server: second request not x-cache: HIT"
        ;;
    esac
    n=$(calls "$side")
    if [[ $side == static ]]; then
        ((n == 2)) || die "static: handler called $n times for 2 requests"
    else
        ((n == 1)) || die "$side: handler called $n times for 2 requests (not a hit)"
    fi
done
echo "checked: every cached side served its second request from the cache" >&2

# --- timed runs ----------------------------------------------------------------

# The server's CPU time so far (user + system, all threads), in clock ticks.
server_ticks() {
    awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"
}

# One wrk run; prints "<requests/s> <p99 in us> <completed requests>
# <server CPU us per request>".
run_wrk() {
    local side=$1 secs=$2 out figures reqs t0 t1 cpu
    t0=$(server_ticks)
    out=$(timeout $((secs + 30)) "${WRK_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" \
        --latency "http://${ADDR[$side]}$ITEM_PATH" 2>&1) || die "$side: wrk failed: $out"
    t1=$(server_ticks)
    figures=$(wrk_figures "$out") || die "$side: $figures"
    read -r _ _ reqs <<<"$figures"
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.3f", t * 1e6 / hz / n }')
    echo "$figures $cpu"
}

CLK_TCK=$(getconf CLK_TCK)
[[ -r /proc/$SERVER_PID/stat ]] || die "no /proc/$SERVER_PID/stat (Linux only)"

# Per side, space-separated, one value per round (round order).
declare -A RPS P99 CPU COMPLETED
for side in "${SIDE_LIST[@]}"; do
    RPS[$side]=
    P99[$side]=
    CPU[$side]=
    COMPLETED[$side]=0
done

nsides=${#SIDE_LIST[@]}
echo "wrk -t$THREADS -c$CONNECTIONS, ${DURATION} s per run, $ROUNDS rounds over $nsides sides" \
    "(server: $WORKERS worker thread(s)${SERVER_PIN:+, server on CPU 0, wrk on CPU 1})" >&2
echo "about $((nsides * (WARMUP + ROUNDS * DURATION))) s of wrk" >&2
if ((WARMUP > 0)); then
    for side in "${SIDE_LIST[@]}"; do
        res=$(run_wrk "$side" "$WARMUP")
        read -r _ _ reqs _ <<<"$res"
        COMPLETED[$side]=$((COMPLETED[$side] + reqs))
    done
fi
for ((r = 0; r < ROUNDS; r++)); do
    line="round $((r + 1))/$ROUNDS:"
    for ((k = 0; k < nsides; k++)); do
        side=${SIDE_LIST[$(((k + r) % nsides))]}
        res=$(run_wrk "$side" "$DURATION")
        read -r rps p99 reqs cpu <<<"$res"
        RPS[$side]+="$rps "
        P99[$side]+="$p99 "
        CPU[$side]+="$cpu "
        COMPLETED[$side]=$((COMPLETED[$side] + reqs))
        line+=" $side $(printf '%.0f' "$rps")/s p99 $(printf '%.0f' "$p99") us cpu $(printf '%.1f' "$cpu") us;"
    done
    echo "$line" >&2
done

# --- report --------------------------------------------------------------------

# One table cell pair for a metric: "<median> <ratio of the medians to
# static> <median of the per-round ratios to static>".
metric() {
    local values=$1 base=$2 med base_med
    # shellcheck disable=SC2086 # the lists are space-separated numbers
    med=$(median $values)
    # shellcheck disable=SC2086
    base_med=$(median $base)
    # shellcheck disable=SC2046
    echo "$med $(awk -v a="$med" -v b="$base_med" 'BEGIN { printf "%.4f", a / b }')" \
        "$(median $(ratios "$values" "$base"))"
}

echo
echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, GET $ITEM_PATH (1 KiB body), $ROUNDS rounds;" \
    "server $WORKERS worker thread(s)${SERVER_PIN:+, server on CPU 0, wrk on CPU 1}"
echo "each metric: median of the rounds; x static: ratio of the medians [median of the per-round ratios]"
echo "cpu: the server's CPU time (user + system) per completed request"
printf '%-18s %9s %13s %9s %13s %10s %13s   %s\n' side "req/s" "x static" "p99 (us)" "x static" \
    "cpu (us)" "x static" "req/s per round"
tiered_ratio=
for side in "${SIDE_LIST[@]}"; do
    read -r rps rr rr_round <<<"$(metric "${RPS[$side]}" "${RPS[static]}")"
    read -r p99 pr pr_round <<<"$(metric "${P99[$side]}" "${P99[static]}")"
    read -r cpu cr cr_round <<<"$(metric "${CPU[$side]}" "${CPU[static]}")"
    # shellcheck disable=SC2086
    rounds=$(for v in ${RPS[$side]}; do printf '%.0f ' "$v"; done)
    printf '%-18s %9.0f %13s %9.0f %13s %10.2f %13s   %s\n' "$side" "$rps" \
        "$(printf '%.2f [%.2f]' "$rr" "$rr_round")" "$p99" "$(printf '%.2f [%.2f]' "$pr" "$pr_round")" \
        "$cpu" "$(printf '%.2f [%.2f]' "$cr" "$cr_round")" "$rounds"
    if [[ $side == tiered ]]; then
        tiered_ratio=$(printf '%.2f' "$rr_round")
    fi
done
echo

# --- handler calls -------------------------------------------------------------

failed=0
for side in "${SIDE_LIST[@]}"; do
    n=$(calls "$side")
    if [[ $side == static ]]; then
        # wrk counts completed requests; a few more may have been in flight.
        want=$((COMPLETED[static] + 2))
        if ((n < want)); then
            echo "FAIL static: handler called $n times, wrk completed $want requests" >&2
            failed=1
        fi
        echo "handler calls: static $n (>= $want requests)"
    else
        if ((n != 1)); then
            echo "FAIL $side: handler called $n times, not once: not every request was a hit" >&2
            failed=1
        fi
        echo "handler calls: $side $n (over $((COMPLETED[$side] + 2)) requests)"
    fi
done

if [[ -n $tiered_ratio ]]; then
    if awk -v a="$tiered_ratio" -v t="$TARGET" 'BEGIN { exit !(a >= t) }'; then
        echo "target: tiered at ${tiered_ratio}x static req/s (median per-round ratio, >= ${TARGET}x): met"
    else
        echo "target: tiered at ${tiered_ratio}x static req/s (median per-round ratio, < ${TARGET}x): NOT met"
    fi
fi
exit "$failed"
