//! The L2 tier's connection to Redis: one node (a `ConnectionManager`,
//! multiplexed, reconnecting), Redis Cluster (`ClusterConnection`), or the
//! master of a set monitored by Redis Sentinel (`store::sentinel`).
//! Connections are made on first use, inside the caller's runtime, so
//! building a cache never blocks and a Redis that is down at start-up is
//! just an L2 that misses until it is back.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, RedisError, Value};
use std::sync::Arc;

use crate::store::sentinel::{master_gone, SentinelConnector};
use crate::sync::lock;

/// Where the L2 tier lives.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
    /// The master named `master`, found through the `sentinels` (their
    /// URLs: `redis://[user:password@]host:port`, no database). `node`: the
    /// URL whose scheme, credentials and database the master's connections
    /// use (its host and port are replaced by the address the sentinels
    /// name); without it, `redis://`, no credentials, database 0.
    Sentinel {
        master: String,
        sentinels: Vec<String>,
        node: Option<String>,
    },
}

impl fmt::Debug for RedisTarget {
    // URLs may carry passwords: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Single(_) => f.write_str("Single(..)"),
            RedisTarget::Cluster(urls) => write!(f, "Cluster({} nodes)", urls.len()),
            RedisTarget::Sentinel {
                master, sentinels, ..
            } => write!(
                f,
                "Sentinel({master:?} through {} sentinels)",
                sentinels.len()
            ),
        }
    }
}

enum Backend {
    Single {
        client: Box<Client>,
        /// Replaced when the L2 breaker opens: an operation cut off by the
        /// L2 timeout never lets the manager see a dead (half-open) socket.
        conn: std::sync::Mutex<Option<ConnectionManager>>,
    },
    /// Replaced when the breaker opens: a cluster connection can stay
    /// wedged after a master restarts.
    Cluster(Box<ClusterConnector>),
    /// Found through the sentinels; found again when it fails or the
    /// breaker opens.
    Sentinel(Box<SentinelConnector>),
}

/// The cluster connection, made on first use (and again after a reset) by
/// one attempt at a time, which every caller waiting for it shares. The
/// attempt runs in a task of its own: it finishes, and its connection is
/// kept, even when the callers waiting on it give up at their deadlines.
struct ClusterConnector {
    client: ClusterClient,
    slot: Arc<std::sync::Mutex<Slot>>,
}

/// What the connector holds.
enum Slot {
    Empty,
    Connecting(Shared<BoxFuture<'static, Option<ClusterConnection>>>),
    Ready(ClusterConnection),
}

impl ClusterConnector {
    /// The connection, or the attempt under way (started if none is).
    async fn get(&self, connect_timeout: Duration) -> Result<ClusterConnection, StoreError> {
        let attempt = {
            let mut slot = lock(&self.slot);
            match &*slot {
                Slot::Ready(c) => return Ok(c.clone()),
                Slot::Connecting(attempt) => attempt.clone(),
                Slot::Empty => {
                    let attempt = self.connect(connect_timeout);
                    *slot = Slot::Connecting(attempt.clone());
                    attempt
                }
            }
        };
        // The caller's own L2 timeout bounds this wait.
        match attempt.clone().await {
            Some(c) => Ok(c),
            None => {
                // The task empties the slot when it fails; a task that never
                // ran to its end (its runtime shut down) leaves it here.
                let mut slot = lock(&self.slot);
                if matches!(&*slot, Slot::Connecting(a) if a.ptr_eq(&attempt)) {
                    *slot = Slot::Empty;
                }
                Err(StoreError::Timeout)
            }
        }
    }

    /// One attempt, in a task of its own, which leaves its result in the
    /// slot (a failure empties it: the next caller tries again).
    fn connect(&self, timeout: Duration) -> Shared<BoxFuture<'static, Option<ClusterConnection>>> {
        let client = self.client.clone();
        let slot = Arc::clone(&self.slot);
        let task = tokio::spawn(async move {
            let made = tokio::time::timeout(timeout, client.get_async_connection()).await;
            let conn = made.ok().and_then(Result::ok);
            *lock(&slot) = match &conn {
                Some(c) => Slot::Ready(c.clone()),
                None => Slot::Empty,
            };
            conn
        });
        async move { task.await.ok().flatten() }.boxed().shared()
    }

    /// Forgets the connection: the next caller makes a new one.
    fn reset(&self) {
        *lock(&self.slot) = Slot::Empty;
    }
}

/// A connection used by one task only (see [`RedisStore::dedicated`]):
/// to one node, the one holding the key it was made for.
pub(crate) struct Dedicated {
    conn: redis::aio::MultiplexedConnection,
    /// With Sentinel, the master's address: another one than last time
    /// means a failover.
    pub(crate) node: Option<(String, u16)>,
}

impl Dedicated {
    fn new(conn: redis::aio::MultiplexedConnection) -> Self {
        Self { conn, node: None }
    }

    /// Runs one command.
    pub(crate) async fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, StoreError> {
        Ok(cmd.query_async(&mut self.conn).await?)
    }
}

/// A Redis connection made on first use.
pub(crate) struct RedisStore {
    backend: Backend,
    /// The (first) URL, for per-node scans.
    url: String,
    /// Every seed URL, tried in turn for the invalidation log's reader.
    urls: Vec<String>,
    /// `host:port` of the (first) server, for spans and stats.
    pub(crate) server: (String, u16),
    connect_timeout: Duration,
    /// Told the name, duration and success of every operation.
    pub(crate) ops: std::sync::OnceLock<OpHook>,
}

/// Observes L2 operations: name, duration, success.
pub(crate) type OpHook = Box<dyn Fn(&str, Duration, bool) + Send + Sync>;

/// The command name of `cmd` (its first argument), upper case; the
/// commands the cache sends name themselves without an allocation.
fn command_name(cmd: &redis::Cmd) -> Cow<'static, str> {
    const KNOWN: &[&str] = &[
        "GET", "SET", "DEL", "UNLINK", "EVAL", "EVALSHA", "MGET", "XADD", "PING",
    ];
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(b)) => {
            match KNOWN.iter().find(|k| k.as_bytes().eq_ignore_ascii_case(b)) {
                Some(known) => Cow::Borrowed(known),
                None => Cow::Owned(String::from_utf8_lossy(b).to_ascii_uppercase()),
            }
        }
        _ => Cow::Borrowed("UNKNOWN"),
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.is_cluster())
            .field("server", &self.server)
            .finish()
    }
}

/// Why an L2 operation did not succeed.
#[derive(Debug)]
pub(crate) enum StoreError {
    Timeout,
    Redis(RedisError),
    /// Redis Sentinel: no sentinel named a master that answered as one.
    NoMaster,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Timeout => f.write_str("timed out"),
            StoreError::Redis(e) => write!(f, "{e}"),
            StoreError::NoMaster => f.write_str("no Redis Sentinel named a reachable master"),
        }
    }
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        StoreError::Redis(e)
    }
}

/// Why the L2 tier's Redis target was refused when the cache was built.
#[derive(Debug, Clone)]
pub(crate) enum TargetError {
    /// The redis crate refused the URL of [`RedisTarget::Single`].
    BadUrl(RedisError),
    /// The redis crate refused a node URL of [`RedisTarget::Cluster`].
    BadClusterUrl(RedisError),
    /// [`RedisTarget::Cluster`] with no node URL.
    NoClusterNodes,
    /// A `rediss://` (TLS) URL without the `redis-tls` feature.
    TlsNotCompiled,
    /// [`RedisTarget::Sentinel`]'s master name is empty, too long, or has
    /// spaces or control characters.
    BadMasterName,
    /// [`RedisTarget::Sentinel`] with no sentinel URL.
    NoSentinels,
    /// The redis crate refused a sentinel URL.
    BadSentinelUrl(RedisError),
    /// A sentinel URL with a database (sentinels have none).
    SentinelDatabase,
    /// The redis crate refused the master's URL (`node`).
    BadMasterUrl(RedisError),
    /// The master's URL is not `redis://` or `rediss://` (a Unix socket
    /// cannot be moved to the address a sentinel names).
    MasterUrlNotTcp,
    /// The master's URL is `rediss://` without the `redis-tls` feature.
    MasterTlsNotCompiled,
}

impl TargetError {
    /// Whether this is about the master's URL (`redis_sentinel_master_url`)
    /// rather than the target's main URL(s).
    pub(crate) fn is_master_url(&self) -> bool {
        matches!(
            self,
            TargetError::BadMasterUrl(_)
                | TargetError::MasterUrlNotTcp
                | TargetError::MasterTlsNotCompiled
        )
    }
}

/// `rediss://` (or Valkey's `valkeys://`): a TLS URL.
fn is_tls(url: &str) -> bool {
    url.trim().split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    })
}

/// The text for a URL that needs TLS in a build without it. The redis
/// crate's own error ("can't connect with TLS, the feature is not enabled")
/// names a feature of the redis crate, not ours.
const NEEDS_TLS: &str = "rediss:// (TLS) needs the `redis-tls` feature of tower-tiered-cache";

impl fmt::Display for TargetError {
    // The redis crate's own message is the `source()`, not repeated here.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::BadUrl(_) => f.write_str("bad Redis URL"),
            TargetError::BadClusterUrl(_) => f.write_str("bad Redis Cluster URL"),
            TargetError::NoClusterNodes => {
                f.write_str("a Redis Cluster needs at least one node URL")
            }
            TargetError::TlsNotCompiled => write!(f, "bad Redis URL: {NEEDS_TLS}"),
            TargetError::BadMasterName => f.write_str(
                "the Redis Sentinel master name must be 1 to 255 characters, \
                 without spaces or control characters",
            ),
            TargetError::NoSentinels => {
                f.write_str("Redis Sentinel needs at least one sentinel URL")
            }
            TargetError::BadSentinelUrl(_) => f.write_str("bad Redis Sentinel URL"),
            TargetError::SentinelDatabase => f.write_str(
                "a sentinel URL names no database (the master's goes in \
                 redis_sentinel_master_url)",
            ),
            TargetError::BadMasterUrl(_) => f.write_str("bad Redis Sentinel master URL"),
            TargetError::MasterUrlNotTcp => f.write_str(
                "the Redis Sentinel master URL must be redis:// or rediss:// \
                 (its host and port are replaced by the master's address)",
            ),
            TargetError::MasterTlsNotCompiled => {
                write!(f, "bad Redis Sentinel master URL: {NEEDS_TLS}")
            }
        }
    }
}

impl std::error::Error for TargetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TargetError::BadUrl(e)
            | TargetError::BadClusterUrl(e)
            | TargetError::BadSentinelUrl(e)
            | TargetError::BadMasterUrl(e) => Some(e),
            TargetError::NoClusterNodes
            | TargetError::TlsNotCompiled
            | TargetError::BadMasterName
            | TargetError::NoSentinels
            | TargetError::SentinelDatabase
            | TargetError::MasterUrlNotTcp
            | TargetError::MasterTlsNotCompiled => None,
        }
    }
}

/// The longest master name taken (Redis's own names are short words).
const MAX_MASTER_NAME: usize = 255;

/// The sentinel connector for `master` through `sentinels`, checked.
fn sentinel_connector(
    master: &str,
    sentinels: &[String],
    node: Option<&str>,
    connect_timeout: Duration,
) -> Result<SentinelConnector, TargetError> {
    let name_ok = !master.is_empty()
        && master.len() <= MAX_MASTER_NAME
        && !master.chars().any(|c| c.is_whitespace() || c.is_control());
    if !name_ok {
        return Err(TargetError::BadMasterName);
    }
    if sentinels.is_empty() {
        return Err(TargetError::NoSentinels);
    }
    if cfg!(not(feature = "redis-tls")) {
        if sentinels.iter().any(|u| is_tls(u)) {
            return Err(TargetError::TlsNotCompiled);
        }
        if node.is_some_and(is_tls) {
            return Err(TargetError::MasterTlsNotCompiled);
        }
    }
    let mut clients = Vec::with_capacity(sentinels.len());
    for url in sentinels {
        let client = Client::open(url.as_str()).map_err(TargetError::BadSentinelUrl)?;
        if client.get_connection_info().redis_settings().db() != 0 {
            return Err(TargetError::SentinelDatabase);
        }
        clients.push(client);
    }
    // The placeholder host is replaced by the address a sentinel names.
    let node = Client::open(node.unwrap_or("redis://master/"))
        .map_err(TargetError::BadMasterUrl)?
        .get_connection_info()
        .clone();
    if !matches!(
        node.addr(),
        redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. }
    ) {
        return Err(TargetError::MasterUrlNotTcp);
    }
    Ok(SentinelConnector::new(
        master.to_owned(),
        clients,
        node,
        connect_timeout,
    ))
}

fn server_of(info: &redis::ConnectionInfo) -> (String, u16) {
    match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        other => (other.to_string(), 0),
    }
}

impl RedisStore {
    /// Checks the URLs (a bad one is an error here, not a panic later) and
    /// prepares the client. Nothing is connected yet.
    pub(crate) fn new(
        target: &RedisTarget,
        connect_timeout: Duration,
    ) -> Result<Self, TargetError> {
        if cfg!(not(feature = "redis-tls")) {
            let urls = match target {
                RedisTarget::Single(url) => std::slice::from_ref(url),
                RedisTarget::Cluster(urls) => urls.as_slice(),
                // Checked with the master's URL below.
                RedisTarget::Sentinel { .. } => &[],
            };
            if urls.iter().any(|url| is_tls(url)) {
                return Err(TargetError::TlsNotCompiled);
            }
        }
        match target {
            RedisTarget::Single(url) => {
                let client = Client::open(url.as_str()).map_err(TargetError::BadUrl)?;
                let server = server_of(client.get_connection_info());
                Ok(Self {
                    url: url.clone(),
                    urls: vec![url.clone()],
                    backend: Backend::Single {
                        client: Box::new(client),
                        conn: std::sync::Mutex::new(None),
                    },
                    server,
                    connect_timeout,
                    ops: std::sync::OnceLock::new(),
                })
            }
            RedisTarget::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(TargetError::NoClusterNodes);
                }
                let first = Client::open(urls[0].as_str()).map_err(TargetError::BadClusterUrl)?;
                let server = server_of(first.get_connection_info());
                let client = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .build()
                    .map_err(TargetError::BadClusterUrl)?;
                Ok(Self {
                    url: urls[0].clone(),
                    urls: urls.clone(),
                    backend: Backend::Cluster(Box::new(ClusterConnector {
                        client,
                        slot: Arc::new(std::sync::Mutex::new(Slot::Empty)),
                    })),
                    server,
                    connect_timeout,
                    ops: std::sync::OnceLock::new(),
                })
            }
            RedisTarget::Sentinel {
                master,
                sentinels,
                node,
            } => {
                let connector =
                    sentinel_connector(master, sentinels, node.as_deref(), connect_timeout)?;
                // Until the master is known, spans and reports name the
                // first sentinel.
                let first =
                    Client::open(sentinels[0].as_str()).map_err(TargetError::BadSentinelUrl)?;
                Ok(Self {
                    url: sentinels[0].clone(),
                    urls: sentinels.clone(),
                    backend: Backend::Sentinel(Box::new(connector)),
                    server: server_of(first.get_connection_info()),
                    connect_timeout,
                    ops: std::sync::OnceLock::new(),
                })
            }
        }
    }

    fn single(
        &self,
        client: &Client,
        conn: &std::sync::Mutex<Option<ConnectionManager>>,
    ) -> Result<ConnectionManager, StoreError> {
        let mut slot = lock(conn);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            // Every operation is bounded by the tier's own deadline
            // (`l2_timeout`, scaled by size): redis-rs's 500 ms default
            // would cut longer ones short and call them errors.
            .set_response_timeout(None)
            // A lost connection is evidence that Redis is down: a
            // reconnect that fails says so at once (an error, which counts
            // against the L2 breaker), instead of retrying with back-off
            // while operations time out (which only a probe can confirm).
            // The next operation tries again; the breaker's probe after
            // its open period too.
            .set_number_of_retries(0);
        let c = ConnectionManager::new_lazy_with_config((*client).clone(), config)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Drops the connection so the next operation makes a new one.
    pub(crate) fn reset(&self) {
        match &self.backend {
            Backend::Single { conn, .. } => *lock(conn) = None,
            Backend::Cluster(connector) => connector.reset(),
            Backend::Sentinel(connector) => connector.reset(),
        }
    }

    /// `host`, `port` of the server commands go to now: with Sentinel, the
    /// master last found (the first sentinel until one is); else
    /// [`Self::server`].
    pub(crate) fn current_server(&self) -> std::borrow::Cow<'_, (String, u16)> {
        match &self.backend {
            Backend::Sentinel(s) => s.current().map_or(
                std::borrow::Cow::Borrowed(&self.server),
                std::borrow::Cow::Owned,
            ),
            _ => std::borrow::Cow::Borrowed(&self.server),
        }
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// Runs one command, in a client span (OpenTelemetry database
    /// conventions), timed.
    pub(crate) async fn query(&self, cmd: &redis::Cmd) -> Result<Value, StoreError> {
        let name = command_name(cmd);
        self.observed(&name, self.query_raw(cmd)).await
    }

    /// Runs several commands (see [`query_many_raw`](Self::query_many_raw))
    /// in one span named for the first command.
    pub(crate) async fn query_many(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<Value>, StoreError> {
        let name = match cmds.as_slice() {
            [one] => command_name(one),
            [first, ..] => Cow::Owned(format!("PIPELINE {}", command_name(first))),
            [] => return Ok(Vec::new()),
        };
        self.observed(&name, self.query_many_raw(cmds)).await
    }

    async fn observed<T>(
        &self,
        name: &str,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let server = self.current_server();
        let span = tracing::debug_span!(
            target: "tower_tiered_cache",
            "redis",
            otel.name = name,
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = name,
            server.address = %server.0,
            server.port = i64::from(server.1),
            error.type = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let result = tracing::Instrument::instrument(op, span.clone()).await;
        if let Err(e) = &result {
            span.record(
                "error.type",
                match e {
                    StoreError::Timeout => "timeout",
                    _ => "redis_error",
                },
            );
        }
        if let Some(hook) = self.ops.get() {
            hook(name, started.elapsed(), result.is_ok());
        }
        result
    }

    /// Runs one command on whichever connection this store has.
    async fn query_raw(&self, cmd: &redis::Cmd) -> Result<Value, StoreError> {
        match &self.backend {
            Backend::Single { client, conn } => {
                let mut c = self.single(client, conn)?;
                Ok(cmd.query_async(&mut c).await?)
            }
            Backend::Cluster(connector) => {
                let mut c = connector.get(self.connect_timeout).await?;
                Ok(cmd.query_async(&mut c).await?)
            }
            Backend::Sentinel(connector) => {
                let master = connector.get().await?;
                let mut c = master.conn.clone();
                let reply = cmd.query_async(&mut c).await;
                Ok(followed(connector, master.id, reply)?)
            }
        }
    }

    /// Runs several commands: one pipeline on a single node; on a cluster,
    /// one command per key, concurrently (keys live on different slots, so
    /// no cross-slot command is ever sent).
    async fn query_many_raw(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<Value>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match &self.backend {
            Backend::Single { client, conn } => {
                let mut c = self.single(client, conn)?;
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                Ok(pipe.query_async(&mut c).await?)
            }
            Backend::Cluster(connector) => {
                let c = connector.get(self.connect_timeout).await?;
                let futs = cmds.into_iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { cmd.query_async::<Value>(&mut c).await }
                });
                futures_util::future::join_all(futs)
                    .await
                    .into_iter()
                    .map(|r| r.map_err(StoreError::from))
                    .collect()
            }
            Backend::Sentinel(connector) => {
                let master = connector.get().await?;
                let mut c = master.conn.clone();
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                let reply = pipe.query_async(&mut c).await;
                Ok(followed(connector, master.id, reply)?)
            }
        }
    }

    /// A connection of its own for the invalidation log's reader, whose
    /// `XREAD BLOCK` would hold up every other command on a shared one:
    /// responses may take `response_timeout` (the block plus a margin). On
    /// a cluster, one connection to the node that owns `key`'s slot (the
    /// `attempt`th seed URL, or where its `MOVED` points), not a cluster
    /// connection to every master.
    pub(crate) async fn dedicated(
        &self,
        key: &str,
        attempt: usize,
        response_timeout: Duration,
    ) -> Result<Dedicated, StoreError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(response_timeout));
        match &self.backend {
            Backend::Single { client, .. } => Ok(Dedicated::new(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            )),
            Backend::Sentinel(connector) => {
                let (conn, addr) = connector.dedicated(&config).await?;
                Ok(Dedicated {
                    conn,
                    node: Some(addr),
                })
            }
            Backend::Cluster(_) => {
                let url = &self.urls[attempt % self.urls.len().max(1)];
                let mut c = Client::open(url.as_str())?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                match redis::cmd("TYPE")
                    .arg(key)
                    .query_async::<Value>(&mut c)
                    .await
                {
                    Ok(_) => Ok(Dedicated::new(c)),
                    Err(e) => {
                        let Some((addr, _)) = e.redirect_node() else {
                            return Err(e.into());
                        };
                        let c = Client::open(with_addr(url, addr).as_str())?
                            .get_multiplexed_async_connection_with_config(&config)
                            .await?;
                        Ok(Dedicated::new(c))
                    }
                }
            }
        }
    }

    /// A client for a connection of its own to the (first) server.
    pub(crate) fn client(&self) -> Result<Client, StoreError> {
        Ok(Client::open(self.url.as_str())?)
    }

    /// Clients for every node whose keys must be scanned: the one server,
    /// the master the sentinels name, or each master of the cluster (from
    /// `CLUSTER NODES`).
    pub(crate) async fn scan_clients(&self) -> Result<Vec<Client>, StoreError> {
        match &self.backend {
            Backend::Single { .. } => return Ok(vec![self.client()?]),
            Backend::Sentinel(connector) => return Ok(vec![connector.get().await?.client.clone()]),
            Backend::Cluster(_) => {}
        }
        let nodes = self
            .query(&redis::cmd("CLUSTER").arg("NODES").clone())
            .await?;
        let text = match nodes {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::VerbatimString { text, .. } => text,
            Value::SimpleString(s) => s,
            _ => String::new(),
        };
        let mut out = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 3 || !fields[2].split(',').any(|f| f == "master") {
                continue;
            }
            if fields[2].split(',').any(|f| f == "fail" || f == "noaddr") {
                continue;
            }
            let addr = fields[1].split('@').next().unwrap_or("");
            out.push(Client::open(with_addr(&self.url, addr).as_str())?);
        }
        Ok(out)
    }
}

/// `reply` as it is; an error that says the master is gone (or is one no
/// longer) forgets master `id` first, so the next operation finds the
/// master again.
fn followed<T>(
    connector: &SentinelConnector,
    id: u64,
    reply: Result<T, RedisError>,
) -> Result<T, RedisError> {
    if let Err(e) = &reply {
        if master_gone(e) {
            connector.forget(id);
        }
    }
    reply
}

/// `url` with its `host:port` replaced by `addr` (credentials, scheme and
/// database kept).
fn with_addr(url: &str, addr: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let (auth, hostpart) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let tail = hostpart.find('/').map_or("", |i| &hostpart[i..]);
    match auth {
        Some(a) => format!("{scheme}://{a}@{addr}{tail}"),
        None => format!("{scheme}://{addr}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_addr;

    #[test]
    fn replacing_the_address_keeps_the_rest() {
        assert_eq!(
            with_addr("redis://127.0.0.1:7000/", "10.0.0.2:7001"),
            "redis://10.0.0.2:7001/"
        );
        assert_eq!(with_addr("redis://u:p@h:1/2", "x:9"), "redis://u:p@x:9/2");
        assert_eq!(with_addr("rediss://:pw@h:1", "x:9"), "rediss://:pw@x:9");
    }
}
