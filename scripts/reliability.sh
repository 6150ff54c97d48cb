#!/usr/bin/env bash
# The reliability scenarios of issues 11 and 12 (hostile clients, hung
# origins, memory budget, a Redis that dies under load), seen through
# examples/proxy: builds the proxy once in release, then runs
# scripts/reliability.py, which starts an origin and a proxy per scenario,
# measures, and prints one table (scenario | bound | measured |
# PASS/FAIL/SKIP).
#
# Usage:
#   scripts/reliability.sh [--only N[,M|N-M]] [--quick] [--ignore-missing-flags]
#                          [--proxy-arg ARG]... [--logdir DIR]
#
# Environment:
#   PROXY_BIN           use this proxy binary; skips the build
#   PROXY_ARGS          extra arguments for every proxy started (shell words)
#   FEATURES            cargo features for the build
#                       [default: admin,opentelemetry,redis]
#   CARGO_TARGET_DIR    as cargo understands it
#   RELIABILITY_LOGDIR  where the proxies' logs go [default: a new temp dir]
#   REDIS_SERVER        the redis-server for scenario 7's L2 part and scenario 9
#                       [default: redis-server on PATH; without one scenario 7's
#                       L2 part is left out and scenario 9 is skipped]
#
# Exit status: 0 when every scenario that ran passed, 1 when one failed,
# 2 on a usage or set-up error. A scenario needing a flag the proxy's
# --help does not list prints "SKIP: proxy lacks --flag" and is skipped.
# Bounded: every loop has a count and a deadline; a full run takes about
# 2 minutes after the build (scenario 9 alone about 35 s). Everything
# started is stopped on exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

command -v python3 >/dev/null || { echo "reliability: python3 is required" >&2; exit 2; }

if [[ -z "${PROXY_BIN:-}" ]]; then
    features="${FEATURES:-admin,opentelemetry,redis}"
    echo "reliability: building the proxy (release, features $features)" >&2
    # The binary is the one cargo reports for this build (wherever the
    # target directory is configured).
    json="$(mktemp)"
    if ! (cd "$root" && cargo build --release --example proxy --features "$features" \
            --message-format=json-render-diagnostics) >"$json"; then
        rm -f "$json"
        echo "reliability: build failed" >&2
        exit 2
    fi
    PROXY_BIN="$(python3 -c '
import json, sys
exe = ""
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    t = msg.get("target") or {}
    if msg.get("reason") == "compiler-artifact" and t.get("name") == "proxy" \
            and "example" in t.get("kind", []) and msg.get("executable"):
        exe = msg["executable"]
print(exe)
' "$json")"
    rm -f "$json"
    [[ -n "$PROXY_BIN" ]] || { echo "reliability: cargo reported no proxy executable" >&2; exit 2; }
fi
[[ -x "$PROXY_BIN" ]] || { echo "reliability: no proxy binary at $PROXY_BIN" >&2; exit 2; }

# Python stops its own proxies, origins and redis-server on exit and on
# SIGINT/SIGTERM/SIGHUP; the trap passes our signals on to it (by PID).
py_pid=""
stop_py() {
    if [[ -n "$py_pid" ]] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$py_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$py_pid" 2>/dev/null || true
    fi
}
trap 'stop_py' EXIT
trap 'stop_py; exit 130' INT
trap 'stop_py; exit 143' TERM HUP

python3 -u "$here/reliability.py" --proxy "$PROXY_BIN" "$@" &
py_pid=$!
set +e
wait "$py_pid"
rc=$?
set -e
py_pid=""
exit "$rc"
