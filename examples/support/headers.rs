//! Header handling shared by `examples/proxy.rs` and the plain reverse
//! proxy of `examples/bench_refs.rs` (so that the benchmark's reference is
//! tuned the same way): headers are removed by looking at each name the
//! message has once, not by looking up (and parsing) every name that might
//! be there.
//!
//! Included as a module (`#[path = "support/headers.rs"]`).

#![allow(dead_code, unreachable_pub)]

use http::header::{
    HeaderName, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;

/// Headers that describe one connection, not the message (RFC 9110
/// §7.6.1), plus the proxy authentication pair, which is meant for this hop
/// only.
pub static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
];

/// Removes every header whose name `drop` picks. Each name is looked at
/// once; nothing is allocated unless a header goes.
pub fn remove_where(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    let doomed: Vec<HeaderName> = headers.keys().filter(|n| drop(n)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes the hop-by-hop headers, and the ones `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    remove_where(headers, |n| HOP_BY_HOP.contains(n) || named.contains(n));
}

#[cfg(test)]
mod tests {
    use super::strip_hop_by_hop;
    use http::HeaderMap;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go_the_rest_stays() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-private"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("x-private", "1"),
            ("accept", "*/*"),
            ("x-other", "2"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-other"]);
    }
}
