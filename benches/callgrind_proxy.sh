#!/usr/bin/env bash
# Instructions (user space) and heap allocations per request of one server
# of `benches/proxy_e2e.sh`, under `valgrind --tool=callgrind`: the figure
# that says where a path's CPU goes, repeatable whatever else the machine
# is doing (callgrind counts instructions, not seconds).
#
#   benches/callgrind_proxy.sh SERVER PATH [PROXY ARGS...]
#
#   SERVER  proxy | plain-proxy | static | l2-ref
#   PATH    the path wrk asks for (/pass, /hit1k, /hit64k, /l2/0 ...), or
#           keys:N for /l2/0 .. /l2/N-1 at random (each asked once first)
#
# The origin (`bench_refs origin`) runs outside valgrind. The server gets
# one request first (a hit's first miss), then `wrk -t1 -c4` for
# $CALLGRIND_WARMUP s, the counters are zeroed, wrk runs $CALLGRIND_SECONDS s,
# and the counters are dumped. Printed: requests, instructions per
# request, allocations (`malloc` + `realloc` calls; `calloc`'s too) per
# request, and the $CALLGRIND_TOP functions with the most inclusive
# instructions (per request). The callgrind file stays in
# $CALLGRIND_OUT (default: a temp dir, removed) for callgrind_annotate.
#
# Built with line tables (CARGO_PROFILE_RELEASE_DEBUG=line-tables-only) in
# ${CALLGRIND_TARGET_DIR:-target/callgrind}, so function names resolve and
# the normal release build is left alone.
set -euo pipefail

SERVER=${1:?usage: callgrind_proxy.sh proxy|plain-proxy|static|l2-ref PATH [ARGS...]}
REQ_PATH=${2:?usage: callgrind_proxy.sh SERVER PATH [ARGS...]}
shift 2
WARMUP=${CALLGRIND_WARMUP:-3}
SECONDS_RUN=${CALLGRIND_SECONDS:-10}
TOP=${CALLGRIND_TOP:-25}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CALLGRIND_TARGET_DIR:-$ROOT/target/callgrind}

for tool in valgrind callgrind_control callgrind_annotate wrk curl; do
    command -v "$tool" >/dev/null || {
        echo "callgrind_proxy.sh: $tool is missing (apt-get install valgrind wrk curl)" >&2
        exit 1
    }
done

echo "building (release, line tables) in $TARGET..." >&2
(cd "$ROOT" && CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR=$TARGET \
    nice -n 10 cargo build --release --features redis,admin,opentelemetry \
    --example proxy --example bench_refs >&2)
BIN=$TARGET/release/examples

TMP=$(mktemp -d)
OUT=${CALLGRIND_OUT:-$TMP}
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

# listen NAME: waits (up to 60 s: valgrind starts slowly) for NAME's
# `listening on http://ADDR` and prints ADDR.
listen() {
    local line=
    for _ in $(seq 600); do
        line=$(grep -m1 -o 'listening on http://[0-9.:]*' "$TMP/$1.out" 2>/dev/null || true)
        [[ -n $line ]] && break
        sleep 0.1
    done
    [[ -n $line ]] || {
        echo "callgrind_proxy.sh: $1 did not start: $(cat "$TMP/$1.err")" >&2
        exit 1
    }
    echo "${line#listening on http://}"
}

"$BIN/bench_refs" origin >"$TMP/origin.out" 2>"$TMP/origin.err" &
PIDS+=($!)
ORIGIN=$(listen origin)

case $SERVER in
proxy) CMD=("$BIN/proxy" --listen 127.0.0.1:0 --upstream "http://$ORIGIN" "$@") ;;
plain-proxy) CMD=("$BIN/bench_refs" plain-proxy --upstream "$ORIGIN" "$@") ;;
static | l2-ref) CMD=("$BIN/bench_refs" "$SERVER" "$@") ;;
*)
    echo "callgrind_proxy.sh: unknown server $SERVER" >&2
    exit 1
    ;;
esac
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
    "${CMD[@]}" >"$TMP/server.out" 2>"$TMP/server.err" &
PIDS+=($!)
SERVER_ADDR=$(listen server)

if [[ $REQ_PATH == keys:* ]]; then
    # /l2/0 .. /l2/N-1 at random (proxy_e2e_keys.lua), each asked once
    # first: few requests share a key's flight, as in proxy_e2e.sh's L2 row.
    NKEYS=${REQ_PATH#keys:}
    for ((i = 0; i < NKEYS; i++)); do
        curl -sS -o /dev/null --max-time 30 "http://$SERVER_ADDR/l2/$i"
    done
    WRK_TARGET=(-s "$ROOT/benches/proxy_e2e_keys.lua" "http://$SERVER_ADDR/" -- "$NKEYS")
else
    curl -sS -o /dev/null --max-time 30 "http://$SERVER_ADDR$REQ_PATH"
    WRK_TARGET=("http://$SERVER_ADDR$REQ_PATH")
fi
[[ $WARMUP -gt 0 ]] && wrk -t1 -c4 -d"${WARMUP}s" "${WRK_TARGET[@]}" >/dev/null
callgrind_control -z >/dev/null
wrk -t1 -c4 -d"${SECONDS_RUN}s" "${WRK_TARGET[@]}" >"$TMP/wrk.txt"
callgrind_control -d >/dev/null
REQUESTS=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
# The dump made by -d is the newest file with a part suffix.
DUMP=$(ls -t "$OUT"/callgrind.out.* | head -1)
echo "server: $SERVER ${*:-}  path: $REQ_PATH  requests: $REQUESTS"
callgrind_annotate --inclusive=yes "$DUMP" 2>/dev/null >"$TMP/annotate.txt"
TOTAL=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$TMP/annotate.txt")
echo "instructions per request: $((TOTAL / REQUESTS))"
# Allocation calls: the calls into malloc/realloc/calloc the dump records
# (names are compressed: `cfn=(N) name` once, `cfn=(N)` after).
CALLS=$(python3 - "$DUMP" <<'PY'
import re, sys
names, want, total = {}, False, 0
for line in open(sys.argv[1], errors="replace"):
    if line.startswith(("cfn=", "fn=")):
        m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            name = names.get(m.group(1), "")
        else:
            name = line.split("=", 1)[1].strip()
        want = line.startswith("cfn=") and name in ("malloc", "realloc", "calloc")
    elif line.startswith("calls=") and want:
        total += int(line[6:].split()[0])
        want = False
print(total)
PY
)
echo "allocations per request: $(awk -v c="$CALLS" -v r="$REQUESTS" 'BEGIN { printf "%.1f", c / r }')"
echo "top $TOP by inclusive instructions per request:"
awk -v r="$REQUESTS" -v top="$TOP" '
    /^-+$/ { dashes++; next }
    dashes >= 3 && NF >= 2 && $1 ~ /^[0-9,]+$/ {
        n = $1; gsub(",", "", n); $1 = ""; $2 = $2; sub(/^ +/, "");
        printf "%10d  %s\n", n / r, substr($0, 1, 150); if (++k >= top) exit
    }' "$TMP/annotate.txt"
