//! Throwaway Redis servers and clusters for integration tests.
//!
//! Every server is a `redis-server` child of the test process, on a free
//! loopback port (never the machine's own Redis on 6379), with its own
//! temporary directory, no persistence, and its own process group. Use it
//! from a test file with
//!
//! ```ignore
//! #[path = "support/redis.rs"]
//! mod redis_support;
//! use redis_support::{require_redis, RedisServer};
//!
//! #[test]
//! fn l2_round_trip() {
//!     require_redis();
//!     let mut server = RedisServer::start();
//!     let url = server.url(); // redis://127.0.0.1:PORT/
//!     // ... use it; server.kill(); server.restart(); ...
//! } // dropped: the process is killed and reaped, the directory removed
//! ```
//!
//! Standalone: std only (no `redis` crate), so it works in any test binary.
//! The helpers block for at most a few seconds each (every wait is bounded);
//! calling them from a `#[tokio::test]` is fine.
//!
//! Clean-up: `Drop` kills and reaps the process (also when a test panics,
//! since unwinding runs `Drop`). For the cases where `Drop` never runs (the
//! test binary is killed, aborts, or gets Ctrl-C) each server has a small
//! `bash` watchdog holding a pipe from the test process: when the test
//! process dies the pipe closes and the watchdog SIGKILLs the server's
//! process group.
//!
//! Ports are picked at random below the kernel's ephemeral port range and
//! checked by binding them: a port from the ephemeral range (what binding
//! `127.0.0.1:0` gives) can be taken by any outgoing connection's local
//! port while a server is down between `kill()` and `restart()`, and for a
//! cluster node `port + 10000` (the bus port) must be free as well. A
//! collision with another test process (Redis exits with "Address already
//! in use", or another Redis answers on the port) is retried on a new
//! port; readiness checks the answering server's `process_id`.

#![allow(dead_code, unreachable_pub)]

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bound on a server becoming ready after a spawn (start or restart),
/// including retries on port collisions.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on `redis-cli --cluster create`.
pub const CLUSTER_CREATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a cluster reaching `cluster_state:ok` after creation.
pub const CLUSTER_OK_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a cluster being `ok` again after a node restart. A master that
/// was marked FAIL is only cleared after twice the node timeout (4 s here)
/// and a restarted master waits 2 s before it calls the cluster ok.
pub const CLUSTER_RESTART_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one `redis-cli` run through [`RedisServer::cli`] / [`redis_cli`].
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one request through [`RedisServer::cmd`].
pub const CMD_TIMEOUT: Duration = Duration::from_secs(2);
/// `--cluster-node-timeout` of cluster nodes, in milliseconds.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 2000;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
const CLUSTER_BUS_OFFSET: u16 = 10_000;
const PORT_FLOOR: u32 = 10_000;
const MAX_PORT_ATTEMPTS: usize = 30;

// ---------------------------------------------------------------------------
// Availability and skipping
// ---------------------------------------------------------------------------

/// `redis-server` and `redis-cli` are both on `PATH`.
pub fn redis_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| find_in_path("redis-server") && find_in_path("redis-cli"))
}

/// `CI` is set (and not empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Call first in every test that needs Redis. A test that needs Redis
/// never passes without it: when `redis-server` or `redis-cli` is missing
/// it fails, saying how to install them (`.ci/run` and `scripts/test` do).
pub fn require_redis() {
    if let Err(msg) = redis_requirement(redis_available()) {
        panic!("{msg}");
    }
}

/// The decision behind [`require_redis`]: `Ok` to run, `Err` to fail.
pub fn redis_requirement(available: bool) -> Result<(), String> {
    if available {
        return Ok(());
    }
    Err(
        "redis-server/redis-cli not found on PATH: this test starts its own Redis \
         and cannot pass without it. Install them (Debian: apt-get install \
         redis-server redis-tools; `.ci/run` does it)"
            .to_owned(),
    )
}

fn find_in_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Credentials the helpers (readiness probe, [`RedisServer::cli`],
/// [`RedisServer::cmd`]) use, and that [`RedisServer::url_with_auth`] puts
/// in the URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// `requirepass`: the `default` user's password.
    Password(String),
    /// An ACL user (the `default` user is switched off unless a password
    /// is also set).
    User {
        /// ACL user name.
        user: String,
        /// Its password.
        password: String,
    },
}

/// Options for [`RedisServer`] and [`RedisCluster`]; see
/// [`RedisServer::builder`].
#[derive(Clone, Debug, Default)]
pub struct RedisServerBuilder {
    password: Option<String>,
    acl_user: Option<(String, String)>,
    args: Vec<String>,
    cluster: bool,
    /// A sentinel (`redis-server CONF --sentinel`) with these `sentinel`
    /// lines instead of a data node.
    sentinel: Option<Vec<String>>,
}

impl RedisServerBuilder {
    /// `requirepass PW`: unauthenticated clients get `NOAUTH`.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// An ACL user `NAME on >PW ~* &* +@all`. Without [`Self::password`]
    /// the `default` user is switched off, so a client that ignores the
    /// URL's credentials gets `NOAUTH`.
    pub fn acl_user(mut self, user: &str, password: &str) -> Self {
        self.acl_user = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Extra `redis-server` command-line arguments, e.g.
    /// `&["--maxmemory", "1mb", "--maxmemory-policy", "allkeys-lru"]`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The credentials the helpers use.
    pub fn auth(&self) -> Auth {
        match (&self.acl_user, &self.password) {
            (Some((user, password)), _) => Auth::User {
                user: user.clone(),
                password: password.clone(),
            },
            (None, Some(password)) => Auth::Password(password.clone()),
            (None, None) => Auth::None,
        }
    }

    /// Starts the server; panics with the server's log if it cannot.
    pub fn start(self) -> RedisServer {
        self.try_start()
            .unwrap_or_else(|e| panic!("RedisServer::start: {e}"))
    }

    /// Starts the server.
    pub fn try_start(self) -> Result<RedisServer, String> {
        RedisServer::try_start_with(self)
    }

    /// A sentinel (started with `--sentinel`) whose configuration holds
    /// `lines` (`sentinel monitor …` and the like). It rewrites its own
    /// configuration file, which lives in its own directory.
    pub fn sentinel(mut self, lines: Vec<String>) -> Self {
        self.sentinel = Some(lines);
        self
    }

    fn config_file(&self, port: u16, dir: &Path) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "port {port}");
        let _ = writeln!(c, "bind 127.0.0.1");
        if let Some(lines) = &self.sentinel {
            let _ = writeln!(c, "dir {}", conf_quote(&dir.to_string_lossy()));
            let _ = writeln!(c, "protected-mode no");
            let _ = writeln!(c, "daemonize no");
            for line in lines {
                let _ = writeln!(c, "{line}");
            }
            return c;
        }
        let _ = writeln!(c, "save \"\"");
        let _ = writeln!(c, "appendonly no");
        let _ = writeln!(c, "dir {}", conf_quote(&dir.to_string_lossy()));
        let _ = writeln!(c, "protected-mode no");
        let _ = writeln!(c, "daemonize no");
        if let Some(pw) = &self.password {
            let _ = writeln!(c, "requirepass {}", conf_quote(pw));
        }
        if let Some((user, pw)) = &self.acl_user {
            if self.password.is_none() {
                let _ = writeln!(c, "user default off");
            }
            let _ = writeln!(
                c,
                "user {} on {} \"~*\" \"&*\" \"+@all\"",
                conf_quote(user),
                conf_quote(&format!(">{pw}"))
            );
        }
        if self.cluster {
            let _ = writeln!(c, "cluster-enabled yes");
            let _ = writeln!(c, "cluster-config-file nodes-{port}.conf");
            let _ = writeln!(c, "cluster-node-timeout {CLUSTER_NODE_TIMEOUT_MS}");
        }
        c
    }
}

/// Quotes a value for a redis.conf line (binary-safe via `\xHH`).
fn conf_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_./:@~*&+>#%=,!?".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    out
}

/// Percent-encodes all but the unreserved characters: a URL's userinfo
/// part, or a query string value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Ports and temporary directories
// ---------------------------------------------------------------------------

/// Ports (and cluster bus ports) held by live servers of this process.
static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn reserved() -> std::sync::MutexGuard<'static, BTreeSet<u16>> {
    RESERVED.lock().unwrap_or_else(|e| e.into_inner())
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn ephemeral_low() -> u32 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn bindable(port: u32) -> bool {
    u16::try_from(port).is_ok_and(|p| p != 0 && TcpListener::bind((LOOPBACK, p)).is_ok())
}

/// Picks and reserves a free port (and `port + 10000` for a cluster node).
fn pick_port(cluster: bool) -> Option<u16> {
    let mut reserved = reserved();
    let ok = |p: u32, reserved: &BTreeSet<u16>| {
        let bus = p + u32::from(CLUSTER_BUS_OFFSET);
        let taken = |q: u32| u16::try_from(q).map_or(true, |q| reserved.contains(&q));
        !taken(p) && bindable(p) && (!cluster || (!taken(bus) && bindable(bus)))
    };
    let eph = ephemeral_low();
    let ceiling = if cluster {
        eph.saturating_sub(u32::from(CLUSTER_BUS_OFFSET))
    } else {
        eph
    };
    let mut found = None;
    if ceiling > PORT_FLOOR + 1000 {
        for _ in 0..500 {
            let p = PORT_FLOOR + (random_u64() % u64::from(ceiling - PORT_FLOOR)) as u32;
            if ok(p, &reserved) {
                found = Some(p);
                break;
            }
        }
    }
    if found.is_none() {
        // Odd port range: let the kernel choose.
        for _ in 0..500 {
            let Ok(l) = TcpListener::bind((LOOPBACK, 0)) else {
                continue;
            };
            let Ok(addr) = l.local_addr() else { continue };
            drop(l);
            let p = u32::from(addr.port());
            if (!cluster || p + u32::from(CLUSTER_BUS_OFFSET) <= 65_535) && ok(p, &reserved) {
                found = Some(p);
                break;
            }
        }
    }
    let port = u16::try_from(found?).ok()?;
    reserved.insert(port);
    if cluster {
        reserved.insert(port + CLUSTER_BUS_OFFSET);
    }
    Some(port)
}

fn release_port(port: u16, cluster: bool) {
    let mut reserved = reserved();
    reserved.remove(&port);
    if cluster {
        reserved.remove(&(port + CLUSTER_BUS_OFFSET));
    }
}

const DIR_PREFIX: &str = "tower-tiered-cache-redis-";

/// Removes directories left by test processes that died without running
/// `Drop` (their pid, the second part of the name, no longer exists).
fn remove_stale_dirs(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn make_temp_dir() -> Result<PathBuf, String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static CLEANED: OnceLock<()> = OnceLock::new();
    let base = std::env::temp_dir();
    CLEANED.get_or_init(|| remove_stale_dirs(&base));
    for _ in 0..100 {
        let dir = base.join(format!(
            "{DIR_PREFIX}{}-{}-{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_u64() as u32
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
    }
    Err("cannot create a unique temporary directory".to_owned())
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Running {
    child: Child,
    /// `bash` holding the read end of a pipe from this process: on EOF
    /// (this process died, or we closed it) it SIGKILLs the server's group.
    watchdog: Option<Child>,
}

fn spawn_watchdog(pgid: u32) -> Option<Child> {
    Command::new("bash")
        .args([
            "-c",
            r#"read -r line; kill -s KILL -- "-$1" 2>/dev/null; exit 0"#,
            "redis-watchdog",
            &pgid.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: Ctrl-C on the test must not kill it before it acts.
        .process_group(0)
        .spawn()
        .ok()
}

/// Waits for `child` to exit, at most `timeout`. `true` if it exited.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// SIGKILLs the server's process group and reaps everything.
fn kill_running(mut run: Running) {
    if let Some(mut wd) = run.watchdog.take() {
        // EOF: the watchdog kills the group (the server is not reaped yet,
        // so its pid, the group id, cannot have been reused) and exits.
        drop(wd.stdin.take());
        if !wait_exit(&mut wd, Duration::from_secs(2)) {
            let _ = wd.kill();
            let _ = wd.wait();
        }
    }
    let _ = run.child.kill();
    let _ = run.child.wait();
}

/// Output of a bounded `redis-cli` (or other) run.
#[derive(Clone, Debug)]
pub struct CliOutput {
    /// Exit code; `None` if killed by a signal (e.g. on timeout).
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The run hit its time bound and was killed.
    pub timed_out: bool,
}

impl CliOutput {
    /// Exited 0 in time.
    pub fn success(&self) -> bool {
        self.status == Some(0) && !self.timed_out
    }

    /// Trimmed standard output (`"PONG"`, `"OK"`, a value...).
    pub fn text(&self) -> &str {
        self.stdout.trim()
    }

    /// Standard output and error together, for matching error messages.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` with no stdin and captured output, killed after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<CliOutput, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        pipe.map(|mut p| {
            thread::spawn(move || {
                let mut v = Vec::new();
                let _ = p.read_to_end(&mut v);
                v
            })
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let timed_out = !wait_exit(&mut child, timeout);
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait().ok().and_then(|s: ExitStatus| s.code());
    let collect = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    };
    Ok(CliOutput {
        status,
        stdout: collect(out),
        stderr: collect(err),
        timed_out,
    })
}

/// `redis-cli ARGS...` (no implied host or port), bounded by [`CLI_TIMEOUT`].
pub fn redis_cli(args: &[&str]) -> CliOutput {
    let mut cmd = Command::new("redis-cli");
    cmd.args(args);
    run_bounded(cmd, CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

fn cli_auth_args(auth: &Auth) -> Vec<String> {
    match auth {
        Auth::None => Vec::new(),
        Auth::Password(pw) => vec!["-a".into(), pw.clone(), "--no-auth-warning".into()],
        Auth::User { user, password } => vec![
            "--user".into(),
            user.clone(),
            "--pass".into(),
            password.clone(),
            "--no-auth-warning".into(),
        ],
    }
}

// ---------------------------------------------------------------------------
// A minimal RESP2 client (readiness probes, `cmd`)
// ---------------------------------------------------------------------------

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Int(i64),
    /// `$3 foo`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*N ...`
    Array(Vec<Reply>),
}

impl Reply {
    /// A status or bulk reply as text.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Reply::Status(s) => Some(s.clone()),
            Reply::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    fn connect(port: u16, auth: &Auth, timeout: Duration) -> Result<Conn, String> {
        let addr = SocketAddr::from((LOOPBACK, port));
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream: BufReader::new(stream),
        };
        let reply = match auth {
            Auth::None => return Ok(conn),
            Auth::Password(pw) => conn.request(&["AUTH", pw]),
            Auth::User { user, password } => conn.request(&["AUTH", user, password]),
        };
        match reply {
            Ok(Reply::Status(_)) => Ok(conn),
            Ok(other) => Err(format!("AUTH failed: {other:?}")),
            Err(e) => Err(e),
        }
    }

    fn request(&mut self, args: &[&str]) -> Result<Reply, String> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        self.stream
            .get_mut()
            .write_all(&buf)
            .map_err(|e| e.to_string())?;
        read_reply(&mut self.stream).map_err(|e| e.to_string())
    }
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let int = |s: &str| s.parse::<i64>().map_err(|_| bad("bad integer"));
    match line[0] {
        b'+' => Ok(Reply::Status(body)),
        b'-' => Ok(Reply::Error(body)),
        b':' => Ok(Reply::Int(int(&body)?)),
        b'$' => {
            let n = int(&body)?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let mut data = vec![0; n as usize + 2];
            r.read_exact(&mut data)?;
            data.truncate(n as usize);
            Ok(Reply::Bulk(data))
        }
        b'*' => {
            let n = int(&body)?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            (0..n)
                .map(|_| read_reply(r))
                .collect::<io::Result<_>>()
                .map(Reply::Array)
        }
        _ => Err(bad("unknown reply type")),
    }
}

/// The `process_id` of whatever Redis answers on `port`.
fn probe_pid(port: u16, auth: &Auth) -> Result<u32, String> {
    let mut conn = Conn::connect(port, auth, Duration::from_millis(500))?;
    match conn.request(&["INFO", "server"])? {
        Reply::Bulk(info) => String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix("process_id:")?.trim().parse().ok())
            .ok_or_else(|| "no process_id in INFO".to_owned()),
        other => Err(format!("INFO: {other:?}")),
    }
}

// ---------------------------------------------------------------------------
// RedisServer
// ---------------------------------------------------------------------------

/// One `redis-server` on `127.0.0.1:port()`, killed and cleaned up on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    config: RedisServerBuilder,
    dir: PathBuf,
    running: Option<Running>,
}

enum SpawnError {
    /// The port (or bus port) was taken.
    PortInUse(String),
    Fatal(String),
}

impl RedisServer {
    /// Options: password, ACL user, extra args; finish with `.start()`.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// A server with no authentication.
    pub fn start() -> RedisServer {
        Self::builder().start()
    }

    /// A server with `requirepass PW`.
    pub fn with_password(password: &str) -> RedisServer {
        Self::builder().password(password).start()
    }

    /// A server with ACL user `USER`/`PW` (all permissions) and the
    /// `default` user switched off.
    pub fn with_acl_user(user: &str, password: &str) -> RedisServer {
        Self::builder().acl_user(user, password).start()
    }

    /// A server with extra `redis-server` arguments.
    pub fn with_args(args: &[&str]) -> RedisServer {
        Self::builder().args(args).start()
    }

    fn try_start_with(config: RedisServerBuilder) -> Result<RedisServer, String> {
        redis_requirement(redis_available())?;
        let mut server = RedisServer {
            port: 0,
            dir: make_temp_dir()?,
            config,
            running: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut collisions = Vec::new();
        for _ in 0..MAX_PORT_ATTEMPTS {
            server.port = pick_port(server.config.cluster)
                .ok_or_else(|| "no free loopback port found".to_owned())?;
            match server.spawn_until_ready(deadline) {
                Ok(()) => return Ok(server),
                Err(SpawnError::PortInUse(msg)) => {
                    collisions.push(format!("{}: {msg}", server.port));
                    release_port(server.port, server.config.cluster);
                    server.port = 0;
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                Err(SpawnError::Fatal(msg)) => return Err(msg),
            }
        }
        Err(format!(
            "no port worked within {START_TIMEOUT:?}: {}",
            collisions.join("; ")
        ))
    }

    /// Spawns on `self.port` and waits until our process answers.
    fn spawn_until_ready(&mut self, deadline: Instant) -> Result<(), SpawnError> {
        let conf = self.dir.join("redis.conf");
        fs::write(&conf, self.config.config_file(self.port, &self.dir))
            .map_err(|e| SpawnError::Fatal(format!("cannot write {}: {e}", conf.display())))?;
        let log_path = self.log_path();
        let log_start = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| SpawnError::Fatal(format!("cannot open {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| SpawnError::Fatal(e.to_string()))?;
        let mut command = Command::new("redis-server");
        command.arg(&conf).args(&self.config.args);
        if self.config.sentinel.is_some() {
            command.arg("--sentinel");
        }
        let child = command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|e| SpawnError::Fatal(format!("cannot run redis-server: {e}")))?;
        let watchdog = spawn_watchdog(child.id());
        let mut run = Running { child, watchdog };
        let auth = self.auth();
        loop {
            if let Ok(Some(status)) = run.child.try_wait() {
                kill_running(run);
                let log = self.log_since(log_start);
                let msg = format!(
                    "redis-server on port {} exited ({status}); log:\n{}",
                    self.port,
                    tail(&log, 15)
                );
                return Err(if log.contains("in use") {
                    SpawnError::PortInUse(msg)
                } else {
                    SpawnError::Fatal(msg)
                });
            }
            let last_err = match probe_pid(self.port, &auth) {
                Ok(pid) if pid == run.child.id() => {
                    self.running = Some(run);
                    return Ok(());
                }
                // Another process's Redis holds the port; ours will fail to
                // bind and exit, which the next round sees.
                Ok(pid) => format!("port answered by another redis (pid {pid})"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                kill_running(run);
                return Err(SpawnError::Fatal(format!(
                    "redis-server on port {} not ready within {START_TIMEOUT:?} \
                     (last probe: {last_err}); log:\n{}",
                    self.port,
                    tail(&self.log_since(log_start), 15)
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((LOOPBACK, self.port))
    }

    /// `redis://127.0.0.1:PORT/` (no credentials).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The URL with this server's credentials, percent-encoded:
    /// `redis://:PW@127.0.0.1:PORT/` or `redis://USER:PW@127.0.0.1:PORT/`.
    pub fn url_with_auth(&self) -> String {
        match self.auth() {
            Auth::None => self.url(),
            Auth::Password(pw) => format!("redis://:{}@127.0.0.1:{}/", url_encode(&pw), self.port),
            Auth::User { user, password } => format!(
                "redis://{}:{}@127.0.0.1:{}/",
                url_encode(&user),
                url_encode(&password),
                self.port
            ),
        }
    }

    /// The credentials the helpers use.
    pub fn auth(&self) -> Auth {
        self.config.auth()
    }

    /// The server's directory (config, log, cluster `nodes-PORT.conf`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's stdout/stderr log (all runs), for diagnostics.
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn log_since(&self, start: u64) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        let start = (start as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    /// The process is alive (a frozen server counts as running).
    pub fn is_running(&mut self) -> bool {
        match &mut self.running {
            Some(run) => matches!(run.child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the server (and its process group) and reap it. Data is
    /// lost (no persistence). No-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(run) = self.running.take() {
            kill_running(run);
        }
    }

    /// Graceful stop: `SHUTDOWN NOSAVE`, at most 3 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut run) = self.running.take() {
            if let Ok(mut conn) = Conn::connect(self.port, &self.auth(), Duration::from_secs(1)) {
                let _ = conn.request(&["SHUTDOWN", "NOSAVE"]);
            }
            wait_exit(&mut run.child, Duration::from_secs(3));
            kill_running(run);
        }
    }

    /// Kills the server if it runs, then starts it again on the same port
    /// with the same settings (an empty data set; a cluster node keeps its
    /// `nodes-PORT.conf`). Panics if it is not ready within
    /// [`START_TIMEOUT`].
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("RedisServer::restart: {e}");
        }
    }

    /// [`Self::restart`], returning the error. If something else holds the
    /// port meanwhile, retries until [`START_TIMEOUT`].
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_until_ready(deadline) {
                Ok(()) => return Ok(()),
                Err(SpawnError::PortInUse(msg)) => {
                    if Instant::now() >= deadline {
                        return Err(msg);
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                Err(SpawnError::Fatal(msg)) => return Err(msg),
            }
        }
    }

    /// SIGSTOP the server: connections stay open but nothing answers
    /// (for timeout tests). [`Self::unfreeze`] resumes it; drop still works.
    pub fn freeze(&mut self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn unfreeze(&mut self) {
        self.signal("CONT");
    }

    fn signal(&mut self, sig: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("signal {sig}: redis-server is not running"));
        let mut cmd = Command::new("bash");
        cmd.args([
            "-c",
            r#"kill -s "$1" -- "-$2""#,
            "redis-signal",
            sig,
            &pid.to_string(),
        ]);
        let out = run_bounded(cmd, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.success(), "kill -s {sig} -{pid} failed: {out:?}");
    }

    /// `redis-cli -h 127.0.0.1 -p PORT [credentials] ARGS...`, bounded by
    /// [`CLI_TIMEOUT`]. Options may lead `args` (e.g. `-c` for cluster
    /// redirects).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_as(&self.auth(), args)
    }

    /// [`Self::cli`] without credentials (to check that the server refuses).
    pub fn cli_unauthenticated(&self, args: &[&str]) -> CliOutput {
        self.cli_as(&Auth::None, args)
    }

    fn cli_as(&self, auth: &Auth, args: &[&str]) -> CliOutput {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(cli_auth_args(auth))
            .args(args);
        run_bounded(cmd, CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One command over a fresh authenticated connection (std-only RESP2
    /// client), bounded by [`CMD_TIMEOUT`] per step. `Err` for connection,
    /// auth or protocol failures; an error reply is `Ok(Reply::Error)`.
    pub fn cmd(&self, args: &[&str]) -> Result<Reply, String> {
        self.cmd_timeout(args, CMD_TIMEOUT)
    }

    /// [`Self::cmd`] with another bound.
    pub fn cmd_timeout(&self, args: &[&str], timeout: Duration) -> Result<Reply, String> {
        Conn::connect(self.port, &self.auth(), timeout)?.request(args)
    }

    /// `PING` answers `PONG` within `timeout`.
    pub fn ping(&self, timeout: Duration) -> bool {
        matches!(self.cmd_timeout(&["PING"], timeout), Ok(Reply::Status(s)) if s == "PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if self.port != 0 {
            release_port(self.port, self.config.cluster);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// RedisCluster
// ---------------------------------------------------------------------------

/// `n` masters (no replicas) on free loopback ports, slots spread by
/// `redis-cli --cluster create`. Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `n >= 3` masters without authentication; panics if the cluster is
    /// not `ok` within the bounds.
    pub fn start(n: usize) -> RedisCluster {
        Self::start_with(n, RedisServer::builder())
    }

    /// Nodes with `options` (password, ACL user, extra args).
    pub fn start_with(n: usize, options: RedisServerBuilder) -> RedisCluster {
        Self::try_start_with(n, options).unwrap_or_else(|e| panic!("RedisCluster::start: {e}"))
    }

    /// [`Self::start_with`], returning the error.
    pub fn try_start_with(n: usize, options: RedisServerBuilder) -> Result<RedisCluster, String> {
        if n < 3 {
            return Err(format!("a cluster needs at least 3 masters, not {n}"));
        }
        let options = RedisServerBuilder {
            cluster: true,
            ..options
        };
        let nodes = (0..n)
            .map(|_| options.clone().try_start())
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = RedisCluster { nodes };
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port()));
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"])
            .args(cli_auth_args(&options.auth()));
        let out = run_bounded(cmd, CLUSTER_CREATE_TIMEOUT)?;
        if !out.success() {
            return Err(format!("redis-cli --cluster create failed: {out:?}"));
        }
        cluster.wait_until_ok(CLUSTER_OK_TIMEOUT)?;
        Ok(cluster)
    }

    /// All nodes (killed ones included).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Node `i`, to kill, freeze or restart it without waiting for the
    /// cluster (see [`Self::restart_node`] for the waiting variant).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `redis://127.0.0.1:PORT/` for every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The URLs with credentials.
    pub fn urls_with_auth(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url_with_auth).collect()
    }

    /// SIGKILL node `i`. The others mark it failed after about
    /// [`CLUSTER_NODE_TIMEOUT_MS`]; its slots are then down.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Restarts node `i` (same port, same `nodes-PORT.conf`, empty data) and
    /// waits until every node reports the cluster ok (bounded by
    /// [`CLUSTER_RESTART_TIMEOUT`]).
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].restart();
        if let Err(e) = self.wait_until_ok(CLUSTER_RESTART_TIMEOUT) {
            panic!("RedisCluster::restart_node({i}): {e}");
        }
    }

    /// `CLUSTER INFO` of node `i`.
    pub fn cluster_info(&self, i: usize) -> Result<String, String> {
        match self.nodes[i].cmd(&["CLUSTER", "INFO"])? {
            Reply::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => Err(format!("CLUSTER INFO: {other:?}")),
        }
    }

    /// Waits until every running node reports `cluster_state:ok`, all 16384
    /// slots assigned and ok, and knows all nodes.
    pub fn wait_until_ok(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let want = [
            "cluster_state:ok".to_owned(),
            "cluster_slots_assigned:16384".to_owned(),
            "cluster_slots_ok:16384".to_owned(),
            format!("cluster_known_nodes:{}", self.nodes.len()),
        ];
        loop {
            let mut last = Ok(());
            for (i, node) in self.nodes.iter().enumerate() {
                if node.running.is_none() {
                    continue;
                }
                match self.cluster_info(i) {
                    Ok(info) => {
                        let lines: Vec<&str> = info.lines().map(str::trim).collect();
                        if let Some(missing) = want.iter().find(|w| !lines.contains(&w.as_str())) {
                            last = Err(format!(
                                "node {i} (port {}): no {missing} in\n{info}",
                                node.port()
                            ));
                            break;
                        }
                    }
                    Err(e) => {
                        last = Err(format!("node {i} (port {}): {e}", node.port()));
                        break;
                    }
                }
            }
            match last {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("cluster not ok within {timeout:?}: {e}"))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `redis-cli -c` (following redirects) against node `i`.
    pub fn cli(&self, i: usize, args: &[&str]) -> CliOutput {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        self.nodes[i].cli(&all)
    }
}

// ---------------------------------------------------------------------------
// RedisSentinelSet
// ---------------------------------------------------------------------------

/// `down-after-milliseconds` of the sentinels of a [`RedisSentinelSet`]:
/// how long a master may not answer before a sentinel deems it down.
pub const SENTINEL_DOWN_AFTER_MS: u64 = 1000;
/// `failover-timeout` of the sentinels (also what delays a second try
/// after a failed election: twice this).
pub const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 4000;
/// Bound on a new set being ready: the replica in sync, and every sentinel
/// knowing the replica and the other sentinels (they find each other by
/// the hello messages they publish every 2 s).
pub const SENTINEL_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The quorum: sentinels that must agree the master is down.
const SENTINEL_QUORUM: usize = 2;

/// A master, one replica (`--replicaof`) and three sentinels monitoring
/// them, each a [`RedisServer`] on its own free port (the sentinels'
/// rewritten configuration files in their own directories). Dropping it
/// kills every process.
#[derive(Debug)]
pub struct RedisSentinelSet {
    name: String,
    /// The data nodes: 0 the first master, 1 its replica.
    nodes: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinelSet {
    /// A set whose master the sentinels call `name`; panics if it is not
    /// ready within [`SENTINEL_READY_TIMEOUT`].
    pub fn start(name: &str) -> RedisSentinelSet {
        Self::try_start(name).unwrap_or_else(|e| panic!("RedisSentinelSet::start: {e}"))
    }

    /// [`Self::start`], returning the error.
    pub fn try_start(name: &str) -> Result<RedisSentinelSet, String> {
        let master = RedisServer::builder().try_start()?;
        let port = master.port().to_string();
        let replica = RedisServer::builder()
            .args(&["--replicaof", "127.0.0.1", &port])
            .try_start()?;
        let lines = vec![
            format!("sentinel monitor {name} 127.0.0.1 {port} {SENTINEL_QUORUM}"),
            format!("sentinel down-after-milliseconds {name} {SENTINEL_DOWN_AFTER_MS}"),
            format!("sentinel failover-timeout {name} {SENTINEL_FAILOVER_TIMEOUT_MS}"),
            format!("sentinel parallel-syncs {name} 1"),
        ];
        let sentinels = (0..3)
            .map(|_| RedisServer::builder().sentinel(lines.clone()).try_start())
            .collect::<Result<Vec<_>, _>>()?;
        let set = RedisSentinelSet {
            name: name.to_owned(),
            nodes: vec![master, replica],
            sentinels,
        };
        set.wait_ready(SENTINEL_READY_TIMEOUT)?;
        Ok(set)
    }

    /// The master's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `redis://127.0.0.1:PORT` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port()))
            .collect()
    }

    /// Data node `i` (0: the first master, 1: its replica).
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Data node `i`, to kill or freeze.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Sentinel `i`.
    pub fn sentinel(&self, i: usize) -> &RedisServer {
        &self.sentinels[i]
    }

    /// Sentinel `i`, to kill.
    pub fn sentinel_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.sentinels[i]
    }

    /// The master's port as sentinel `i` names it.
    pub fn master_port_by(&self, i: usize) -> Result<u16, String> {
        match self.sentinels[i].cmd(&["SENTINEL", "get-master-addr-by-name", &self.name])? {
            Reply::Array(a) if a.len() == 2 => a[1]
                .as_text()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("bad port in {a:?}")),
            other => Err(format!("get-master-addr-by-name: {other:?}")),
        }
    }

    /// The index of the data node that answers `ROLE` with `master` on the
    /// port the sentinels agree on.
    pub fn master_index(&self) -> Result<usize, String> {
        let port = self.master_port_by(0)?;
        let i = self
            .nodes
            .iter()
            .position(|n| n.port() == port)
            .ok_or_else(|| format!("no node on the master's port {port}"))?;
        match self.nodes[i].cmd(&["ROLE"])? {
            Reply::Array(a) if a.first().and_then(Reply::as_text).as_deref() == Some("master") => {
                Ok(i)
            }
            other => Err(format!("node {i} (port {port}): ROLE {other:?}")),
        }
    }

    /// SIGKILLs the data node that is master now; returns its index.
    pub fn kill_master(&mut self) -> usize {
        let i = self
            .master_index()
            .unwrap_or_else(|e| panic!("kill_master: {e}"));
        self.nodes[i].kill();
        i
    }

    /// Waits until every sentinel names a master other than `old` (a node
    /// index) and that node answers `ROLE` with `master`.
    pub fn wait_for_failover(&self, old: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let old_port = self.nodes[old].port();
        loop {
            let last = (0..self.sentinels.len())
                .map(|i| match self.master_port_by(i) {
                    Ok(p) if p == old_port => Err(format!("sentinel {i} still names {p}")),
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("sentinel {i}: {e}")),
                })
                .find(Result::is_err)
                .unwrap_or(Ok(()))
                .and_then(|()| self.master_index().map(|_| ()));
            match last {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("no failover within {timeout:?}: {e}"))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The replica is in sync, and each sentinel knows the master, the
    /// replica and the two other sentinels.
    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let want = format!(
            "name={},status=ok,address=127.0.0.1:{},slaves=1,sentinels=3",
            self.name,
            self.nodes[0].port()
        );
        loop {
            let last = self.replica_in_sync().and_then(|()| {
                for (i, s) in self.sentinels.iter().enumerate() {
                    let info = match s.cmd(&["INFO", "sentinel"])? {
                        Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                        other => return Err(format!("sentinel {i}: INFO {other:?}")),
                    };
                    if !info.contains(&want) {
                        return Err(format!("sentinel {i}: no {want:?} in\n{info}"));
                    }
                }
                Ok(())
            });
            match last {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("sentinel set not ready within {timeout:?}: {e}"))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn replica_in_sync(&self) -> Result<(), String> {
        match self.nodes[1].cmd(&["INFO", "replication"])? {
            Reply::Bulk(b) if String::from_utf8_lossy(&b).contains("master_link_status:up") => {
                Ok(())
            }
            other => Err(format!("replica not in sync: {other:?}")),
        }
    }
}
