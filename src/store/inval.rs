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
//! whether its last id is still there, the oldest id, the length, how many
//! entries were ever added, and the server's `run_id`, which changes with
//! every restart) and [`resume`] decides:
//!
//! - **our entry is still there**: trims remove the oldest entries, so
//!   everything after it is there too. Read on from our id, in pages,
//!   applying what was missed. No flush.
//! - **older entries are there, ours is not**: a log restored from disk
//!   (`appendonly`) without its last second, all of which we had applied.
//!   Read on from our id.
//! - **every entry is newer than ours, same server**: the log was trimmed
//!   past our id (or deleted and written again): entries we never read are
//!   gone. L1 is cleared, with a warning and `l2_coherence_resets`.
//! - **the stream is missing, or every entry is newer than ours and nothing
//!   was ever trimmed from it, on a restarted server** (new `run_id`): what
//!   a Redis restarted without persistence looks like. The old log died
//!   with the old server, at about the moment our connection broke: we were
//!   following it until then, so nothing is lost *to us* that any other
//!   instance could still tell us. What other instances invalidated while
//!   Redis was down they queued (below) and append when it is back, into
//!   the new log: we read the new log from its very beginning, so those
//!   replays reach our L1. No flush: with 300 hot URLs and Redis SIGKILLed
//!   for 15 s, L1 keeps all of them. (A new log already trimmed: a reset.)
//! - **the stream is missing on the same server**: deleted or evicted
//!   while we were away; what it held is lost: a reset.
//!
//! - **another master, with Sentinel** (the master's address and `run_id`
//!   both changed: a failover, see [`after_failover`]): the new master's
//!   log is the copy it had as a replica, which replication, being
//!   asynchronous, may have left behind the old master's: behind what we
//!   applied (then the log "went backwards", and its next ids may even be
//!   lower than ours, from a clock behind the old master's), or holding
//!   less after our id than the old master had (entries we had not read
//!   yet, lost with it while the `DEL`s before them may have reached the
//!   replica). Nothing on the new master tells which: L1 is cleared
//!   (`l2_coherence_resets`) and the log read after the new master's last
//!   id. L2 itself, on the new master, answers the misses.
//!
//! The residual risk, stated: an instance cut off from a Redis that keeps
//! running and receives invalidations, which then dies without persistence
//! before the instance reconnects, misses those invalidations (they were
//! delivered to the old log, not queued by their senders). That takes two
//! failures in a row; a Redis with `appendonly yes` keeps the log and closes
//! it. Before its first connection an instance reads from the log's end
//! (what came before concerns copies it never held), or, if Redis was
//! unreachable when it started, from its start time, so invalidations
//! others queued during that outage reach it too.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use redis::Value;

use crate::key::KeyHash;
use crate::sync::lock;

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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct LogState {
    /// The stream exists.
    pub(crate) exists: bool,
    /// The entry with our last id is still in it.
    pub(crate) ours_present: bool,
    /// The id of its first (oldest) entry, if any.
    pub(crate) first: Option<StreamId>,
    /// `last-generated-id`.
    pub(crate) last_generated: StreamId,
    /// Entries in it now.
    pub(crate) length: u64,
    /// `entries-added`: entries ever added (`None`: not reported).
    pub(crate) entries_added: Option<u64>,
    /// The server's `run_id`: a new one after every restart (or failover).
    pub(crate) run_id: String,
}

/// Probes the log in one step (a script: one slot on a cluster, and one
/// consistent view). `KEYS[1]` the stream, `ARGV[1]` our last id (or
/// empty). Returns `{exists, run_id, first id, length, entries-added,
/// ours present, last-generated-id}`. (`max-deleted-entry-id` is no help:
/// trimming does not move it.)
pub(crate) const PROBE_SCRIPT: &str = r"
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, run, '', 0, '', 0, '0-0'} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local lg, added, len = '0-0', '', 0
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then lg = info[i + 1] end
  if info[i] == 'entries-added' then added = tostring(info[i + 1]) end
  if info[i] == 'length' then len = info[i + 1] end
end
local first = ''
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then first = head[1][1] end
local present = 0
if ARGV[1] ~= '' and #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) > 0 then present = 1 end
return {1, run, first, len, added, present, lg}
";

impl LogState {
    /// Reads [`PROBE_SCRIPT`]'s reply.
    pub(crate) fn from_reply(v: &Value) -> Option<LogState> {
        let Value::Array(items) = v else { return None };
        let int = |v: &Value| text(v).and_then(|t| t.parse::<u64>().ok());
        let [exists, run, first, len, added, present, lg] = items.as_slice() else {
            return None;
        };
        Some(LogState {
            exists: int(exists)? == 1,
            run_id: text(run).unwrap_or_default(),
            first: StreamId::from_value(first),
            length: int(len).unwrap_or(0),
            entries_added: int(added),
            ours_present: int(present)? == 1,
            last_generated: StreamId::from_value(lg)?,
        })
    }

    /// Nothing was ever removed from this log (`None`: unknown).
    fn untrimmed(&self) -> bool {
        self.entries_added.is_some_and(|a| a == self.length)
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
/// last entry applied; `restarted`: the server's `run_id` changed since
/// this instance last saw it.
pub(crate) fn resume(last: StreamId, s: &LogState, restarted: bool) -> Resume {
    if s.ours_present {
        // Trims remove the oldest entries: all after ours are there.
        return Resume::From(last);
    }
    if !s.exists {
        return if restarted {
            // Lost with the old server; nobody wrote to the new one yet.
            Resume::From(StreamId::ZERO)
        } else {
            Resume::Reset(StreamId::ZERO, "the invalidation log is gone")
        };
    }
    match s.first {
        // Older entries are there, ours is not: a log restored from disk
        // without its last entries (all of which we applied); what comes
        // after ours in it is new.
        Some(first) if first < last => Resume::From(last),
        // Everything in it is newer than ours.
        _ if restarted && s.untrimmed() => Resume::From(StreamId::ZERO),
        _ if restarted => Resume::Reset(
            s.last_generated,
            "the invalidation log was recreated and already trimmed",
        ),
        _ => Resume::Reset(
            s.last_generated,
            "the invalidation log was trimmed past the last entry applied",
        ),
    }
}

/// The decision on reconnecting to another master after a failover (see
/// the module docs): clear L1, then read what the new master appends after
/// its own last id (whatever ours was: its ids may run behind ours).
pub(crate) fn after_failover(s: &LogState) -> Resume {
    Resume::Reset(
        s.last_generated,
        "the Redis master changed (a failover): the new master's copy of the \
         invalidation log may lack entries of the old one",
    )
}

/// On the first connection, from `start`: whether entries after it were
/// already trimmed away.
pub(crate) fn trimmed_after(start: StreamId, s: &LogState) -> bool {
    s.exists && !s.untrimmed() && s.first.is_none_or(|f| f > start)
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
    /// Whether anything is queued (read without the lock).
    busy: AtomicBool,
}

impl Outbox {
    /// Queues `p`; returns how many invalidations will not be sent one by
    /// one (replaced by a clear of the namespace) because the queue is full.
    pub(crate) fn push(&self, p: Pending) -> u64 {
        let mut q = lock(&self.queue);
        self.busy.store(true, Ordering::Release);
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
        let mut q = lock(&self.queue);
        self.busy.store(false, Ordering::Release);
        q.drain(..).collect()
    }

    /// Whether a queued invalidation covers `key` (a read of it must not
    /// be served or promoted until it is replayed).
    pub(crate) fn holds(&self, key: KeyHash) -> bool {
        if !self.busy.load(Ordering::Acquire) {
            return false;
        }
        let q = lock(&self.queue);
        q.iter().any(|p| match p {
            Pending::Key(k) => *k == key,
            Pending::Announce(_) => false,
            Pending::Tag(_) | Pending::Prefix(_) | Pending::Clear => true,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.queue).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(exists: bool, present: bool, first: Option<u64>, lg: u64, added: u64) -> LogState {
        LogState {
            exists,
            ours_present: present,
            first: first.map(|f| StreamId(f, 0)),
            last_generated: StreamId(lg, 0),
            length: 100,
            entries_added: Some(added),
            run_id: "r".into(),
        }
    }

    const OURS: StreamId = StreamId(1000, 0);

    #[test]
    fn same_log_reads_on_without_a_flush() {
        // Our entry is there, newer ones too, older ones trimmed.
        let s = state(true, true, Some(500), 5000, 10_000);
        assert_eq!(resume(OURS, &s, false), Resume::From(OURS));
        assert_eq!(resume(OURS, &s, true), Resume::From(OURS));
    }

    #[test]
    fn trimmed_past_our_id_is_a_reset() {
        let s = state(true, false, Some(1500), 9000, 10_000);
        assert!(matches!(
            resume(OURS, &s, false),
            Resume::Reset(StreamId(9000, 0), _)
        ));
        // Emptied by a trim.
        let s = state(true, false, None, 9000, 10_000);
        assert!(matches!(resume(OURS, &s, false), Resume::Reset(..)));
    }

    #[test]
    fn a_log_lost_with_a_restarted_server_is_read_from_its_start() {
        // Restarted, no stream yet.
        let s = state(false, false, None, 0, 0);
        assert_eq!(resume(OURS, &s, true), Resume::From(StreamId::ZERO));
        // A new stream with other instances' replays in it.
        let s = state(true, false, Some(7000), 7010, 100);
        assert_eq!(resume(OURS, &s, true), Resume::From(StreamId::ZERO));
        // ... already trimmed: a reset.
        let s = state(true, false, Some(7000), 9000, 20_000);
        assert!(matches!(resume(OURS, &s, true), Resume::Reset(..)));
        // Restored from disk without our (last) entry: read on from ours.
        let s = state(true, false, Some(10), 900, 20_000);
        assert_eq!(resume(OURS, &s, true), Resume::From(OURS));
    }

    #[test]
    fn a_log_lost_on_a_server_that_stayed_up_is_a_reset() {
        let s = state(false, false, None, 0, 0);
        assert!(matches!(resume(OURS, &s, false), Resume::Reset(..)));
        // Replaced by another stream (deleted, then written again).
        let s = state(true, false, Some(7000), 7010, 100);
        assert!(matches!(resume(OURS, &s, false), Resume::Reset(..)));
    }

    #[test]
    fn a_failover_clears_l1_and_reads_after_the_new_masters_last_id() {
        // The new master's log went backwards (it lacks our last entries):
        // its next ids follow its own last one, which may be below ours.
        let behind = state(true, false, Some(10), 900, 20_000);
        assert!(matches!(
            after_failover(&behind),
            Resume::Reset(StreamId(900, 0), _)
        ));
        // Ours is there, but entries after it the old master held may not be.
        let holding = state(true, true, Some(10), 5000, 20_000);
        assert!(matches!(
            after_failover(&holding),
            Resume::Reset(StreamId(5000, 0), _)
        ));
        // No log at all on the new master.
        let none = state(false, false, None, 0, 0);
        assert!(matches!(
            after_failover(&none),
            Resume::Reset(StreamId::ZERO, _)
        ));
    }

    #[test]
    fn the_first_read_checks_what_was_trimmed_after_its_start() {
        assert!(!trimmed_after(OURS, &state(false, false, None, 0, 0)));
        assert!(!trimmed_after(
            OURS,
            &state(true, false, Some(7000), 7010, 100)
        ));
        assert!(!trimmed_after(
            OURS,
            &state(true, false, Some(500), 7010, 9000)
        ));
        assert!(trimmed_after(
            OURS,
            &state(true, false, Some(7000), 7010, 9000)
        ));
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
            bulk("r"),
            bulk("3-0"),
            Value::Int(100),
            Value::Int(100),
            Value::Int(0),
            bulk("9-1"),
        ]);
        let mut want = state(true, false, Some(3), 9, 100);
        want.last_generated = StreamId(9, 1);
        assert_eq!(LogState::from_reply(&probe), Some(want));
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
        assert!(o.holds(KeyHash(7)), "a clear covers every key");
        assert_eq!(o.take(), vec![Pending::Clear]);
        assert!(!o.holds(KeyHash(7)));
        o.push(Pending::Announce(KeyHash(7)));
        assert!(
            !o.holds(KeyHash(7)),
            "an overwrite announcement is no invalidation"
        );
        o.push(Pending::Key(KeyHash(7)));
        assert!(o.holds(KeyHash(7)) && !o.holds(KeyHash(8)));
    }
}
