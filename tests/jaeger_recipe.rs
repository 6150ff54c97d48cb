//! The README's recipe "Seeing it in Jaeger", run as it is written: the demo
//! origin (`proxy --origin`) and the proxy (`--otlp URL --admin ADDR`) each
//! in a process of its own, stderr a pipe, traces sent to an OTLP receiver
//! that takes `/v1/traces` and answers `/v1/metrics` with 404, as Jaeger's
//! OTLP port does. A miss then a hit; their `cache.lookup` spans must
//! arrive, no metrics export may be tried (only `--otlp-metrics` sends
//! metrics by OTLP), and the proxy's stderr must hold no `ERROR` line and
//! no colour code. With `--otlp-metrics` (to a receiver that takes both),
//! the cache's metrics arrive.
//!
//! The processes are this test binary run again with the ignored test
//! `proxy_process` selected: it calls the proxy's `main`
//! (`examples/proxy.rs`, compiled in) with the arguments the parent puts in
//! `JAEGER_RECIPE_ARGS`, so the code under test is exactly that of
//! `cargo run --example proxy`. They are stopped with SIGTERM (through
//! `sh -c kill`), as Ctrl-C stops the recipe's proxy, which then exports
//! what is pending.
#![cfg(all(feature = "admin", feature = "opentelemetry"))]

#[allow(dead_code)]
#[path = "../examples/proxy.rs"]
mod proxy;

#[path = "support/otlp.rs"]
mod otlp;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otlp::{OtlpReceiver, ReceivedSpan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The environment variable that carries the child's arguments, one a line.
const CHILD_ARGS: &str = "JAEGER_RECIPE_ARGS";
/// Bound on a process's start, a response, an export, a shutdown.
const DEADLINE: Duration = Duration::from_secs(30);
/// The proxy's `service.name` (examples/proxy.rs).
const SERVICE: &str = "tower-tiered-cache-proxy";
/// The cache's meter name (examples/proxy.rs).
const METER: &str = "tower-tiered-cache";

/// Not a test of its own: the process the tests below start (the proxy's
/// `main` with the arguments in `JAEGER_RECIPE_ARGS`).
#[test]
#[ignore = "the proxy process the other tests of this file start"]
fn proxy_process() {
    let args = std::env::var(CHILD_ARGS)
        .unwrap_or_else(|_| panic!("{CHILD_ARGS} is set by the tests that start this process"));
    let code = proxy::run_main(args.lines().map(str::to_owned).collect());
    if code != std::process::ExitCode::SUCCESS {
        // The proxy said why on stderr.
        std::process::exit(1);
    }
}

/// A child process running the proxy's `main`: its stdout read line by
/// line, its stderr collected whole.
struct Process {
    name: &'static str,
    pid: u32,
    lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    exited: mpsc::Receiver<ExitStatus>,
    /// Closed when stderr reaches its end.
    stderr_closed: mpsc::Receiver<()>,
    done: bool,
}

impl Process {
    fn start(name: &'static str, args: &[&str]) -> Process {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args(["proxy_process", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads=1", "-q"])
            .env(CHILD_ARGS, args.join("\n"))
            // The recipe's defaults: the `info` filter, and colours decided
            // by the terminal alone.
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {name} process: {e}"));
        let pid = child.id();
        let (line_tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped stdout");
        let copy = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                copy.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = line_tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        let copy = stderr.clone();
        let (closed_tx, stderr_closed) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                copy.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            drop(closed_tx);
        });
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        Process {
            name,
            pid,
            lines,
            stdout,
            stderr,
            exited,
            stderr_closed,
            done: false,
        }
    }

    /// The first word after `prefix` on the first stdout line starting
    /// with it (an address the process prints once it listens).
    fn printed(&self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.split_whitespace().next().unwrap_or("").to_owned();
                    }
                }
                Err(e) => panic!(
                    "the {} process printed no line {prefix:?} ({e:?})\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout.lock().unwrap(),
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {}", self.pid)])
            .status()
            .expect("sh (Debian: dash) runs kill");
        assert!(status.success(), "kill -{signal} {}: {status}", self.pid);
    }

    /// Stops the process as Ctrl-C would (SIGTERM) and waits for its exit,
    /// which must be a success; returns its stderr.
    fn stop(mut self) -> String {
        self.signal("TERM");
        let status = self.exited.recv_timeout(DEADLINE);
        self.done = true;
        let stderr = self.stderr();
        match status {
            Ok(status) => assert!(
                status.success(),
                "the {} process exited with {status}\nstderr:\n{stderr}",
                self.name
            ),
            Err(_) => {
                self.signal("KILL");
                panic!(
                    "the {} process did not stop within {DEADLINE:?} of SIGTERM\nstderr:\n{stderr}",
                    self.name
                );
            }
        }
        // The reader thread may still be copying the last bytes: wait for
        // the end of the pipe (bounded).
        let _ = self.stderr_closed.recv_timeout(DEADLINE);
        self.stderr()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.done {
            self.signal("KILL");
        }
    }
}

/// An answer: status, `Cache-Status`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    cache_status: String,
    body: String,
}

/// `GET http://{addr}{path}` on a fresh connection (bounded), as curl does.
async fn get(addr: &str, path: &str, token: Option<&str>) -> Answer {
    let addr = addr.trim_start_matches("http://").to_owned();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    let raw = tokio::time::timeout(DEADLINE, async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {DEADLINE:?} to GET {addr}{path}"));
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let cache_status = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("cache-status"))
        .map_or(String::new(), |(_, v)| v.trim().to_owned());
    Answer {
        status,
        cache_status,
        body: body.to_owned(),
    }
}

/// Starts the demo origin and, in front of it, the proxy with `extra`
/// flags after the recipe's; returns both and the proxy's and the admin
/// API's addresses.
fn recipe(extra: &[&str]) -> (Process, Process, String, String) {
    let origin = Process::start("origin", &["--origin", "127.0.0.1:0"]);
    let upstream = origin.printed("origin listening on ");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--admin",
        "127.0.0.1:0",
        "--admin-token",
        "secret",
    ];
    args.extend_from_slice(extra);
    let proxy = Process::start("proxy", &args);
    let listen = proxy.printed("listening on ");
    let admin = proxy.printed("admin API on ");
    (origin, proxy, listen, admin)
}

/// A miss then a hit through the proxy, and Prometheus metrics on the
/// admin API's `/metrics`.
async fn miss_then_hit(listen: &str, admin: &str) {
    let miss = get(listen, "/recipe", None).await;
    assert_eq!(miss.status, 200, "{miss:?}");
    assert_eq!(
        miss.cache_status, "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored",
        "{miss:?}"
    );
    assert_eq!(miss.body, "origin: /recipe\n");
    let hit = get(listen, "/recipe", None).await;
    assert_eq!(
        hit.cache_status, "tower-tiered-cache; hit; detail=l1",
        "{hit:?}"
    );
    assert_eq!(hit.body, "origin: /recipe\n");
    let metrics = get(admin, "/metrics", Some("secret")).await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(metrics.body.contains("# TYPE "), "{}", metrics.body);
}

/// The proxy's stderr (a pipe): the two requests logged, nothing at
/// `ERROR` (an OTLP export the receiver refused is logged so), no colour.
fn assert_clean(stderr: &str) {
    assert_eq!(
        stderr.matches("GET /recipe -> 200").count(),
        2,
        "both requests in the access log:\n{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains("ERROR")
                || l.to_ascii_lowercase().contains("export")
                || l.starts_with("telemetry:")
        })
        .collect();
    assert!(
        errors.is_empty(),
        "errors logged: {errors:#?}\nstderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("\x1b["),
        "colour codes on a stderr that is not a terminal:\n{stderr:?}"
    );
}

fn lookups(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.name == "cache.lookup").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_a_jaeger_like_receiver_and_nothing_is_logged_as_an_error() {
    let receiver = OtlpReceiver::start_traces_only().await;
    let endpoint = receiver.endpoint();
    let (origin, proxy, listen, admin) = recipe(&["--otlp", &endpoint]);
    miss_then_hit(&listen, &admin).await;

    // The batch processor exports within its delay (5 s), before the stop.
    let spans = receiver
        .wait_for_spans(|s| lookups(s).len() >= 2, DEADLINE)
        .await;
    let lookups = lookups(&spans);
    let results: Vec<_> = lookups
        .iter()
        .map(|s| (s.attr_str("cache.result"), s.attr_str("cache.tier")))
        .collect();
    assert_eq!(
        results,
        [(Some("miss"), Some("none")), (Some("hit"), Some("l1"))],
        "{lookups:#?}"
    );
    for s in &lookups {
        assert_eq!(s.service_name.as_deref(), Some(SERVICE), "{s:#?}");
        assert_eq!(s.attr_str("url.path"), Some("/recipe"), "{s:#?}");
    }

    // Shutting down exports what is pending: metrics too, had a meter
    // provider been installed without --otlp-metrics.
    let stderr = proxy.stop();
    origin.stop();
    let (_, metric_requests) = receiver.requests();
    assert_eq!(
        metric_requests, 0,
        "metrics were exported without --otlp-metrics (Jaeger answers 404)\nstderr:\n{stderr}"
    );
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());
    assert_clean(&stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_sends_the_cache_metrics_too() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let (origin, proxy, listen, admin) =
        recipe(&["--otlp", &endpoint, "--otlp-metrics", &endpoint]);
    miss_then_hit(&listen, &admin).await;

    // Metrics go out every 10 s, and once more on shutdown.
    let stderr = proxy.stop();
    origin.stop();
    let metrics = receiver
        .wait_for_metrics(|ms| ms.iter().any(|m| m.scope == METER), DEADLINE)
        .await;
    assert!(
        metrics
            .iter()
            .filter(|m| m.scope == METER)
            .all(|m| m.service_name.as_deref() == Some(SERVICE)),
        "{metrics:#?}"
    );
    receiver
        .wait_for_spans(|s| lookups(s).len() >= 2, DEADLINE)
        .await;
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());
    assert_clean(&stderr);
}
