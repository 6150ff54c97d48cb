# shellcheck shell=bash
# Functions shared by the interleaved-rounds wrk scripts
# (benches/proxy_e2e.sh, bench-peers/e2e.sh); sourced, not run.

# wrk_figures OUTPUT: from the output of `wrk --latency`, prints
# "<requests/s> <p99 in us> <completed requests>". When wrk saw a non-2xx
# answer or a socket error, completed nothing, or printed what this cannot
# read, prints why and returns 1.
wrk_figures() {
    local out=$1 bad rps reqs p99
    bad=$(grep -E '^ *(Non-2xx or 3xx responses|Socket errors):' <<<"$out" || true)
    if [[ -n $bad ]]; then
        echo "$bad"
        return 1
    fi
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    reqs=$(awk '/ requests in / { print $1 }' <<<"$out")
    # `99%   1.23ms` (wrk prints us, ms or s).
    if ! p99=$(awk '$1 == "99%" {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
        m = (u == "us") ? 1 : (u == "ms") ? 1000 : (u == "s") ? 1000000 : -1
        if (m < 0) exit 1
        printf "%.1f", v * m }' <<<"$out"); then
        echo "cannot read p99 from: $out"
        return 1
    fi
    if [[ -z $rps || -z $p99 || -z $reqs ]]; then
        echo "cannot parse wrk output: $out"
        return 1
    fi
    if ((reqs == 0)); then
        echo "no request completed"
        return 1
    fi
    echo "$rps $p99 $reqs"
}

# Median of the numbers given as arguments (mean of the middle two if even).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) printf "%.4f", v[(NR + 1) / 2]; else printf "%.4f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Per-round ratios of two lists of the same length ("a1 a2 ..." / "b1 b2 ...").
ratios() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i++) printf "%.4f ", x[i] / y[i] }'
}
