#!/usr/bin/env bash
# Soak the Redis tests: builds every test binary that starts its own
# redis-server (tests/*.rs that use tests/support/redis.rs) once, then runs
# all of them RUNS times in a row while BUSY busy loops (`yes > /dev/null`)
# load the cores, and prints one line per run and binary with its
# passed/failed counts, then a summary.
#
# Usage:
#   scripts/redis-soak.sh [RUNS] [BUSY]      [default: 5 runs, 2 busy loops]
#
# Environment:
#   SOAK_TESTS   space-separated test binaries to run [default: every
#                tests/*.rs that declares or imports `redis_support`]
#   SOAK_LOGDIR  where each run's output goes [default: a new temp dir]
#   SOAK_TIMEOUT seconds one binary may run before it counts as failed
#                [default: 900]
#   CARGO_TARGET_DIR as cargo understands it
#   CI           set to `true` unless given: a test never skips for want of Redis
#
# Exit status: 0 when every binary passed every run, 1 when one failed,
# 2 on a usage or build error. Bounded: RUNS runs, each binary under
# `timeout`; the busy loops are killed on exit (trap), whatever the exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

runs="${1:-5}"
busy="${2:-2}"
per_binary_timeout="${SOAK_TIMEOUT:-900}"
[[ "$runs" =~ ^[0-9]+$ && "$busy" =~ ^[0-9]+$ && "$runs" -ge 1 ]] || {
    echo "usage: $0 [RUNS] [BUSY]" >&2
    exit 2
}
command -v jq >/dev/null || { echo "redis-soak: jq is required" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "redis-soak: redis-server is required" >&2; exit 2; }

if [[ -n "${SOAK_TESTS:-}" ]]; then
    read -r -a tests <<<"$SOAK_TESTS"
else
    tests=()
    for f in "$root"/tests/*.rs; do
        # Direct users of the support module, and suites that take it from
        # another file (`use suite::{redis_support, ...}`).
        grep -qE '^mod redis_support;|^use suite::\{redis_support' "$f" || continue
        name="$(basename "$f" .rs)"
        # The support library's own self-test is not a cache test.
        [[ "$name" == redis_support_selftest ]] && continue
        tests+=("$name")
    done
fi

# A test that cannot start Redis fails rather than skips (see
# tests/support/redis.rs: `skip_if_no_redis` panics with CI set).
export CI="${CI:-true}"

logdir="${SOAK_LOGDIR:-$(mktemp -d -t redis-soak.XXXXXX)}"
mkdir -p "$logdir"

# Build once; take each binary's path from cargo's own report.
echo "redis-soak: building ${#tests[@]} test binaries (--all-features)" >&2
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
json="$logdir/build.json"
if ! (cd "$root" && cargo test --all-features --no-run --message-format=json "${args[@]}" >"$json"); then
    echo "redis-soak: build failed" >&2
    exit 2
fi
declare -A bin
for t in "${tests[@]}"; do
    path="$(jq -r --arg t "$t" 'select(.reason == "compiler-artifact" and .target.name == $t
        and (.target.kind | index("test")) and .executable != null) | .executable' "$json" | tail -n1)"
    [[ -n "$path" && -x "$path" ]] || { echo "redis-soak: no binary for $t" >&2; exit 2; }
    bin[$t]="$path"
done

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for ((i = 0; i < busy; i++)); do
    yes >/dev/null &
    pids+=($!)
done
echo "redis-soak: $busy busy loops (pids ${pids[*]:-none}), $runs runs, logs in $logdir" >&2

failed_total=0
summary=()
for ((run = 1; run <= runs; run++)); do
    run_pass=0
    run_fail=0
    for t in "${tests[@]}"; do
        log="$logdir/run$run-$t.log"
        start=$SECONDS
        set +e
        (cd "$root" && timeout --kill-after=30 "$per_binary_timeout" "${bin[$t]}" >"$log" 2>&1)
        rc=$?
        set -e
        # libtest's summary line: "test result: ok. 12 passed; 0 failed; ..."
        line="$(grep -E '^test result:' "$log" | tail -n1 || true)"
        passed="$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$line")"
        failed="$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$line")"
        passed="${passed:-0}"
        failed="${failed:-0}"
        if [[ $rc -ne 0 && $failed -eq 0 ]]; then failed=1; fi # crash or timeout
        run_pass=$((run_pass + passed))
        run_fail=$((run_fail + failed))
        load="$(cut -d' ' -f1-3 /proc/loadavg)"
        printf 'run %d %-22s passed %3d failed %2d rc %3d %4ds load %s\n' \
            "$run" "$t" "$passed" "$failed" "$rc" $((SECONDS - start)) "$load"
        if [[ $failed -ne 0 ]]; then
            grep -E '^test .* FAILED$|^    [a-z_0-9:]+$' "$log" | sed 's/^/    /' || true
        fi
    done
    summary+=("run $run: $run_pass passed, $run_fail failed")
    failed_total=$((failed_total + run_fail))
done

printf '%s\n' "${summary[@]}"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
[[ $failed_total -eq 0 ]]
