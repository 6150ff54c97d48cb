//! Redis Sentinel: the L2 tier's master, found through the sentinels, and
//! found again after a failover.
//!
//! Discovery follows Redis's guidelines for sentinel clients: the sentinels
//! are asked in turn (the one that answered last goes first), each within
//! the connect timeout, `SENTINEL get-master-addr-by-name NAME`; the address
//! it names is connected to, within the connect timeout too, and `ROLE`
//! must answer `master` (a sentinel that has not seen a failover yet names
//! the old master: the next sentinel is asked). A pass over the sentinels
//! is bounded (their number × two connect timeouts) and one at a time: it
//! runs in a task of its own that every caller waiting for the master
//! shares (as `ClusterConnector` shares one attempt), each caller within
//! its own L2 deadline; the task finishes, and keeps what it found, even
//! when they all gave up.
//!
//! The master found is forgotten, so that the next caller discovers it
//! again, when a command on it fails in a way that says it is gone or is
//! no longer the master (see [`master_gone`]), when a new connection to it
//! does not answer `ROLE` with `master`, and when the L2 breaker opens
//! (`RedisStore::reset`). Nothing retries on its own: a failed pass leaves
//! the slot empty and the next operation (each counted against the L2
//! breaker) starts the next one.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError,
    ServerErrorKind, Value,
};

use crate::store::redis::StoreError;
use crate::sync::lock;

/// The master, as found by one discovery.
pub(crate) struct Master {
    /// Which discovery found it (forgetting it is by id, so a late error on
    /// an old master never drops a newer one).
    pub(crate) id: u64,
    /// A client for new connections to it (the reader's, scans).
    pub(crate) client: Client,
    /// The multiplexed connection data commands share.
    pub(crate) conn: MultiplexedConnection,
    /// `host`, `port` as the sentinel named it.
    pub(crate) addr: (String, u16),
}

/// What the connector holds.
enum Slot {
    Empty,
    Discovering(Shared<BoxFuture<'static, Option<Arc<Master>>>>),
    Ready(Arc<Master>),
}

/// The master of a set monitored by sentinels, found on first use and
/// again after it is forgotten.
pub(crate) struct SentinelConnector {
    /// The parts one discovery needs, shared with its task.
    parts: Arc<Parts>,
    slot: Arc<Mutex<Slot>>,
}

/// What a discovery needs.
struct Parts {
    master_name: String,
    /// One client per sentinel, in the order given.
    sentinels: Vec<Client>,
    /// The master's connection settings (scheme, TLS, credentials,
    /// database); its address is replaced by the one a sentinel names.
    node: ConnectionInfo,
    /// The sentinel asked first (the one that answered last).
    first: AtomicUsize,
    /// The id of the next master found.
    next_id: AtomicU64,
    connect_timeout: Duration,
}

impl SentinelConnector {
    /// Prepares the clients; nothing is connected yet.
    pub(crate) fn new(
        master_name: String,
        sentinels: Vec<Client>,
        node: ConnectionInfo,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            parts: Arc::new(Parts {
                master_name,
                sentinels,
                node,
                first: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                connect_timeout,
            }),
            slot: Arc::new(Mutex::new(Slot::Empty)),
        }
    }

    /// The master, or the discovery under way (started if none is). The
    /// caller's own L2 deadline bounds the wait; a discovery that found no
    /// master is [`StoreError::NoMaster`].
    pub(crate) async fn get(&self) -> Result<Arc<Master>, StoreError> {
        let attempt = {
            let mut slot = lock(&self.slot);
            match &*slot {
                Slot::Ready(m) => return Ok(Arc::clone(m)),
                Slot::Discovering(attempt) => attempt.clone(),
                Slot::Empty => {
                    let attempt = self.discover();
                    *slot = Slot::Discovering(attempt.clone());
                    attempt
                }
            }
        };
        match attempt.clone().await {
            Some(m) => Ok(m),
            None => {
                // The task empties the slot when it fails; a task that never
                // ran to its end (its runtime shut down) leaves it here.
                let mut slot = lock(&self.slot);
                if matches!(&*slot, Slot::Discovering(a) if a.ptr_eq(&attempt)) {
                    *slot = Slot::Empty;
                }
                Err(StoreError::NoMaster)
            }
        }
    }

    /// The master's address, when one is known.
    pub(crate) fn current(&self) -> Option<(String, u16)> {
        match &*lock(&self.slot) {
            Slot::Ready(m) => Some(m.addr.clone()),
            _ => None,
        }
    }

    /// Forgets master `id` (if it is still the one held): the next caller
    /// discovers the master again.
    pub(crate) fn forget(&self, id: u64) {
        let mut slot = lock(&self.slot);
        if matches!(&*slot, Slot::Ready(m) if m.id == id) {
            *slot = Slot::Empty;
        }
    }

    /// Forgets the master held (a discovery under way goes on: it is a
    /// fresh look already).
    pub(crate) fn reset(&self) {
        let mut slot = lock(&self.slot);
        if matches!(&*slot, Slot::Ready(_)) {
            *slot = Slot::Empty;
        }
    }

    /// A connection of its own to the master, made with `config`, on which
    /// `ROLE` answered `master` (else the master is forgotten and this is
    /// an error): for the invalidation log's reader.
    pub(crate) async fn dedicated(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<(MultiplexedConnection, (String, u16)), StoreError> {
        let master = self.get().await?;
        let made = tokio::time::timeout(
            self.parts.connect_timeout,
            confirmed(&master.client, config),
        )
        .await;
        match made {
            Ok(Some(conn)) => Ok((conn, master.addr.clone())),
            _ => {
                self.forget(master.id);
                Err(StoreError::NoMaster)
            }
        }
    }

    /// One discovery, in a task of its own, which leaves its result in the
    /// slot (a failure empties it: the next caller tries again).
    fn discover(&self) -> Shared<BoxFuture<'static, Option<Arc<Master>>>> {
        let parts = Arc::clone(&self.parts);
        let slot = Arc::clone(&self.slot);
        let task = tokio::spawn(async move {
            let found = parts.discover().await.map(Arc::new);
            *lock(&slot) = match &found {
                Some(m) => Slot::Ready(Arc::clone(m)),
                None => Slot::Empty,
            };
            found
        });
        async move { task.await.ok().flatten() }.boxed().shared()
    }
}

impl Parts {
    /// Asks each sentinel in turn for the master's address, until one names
    /// a master that confirms it is one. Bounded: two connect timeouts per
    /// sentinel.
    async fn discover(&self) -> Option<Master> {
        let n = self.sentinels.len();
        let start = self.first.load(Ordering::Relaxed);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            // Data commands are bounded by the L2 tier's own deadlines.
            .set_response_timeout(None);
        for i in 0..n {
            let at = (start + i) % n;
            let Some((host, port)) = self.ask(&self.sentinels[at]).await else {
                continue;
            };
            let info = self
                .node
                .clone()
                .set_addr(address(self.node.addr(), &host, port));
            let Ok(client) = Client::open(info) else {
                continue;
            };
            let made =
                tokio::time::timeout(self.connect_timeout, confirmed(&client, &config)).await;
            let Ok(Some(conn)) = made else {
                tracing::debug!(
                    target: "tower_tiered_cache",
                    master = %self.master_name,
                    address = %format!("{host}:{port}"),
                    "Redis Sentinel: the address named is not a reachable master"
                );
                continue;
            };
            self.first.store(at, Ordering::Relaxed);
            tracing::debug!(
                target: "tower_tiered_cache",
                master = %self.master_name,
                address = %format!("{host}:{port}"),
                "Redis Sentinel: master found"
            );
            return Some(Master {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                client,
                conn,
                addr: (host, port),
            });
        }
        tracing::debug!(
            target: "tower_tiered_cache",
            master = %self.master_name,
            sentinels = n,
            "Redis Sentinel: no sentinel named a reachable master"
        );
        None
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel, within the
    /// connect timeout; `None` if it does not answer with an address.
    async fn ask(&self, sentinel: &Client) -> Option<(String, u16)> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout));
        let reply = tokio::time::timeout(self.connect_timeout, async {
            let mut c = sentinel
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master_name)
                .query_async::<Value>(&mut c)
                .await
        })
        .await
        .ok()?
        .ok()?;
        master_address(&reply)
    }
}

/// A connection made with `config` on which `ROLE` answers `master`.
async fn confirmed(
    client: &Client,
    config: &AsyncConnectionConfig,
) -> Option<MultiplexedConnection> {
    let mut conn = client
        .get_multiplexed_async_connection_with_config(config)
        .await
        .ok()?;
    let role = redis::cmd("ROLE")
        .query_async::<Value>(&mut conn)
        .await
        .ok()?;
    is_master(&role).then_some(conn)
}

/// `template` (plain or TLS, with its TLS settings) at `host:port`.
fn address(template: &ConnectionAddr, host: &str, port: u16) -> ConnectionAddr {
    let mut addr = template.clone();
    match &mut addr {
        ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            h.clear();
            h.push_str(host);
            *p = port;
            addr
        }
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    }
}

/// A reply's text, for a string-like value.
fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// The `[host, port]` of `SENTINEL get-master-addr-by-name` (`None` for a
/// nil, an unknown name, or anything malformed: a sentinel's answer is
/// input like any other).
pub(crate) fn master_address(v: &Value) -> Option<(String, u16)> {
    let Value::Array(items) = v else { return None };
    let [host, port] = items.as_slice() else {
        return None;
    };
    let host = text(host)?;
    let port = match port {
        Value::Int(n) => u16::try_from(*n).ok()?,
        other => text(other)?.parse::<u16>().ok()?,
    };
    let ok = !host.is_empty() && host.len() <= 255 && !host.bytes().any(|b| b.is_ascii_control());
    (ok && port != 0).then(|| (host.to_owned(), port))
}

/// Whether a `ROLE` reply says `master`.
pub(crate) fn is_master(v: &Value) -> bool {
    matches!(v, Value::Array(items) if items.first().and_then(text) == Some("master"))
}

/// Whether an error says that the master is gone or no longer the master:
/// the connection dropped, refused or otherwise unusable, an I/O error,
/// `READONLY` (a write to a demoted master) or `MASTERDOWN`. Other errors
/// (a wrong type, a script error) are about the command, not the node.
pub(crate) fn master_gone(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_sentinels_answer_is_read_as_input() {
        let ok = Value::Array(vec![bulk("10.0.0.5"), bulk("6380")]);
        assert_eq!(master_address(&ok), Some(("10.0.0.5".to_owned(), 6380)));
        let int = Value::Array(vec![bulk("::1"), Value::Int(6379)]);
        assert_eq!(master_address(&int), Some(("::1".to_owned(), 6379)));
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![bulk("h")]),
            Value::Array(vec![bulk("h"), bulk("0")]),
            Value::Array(vec![bulk("h"), bulk("70000")]),
            Value::Array(vec![bulk("h"), bulk("-1")]),
            Value::Array(vec![bulk(""), bulk("1")]),
            Value::Array(vec![bulk("h\r\n"), bulk("1")]),
            Value::Array(vec![bulk(&"h".repeat(300)), bulk("1")]),
            Value::Array(vec![bulk("h"), bulk("1"), bulk("x")]),
            Value::Array(vec![Value::Int(1), Value::Int(1)]),
            Value::BulkString(b"127.0.0.1:6379".to_vec()),
        ] {
            assert_eq!(master_address(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_a_role_of_master_is_a_master() {
        let role = |r: &str| Value::Array(vec![bulk(r), Value::Int(0), Value::Array(vec![])]);
        assert!(is_master(&role("master")));
        assert!(!is_master(&role("slave")));
        assert!(!is_master(&role("sentinel")));
        assert!(!is_master(&Value::Nil));
        assert!(!is_master(&bulk("master")));
    }

    #[test]
    fn the_masters_address_keeps_the_templates_scheme() {
        let plain = ConnectionAddr::Tcp("placeholder".into(), 1);
        assert_eq!(
            address(&plain, "10.0.0.1", 7000),
            ConnectionAddr::Tcp("10.0.0.1".into(), 7000)
        );
        let tls = ConnectionAddr::TcpTls {
            host: "placeholder".into(),
            port: 1,
            insecure: true,
            tls_params: None,
        };
        match address(&tls, "db.internal", 6380) {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => assert_eq!((host.as_str(), port, insecure), ("db.internal", 6380, true)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_that_mean_the_master_moved() {
        let readonly = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(master_gone(&readonly));
        let io: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into();
        assert!(master_gone(&io));
        let wrongtype = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "WRONGTYPE",
        ));
        assert!(!master_gone(&wrongtype));
    }
}
