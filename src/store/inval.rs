//! The durable invalidation log of the L2 tier: its stream ids, the
//! decision an instance makes when it reconnects, and the queue of
//! invalidations made while Redis was unreachable.
//!
//! # The log
//!
//! Every invalidation (key, tag, prefix, clear) and every overwrite
//! announcement is appended to one Redis Stream per namespace,
//! `{ns}:inv` (hash-tagged: one slot on a cluster; outside the `ns:*`
//! pattern, since a namespace cannot contain `{`, so purges and scans of the
//! namespace leave it alone), trimmed with `XADD … MAXLEN ~ N`
//! (`l2_invalidation_log_len`, default 10 000). Each instance follows it
//! with `XREAD BLOCK` on a connection of its own and remembers the id of
//! the last entry it applied. The stream ids are the truth: there is no
//! second channel whose messages could arrive in another order.
//!
//! # Reconnecting
//!
//! Losing the connection neither clears L1 nor makes it distrusted: L1
//! keeps serving what it holds within its own freshness (`l1_max_ttl` is an
//! optional bound). On reconnect the instance probes the log (one script:
//! whether its last id is still there, the highest id trimmed, the last id
//! generated, the server's uptime) and [`resume`] decides:
//!
//! - **the same log, nothing trimmed past our id**: read on from our id, in
//!   pages, applying what was missed. No flush.
//! - **the same log, trimmed past our id** (entries we never read are
//!   gone): L1 is cleared, with a warning and `l2_coherence_resets`.
//! - **a different log**: our id never existed in it, or the stream is
//!   missing. This is what a Redis restarted without persistence looks
//!   like (or one restored from an older snapshot). If the server started
//!   during our outage (its uptime is shorter than the outage), the old log
//!   died with the old server, at about the moment our connection broke:
//!   we were following it until then, so nothing is lost *to us* that any
//!   other instance could still tell us. What other instances invalidated
//!   while Redis was down they queued (below) and append when it is back,
//!   into the new log: we read the new log from its very beginning, so
//!   those replays reach our L1. No flush: with 300 hot URLs and Redis
//!   SIGKILLed for 15 s, L1 keeps all of them.
//!   If instead the server has been up all along, the log was deleted or
//!   evicted while we were away: what it held is lost, L1 is cleared
//!   (counted). If the new log was itself already trimmed, likewise.
//!
//! The residual risk, stated: an instance cut off from a Redis that keeps
//! running and receives invalidations, which then dies without persistence
//! before the instance reconnects, misses those invalidations (they were
//! delivered to the old log, not queued by their senders). That takes two
//! failures in a row; a Redis with `appendonly yes` keeps the log and closes
//! it (the id is then found, or the restored log is behind us).
//!
//! # Invalidations made while Redis is unreachable
//!
//! They are queued here ([`Outbox`], at most [`OUTBOX_MAX`]) and replayed
//! when the log is reachable again (the `DEL`s too: a value left in Redis
//! would be read back into the other instances' L1). If the queue
//! overflows, what it held is replaced by one `clear` of the namespace:
//! every L2 entry and every instance's L1 — the honest fallback, rather than
//! letting another instance keep an entry this one invalidated. Each
//! invalidation not sent one by one is counted in
//! `l2_invalidations_dropped`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;

use redis::Value;

use crate::key::KeyHash;

/// The most invalidations queued while Redis is unreachable.
pub(crate) const OUTBOX_MAX: usize = 4096;

/// A Redis Stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct StreamId(pub(crate) u64, pub(crate) u64);

impl StreamId {
    /// `0-0`: before every entry.
    pub(crate) const ZERO: StreamId = StreamId(0, 0);

    pub(crate) fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.trim().split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }

    fn from_value(v: &Value) -> Option<StreamId> {
        StreamId::parse(&text(v)?)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What the probe found about the log, on reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogState {
    /// The stream exists.
    pub(crate) exists: bool,
    /// The entry with our last id is still in it.
    pub(crate) ours_present: bool,
    /// `last-generated-id`.
    pub(crate) last_generated: StreamId,
    /// `max-deleted-entry-id` (`None`: not reported).
    pub(crate) max_deleted: Option<StreamId>,
    /// The server's uptime in seconds (`None`: not reported).
    pub(crate) uptime_secs: Option<u64>,
}

/// Probes the log in one step (a script: one slot on a cluster, and one
/// consistent view). `KEYS[1]` the stream, `ARGV[1]` our last id (or
/// empty). Returns `{exists, uptime, last-generated-id,
/// max-deleted-entry-id, ours present}`.
pub(crate) const PROBE_SCRIPT: &str = r"
local up = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)')) or -1
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, up, '0-0', '', 0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local lg, md = '0-0', ''
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then lg = info[i + 1] end
  if info[i] == 'max-deleted-entry-id' then md = info[i + 1] end
end
local present = 0
if ARGV[1] ~= '' and #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) > 0 then present = 1 end
return {1, up, lg, md, present}
";

impl LogState {
    /// Reads [`PROBE_SCRIPT`]'s reply.
    pub(crate) fn from_reply(v: &Value) -> Option<LogState> {
        let Value::Array(items) = v else { return None };
        let int = |v: &Value| text(v).and_then(|t| t.parse::<i64>().ok());
        let [exists, up, lg, md, present] = items.as_slice() else {
            return None;
        };
        Some(LogState {
            exists: int(exists)? == 1,
            ours_present: int(present)? == 1,
            last_generated: StreamId::from_value(lg)?,
            max_deleted: StreamId::from_value(md),
            uptime_secs: int(up).and_then(|u| u64::try_from(u).ok()),
        })
    }
}

/// Where to read on from after a reconnect, and whether L1 must be cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Read the entries after this id and apply them; L1 is kept.
    From(StreamId),
    /// Entries we never read are gone: clear L1, then read after this id.
    Reset(StreamId, &'static str),
}

/// The decision on reconnect (see the module docs). `last`: the id of the
/// last entry applied; `outage_ms`: how long this instance was without the
/// log.
pub(crate) fn resume(last: StreamId, s: &LogState, outage_ms: u64) -> Resume {
    // The server started during our outage (2 s for the uptime's
    // rounding and the time the probe took).
    let restarted = s
        .uptime_secs
        .is_some_and(|up| up.saturating_mul(1000) <= outage_ms.saturating_add(2000));
    // Anything after `id` trimmed away? Unknown `max-deleted-entry-id`
    // (Redis before 7.0): only if our entry is gone.
    let trimmed_after = |id: StreamId| match s.max_deleted {
        Some(d) => d > id,
        None => !s.ours_present,
    };
    if !s.exists {
        return if restarted {
            Resume::From(StreamId::ZERO)
        } else {
            Resume::Reset(StreamId::ZERO, "the invalidation log is gone")
        };
    }
    let same = s.ours_present || s.max_deleted.is_some_and(|d| d >= last);
    if same {
        return if trimmed_after(last) {
            Resume::Reset(
                s.last_generated,
                "the invalidation log was trimmed past the last entry applied",
            )
        } else {
            Resume::From(last)
        };
    }
    // A different log: recreated, or restored behind us.
    if restarted {
        if trimmed_after(StreamId::ZERO) {
            Resume::Reset(
                s.last_generated,
                "the invalidation log was recreated and already trimmed",
            )
        } else {
            Resume::From(StreamId::ZERO)
        }
    } else if s.last_generated < last && !trimmed_after(StreamId::ZERO) {
        // Behind us on a server that did not restart (e.g. a replica
        // promoted): read whatever comes after what it has.
        Resume::From(s.last_generated)
    } else {
        Resume::Reset(s.last_generated, "the invalidation log was replaced")
    }
}

/// The entries of an `XREAD` / `XRANGE` reply: `(id, values of field m)`.
pub(crate) fn entries(v: &Value) -> Vec<(StreamId, Vec<String>)> {
    let mut out = Vec::new();
    // XREAD: [[key, [entries]]] (RESP2) or {key: [entries]} (RESP3);
    // XRANGE: [entries].
    let list = match v {
        Value::Array(streams)
            if streams
                .first()
                .is_some_and(|s| matches!(s, Value::Array(kv) if kv.len() == 2 && matches!(kv[1], Value::Array(_)) && StreamId::from_value(&kv[0]).is_none())) =>
        {
            streams
                .iter()
                .filter_map(|s| match s {
                    Value::Array(kv) => kv.get(1),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }
        Value::Map(pairs) => pairs.iter().map(|(_, v)| v).collect(),
        Value::Array(_) => vec![v],
        _ => Vec::new(),
    };
    for l in list {
        let Value::Array(items) = l else { continue };
        for item in items {
            let Value::Array(pair) = item else { continue };
            let (Some(id), Some(fields)) = (pair.first(), pair.get(1)) else {
                continue;
            };
            let Some(id) = StreamId::from_value(id) else {
                continue;
            };
            let fields: Vec<&Value> = match fields {
                Value::Array(f) => f.iter().collect(),
                Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => Vec::new(),
            };
            let msgs = fields
                .chunks(2)
                .filter(|kv| kv.len() == 2 && text(kv[0]).as_deref() == Some("m"))
                .filter_map(|kv| text(kv[1]))
                .collect();
            out.push((id, msgs));
        }
    }
    out
}

/// An invalidation waiting for Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    /// Announce an overwrite of this key (its write may have landed).
    Announce(KeyHash),
    /// Delete this key (and its variant index) and announce it.
    Key(KeyHash),
    /// Invalidate a tag again, in L2, and announce it.
    Tag(String),
    /// Invalidate a prefix again, in L2, and announce it.
    Prefix(String),
    /// Clear the namespace, in L2, and announce it.
    Clear,
}

/// Invalidations made while Redis was unreachable, bounded: past
/// [`OUTBOX_MAX`] they are replaced by one [`Pending::Clear`].
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Pending>>,
}

impl Outbox {
    /// Queues `p`; returns how many invalidations will not be sent one by
    /// one (replaced by a clear of the namespace) because the queue is full.
    pub(crate) fn push(&self, p: Pending) -> u64 {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.front() == Some(&Pending::Clear) {
            // A clear is due: it covers this one (it runs later).
            return 0;
        }
        if p == Pending::Clear {
            q.clear();
            q.push_back(p);
            return 0;
        }
        if q.contains(&p) {
            return 0;
        }
        if q.len() >= OUTBOX_MAX {
            let dropped = q.len() as u64 + 1;
            q.clear();
            q.push_back(Pending::Clear);
            return dropped;
        }
        q.push_back(p);
        0
    }

    /// Everything queued, in order, leaving the queue empty.
    pub(crate) fn take(&self) -> Vec<Pending> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.drain(..).collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(exists: bool, present: bool, lg: u64, md: Option<u64>, up: u64) -> LogState {
        LogState {
            exists,
            ours_present: present,
            last_generated: StreamId(lg, 0),
            max_deleted: md.map(|m| StreamId(m, 0)),
            uptime_secs: Some(up),
        }
    }

    const OURS: StreamId = StreamId(1000, 0);

    #[test]
    fn same_log_reads_on_without_a_flush() {
        // Our entry is there, newer ones too, older ones trimmed.
        let s = state(true, true, 5000, Some(500), 3600);
        assert_eq!(resume(OURS, &s, 20_000), Resume::From(OURS));
        // Our entry itself trimmed, nothing after it.
        let s = state(true, false, 5000, Some(1000), 3600);
        assert_eq!(resume(OURS, &s, 20_000), Resume::From(OURS));
    }

    #[test]
    fn trimmed_past_our_id_is_a_reset() {
        let s = state(true, false, 9000, Some(1500), 3600);
        assert!(matches!(
            resume(OURS, &s, 20_000),
            Resume::Reset(StreamId(9000, 0), _)
        ));
        // Without max-deleted-entry-id, a missing entry is a reset.
        let s = state(true, false, 9000, None, 3600);
        assert!(matches!(resume(OURS, &s, 20_000), Resume::Reset(..)));
        let s = state(true, true, 9000, None, 3600);
        assert_eq!(resume(OURS, &s, 20_000), Resume::From(OURS));
    }

    #[test]
    fn a_log_lost_with_a_restarted_server_is_read_from_its_start() {
        // Restarted 15 s ago, we were away 16 s: no stream yet.
        let s = state(false, false, 0, None, 15);
        assert_eq!(resume(OURS, &s, 16_000), Resume::From(StreamId::ZERO));
        // A new stream with other instances' replays in it.
        let s = state(true, false, 7000, Some(0), 15);
        assert_eq!(resume(OURS, &s, 16_000), Resume::From(StreamId::ZERO));
        // ... already trimmed: a reset.
        let s = state(true, false, 7000, Some(6000), 15);
        assert!(matches!(resume(OURS, &s, 16_000), Resume::Reset(..)));
    }

    #[test]
    fn a_log_lost_on_a_server_that_stayed_up_is_a_reset() {
        // Up for an hour, we were away 16 s, the stream is gone.
        let s = state(false, false, 0, None, 3600);
        assert!(matches!(resume(OURS, &s, 16_000), Resume::Reset(..)));
        // Replaced by another stream.
        let s = state(true, false, 7000, Some(0), 3600);
        assert!(matches!(resume(OURS, &s, 16_000), Resume::Reset(..)));
        // Behind us (a promoted replica), nothing trimmed: read on.
        let s = state(true, false, 900, Some(0), 3600);
        assert_eq!(resume(OURS, &s, 16_000), Resume::From(StreamId(900, 0)));
    }

    #[test]
    fn ids_parse_and_order() {
        assert_eq!(StreamId::parse("12-3"), Some(StreamId(12, 3)));
        assert_eq!(StreamId::parse("x-3"), None);
        assert!(StreamId(12, 3) < StreamId(12, 4) && StreamId(12, 9) < StreamId(13, 0));
        assert_eq!(StreamId(5, 1).to_string(), "5-1");
    }

    #[test]
    fn xread_and_probe_replies_decode() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = |id: &str, ms: &[&str]| {
            Value::Array(vec![
                bulk(id),
                Value::Array(ms.iter().flat_map(|m| [bulk("m"), bulk(m)]).collect()),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("{t}:inv"),
            Value::Array(vec![entry("1-0", &["a", "b"]), entry("2-5", &["c"])]),
        ])]);
        assert_eq!(
            entries(&reply),
            vec![
                (StreamId(1, 0), vec!["a".to_owned(), "b".to_owned()]),
                (StreamId(2, 5), vec!["c".to_owned()])
            ]
        );
        let xrange = Value::Array(vec![entry("3-0", &["d"])]);
        assert_eq!(
            entries(&xrange),
            vec![(StreamId(3, 0), vec!["d".to_owned()])]
        );
        assert!(entries(&Value::Nil).is_empty());

        let probe = Value::Array(vec![
            Value::Int(1),
            Value::Int(42),
            bulk("9-1"),
            bulk("3-0"),
            Value::Int(0),
        ]);
        assert_eq!(
            LogState::from_reply(&probe),
            Some(state(true, false, 9, Some(3), 42)).map(|mut s| {
                s.last_generated = StreamId(9, 1);
                s
            })
        );
    }

    #[test]
    fn the_outbox_is_bounded_and_overflows_into_one_clear() {
        let o = Outbox::default();
        for i in 0..OUTBOX_MAX as u128 {
            assert_eq!(o.push(Pending::Key(KeyHash(i))), 0);
        }
        assert_eq!(o.push(Pending::Key(KeyHash(1))), 0, "already queued");
        assert_eq!(o.len(), OUTBOX_MAX);
        assert_eq!(o.push(Pending::Tag("t".into())), OUTBOX_MAX as u64 + 1);
        assert_eq!(o.take(), vec![Pending::Clear]);
        assert!(o.is_empty());
        assert_eq!(o.push(Pending::Clear), 0);
        assert_eq!(
            o.push(Pending::Prefix("/p".into())),
            0,
            "covered by the clear"
        );
        assert_eq!(o.take(), vec![Pending::Clear]);
    }
}
