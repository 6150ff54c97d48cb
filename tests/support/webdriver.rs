//! Headless Chromium for the browser tests, driven through Debian's
//! `chromedriver` with the W3C WebDriver protocol: plain JSON over HTTP
//! with hyper-util's client (the handful of commands a test needs, no
//! WebDriver crate).
//!
//! ```ignore
//! #[path = "support/webdriver.rs"]
//! mod webdriver;
//!
//! let driver = webdriver::Chromedriver::start(); // fails clearly without Chromium
//! let browser = webdriver::Browser::open(&driver).await;
//! browser.goto("http://127.0.0.1:PORT/page").await;
//! browser.type_into("#token", "secret").await;
//! browser.click("#login-button").await;
//! let n = browser.wait_until("the first poll", "return document.querySelector('#n').textContent || null").await;
//! browser.close().await;
//! ```
//!
//! Every exchange with chromedriver is bounded ([`COMMAND_TIMEOUT`],
//! [`SESSION_TIMEOUT`] for the browser's start), every wait too
//! ([`WAIT_TIMEOUT`]). `chromedriver` runs in a process group of its own,
//! with Chromium inside it; dropping the [`Chromedriver`] kills the group
//! and removes the browser's profile directory. A `bash` watchdog holding
//! a pipe from the test process kills the group when the test process dies
//! without dropping it (killed, aborted).
//!
//! Chromium and chromedriver are found on `PATH` (`chromium`,
//! `chromedriver`), or at `$CHROMIUM` and `$CHROMEDRIVER`. When either is
//! missing the test fails with what to install: the browser test never
//! skips silently.

#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Bound on chromedriver answering `/status` after its start.
pub const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a new session (Chromium's start).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on any other WebDriver command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on [`Browser::wait_until`].
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The flags Chromium runs with: headless, no sandbox (root in a
/// container), nothing fetched from the network on its own.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
];

/// The W3C name of an element reference in a JSON answer.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

const INSTALL: &str = "the browser tests need Debian's `chromium` and `chromium-driver` \
                       packages: apt-get install -y chromium chromium-driver (.ci/run \
                       installs them), or set $CHROMIUM and $CHROMEDRIVER";

/// The program `name` on `PATH`, or the one `env` names.
fn find_program(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "${env} = {} is not a file; {INSTALL}",
            p.display()
        );
        return p;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found on PATH: {INSTALL}"))
}

/// A `chromedriver` on a free loopback port, killed (with the browsers
/// it started) when dropped.
pub struct Chromedriver {
    child: Child,
    watchdog: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    chromium: PathBuf,
    /// The browser's fresh profile directory and chromedriver's log.
    dir: PathBuf,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it is ready (bounded). Panics,
    /// saying what to install, when Chromium or chromedriver is missing.
    pub fn start() -> Self {
        let chromium = find_program("chromium", "CHROMIUM");
        let driver = find_program("chromedriver", "CHROMEDRIVER");
        let dir = std::env::temp_dir().join(format!(
            "ttc-webdriver-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        fs::create_dir_all(dir.join("profile")).expect("create the browser's profile directory");
        let mut last = String::new();
        // A port found free can be taken before chromedriver binds it:
        // then it exits, and the next try takes another.
        for _ in 0..3 {
            let port = free_port();
            let log = dir.join("chromedriver.log");
            let mut child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                // Its own group, which the browsers it starts join.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", driver.display()));
            let watchdog = spawn_watchdog(child.id());
            drain(child.stderr.take());
            let mut me = Self {
                child,
                watchdog,
                port,
                chromium: chromium.clone(),
                dir: dir.clone(),
            };
            match me.wait_ready() {
                Ok(()) => return me,
                Err(e) => last = e,
            }
        }
        panic!("chromedriver did not start: {last}");
    }

    /// Waits for `GET /status` to say ready, or for the process to exit.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + DRIVER_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited ({status}); log:\n{}", self.log_tail(20)));
            }
            if status_ready(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready within {DRIVER_START_TIMEOUT:?}; log:\n{}",
                    self.log_tail(20)
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of chromedriver's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn profile(&self) -> PathBuf {
        self.dir.join("profile")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Some(mut wd) = self.watchdog.take() {
            // EOF: the watchdog kills the group (chromedriver is not reaped
            // yet, so its pid, the group's id, cannot have been reused).
            drop(wd.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(2);
            while !matches!(wd.try_wait(), Ok(Some(_)) | Err(_)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            let _ = wd.kill();
            let _ = wd.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port (free when asked; see [`Chromedriver::start`]).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether chromedriver on `port` answers `/status` with `ready: true`
/// (a blocking exchange of at most a second).
fn status_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let req =
        format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.contains("\"ready\":true")
}

/// Reads `pipe` to its end on a thread of its own, so the child never
/// blocks on a full pipe; what it said goes to the test's stderr.
fn drain(pipe: Option<std::process::ChildStderr>) {
    if let Some(pipe) = pipe {
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("chromedriver: {line}");
            }
        });
    }
}

fn spawn_watchdog(pgid: u32) -> Option<Child> {
    Command::new("bash")
        .args([
            "-c",
            r#"read -r line; kill -s KILL -- "-$1" 2>/dev/null; exit 0"#,
            "chromedriver-watchdog",
            &pgid.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One browser session.
pub struct Browser {
    client: HttpClient,
    base: String,
    session: String,
    driver_log: PathBuf,
}

impl Browser {
    /// Starts headless Chromium with [`CHROMIUM_FLAGS`] and a fresh
    /// profile, `width` × `height` pixels.
    pub async fn open(driver: &Chromedriver, width: u32, height: u32) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let base = format!("http://127.0.0.1:{}", driver.port);
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", driver.profile().display()));
        args.push(format!("--window-size={width},{height}"));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "pageLoad": 30_000, "script": 10_000, "implicit": 0 },
                    "goog:chromeOptions": {
                        "binary": driver.chromium.display().to_string(),
                        "args": args,
                    },
                },
            },
        });
        let mut me = Self {
            client,
            base,
            session: String::new(),
            driver_log: driver.dir.join("chromedriver.log"),
        };
        let answer = me
            .command(Method::POST, "/session", Some(caps), SESSION_TIMEOUT)
            .await;
        me.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"))
            .to_owned();
        me
    }

    /// Sends one WebDriver command; its `value`, or a panic naming the
    /// error (with the end of chromedriver's log).
    async fn command(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        limit: Duration,
    ) -> Value {
        let what = format!("{method} {path}");
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(body))
            .expect("a WebDriver request");
        let exchange = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("WebDriver {what}: {e}\n{}", self.log_tail()),
            Err(_) => panic!(
                "WebDriver {what}: no answer within {limit:?}\n{}",
                self.log_tail()
            ),
        };
        let answer: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("WebDriver {what}: {e}: {bytes:?}"));
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        if !status.is_success() {
            panic!(
                "WebDriver {what}: {status}: {} {}\n{}",
                value["error"],
                value["message"],
                self.log_tail()
            );
        }
        value
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.driver_log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "chromedriver log (end):\n{}",
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Loads `url` (waits for the page's `load`).
    pub async fn goto(&self, url: &str) {
        let path = self.path("/url");
        self.command(
            Method::POST,
            &path,
            Some(json!({ "url": url })),
            COMMAND_TIMEOUT,
        )
        .await;
    }

    /// The element `css` selects (it must exist).
    pub async fn find(&self, css: &str) -> String {
        let path = self.path("/element");
        let found = self
            .command(
                Method::POST,
                &path,
                Some(json!({ "using": "css selector", "value": css })),
                COMMAND_TIMEOUT,
            )
            .await;
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: no element reference in {found}"))
            .to_owned()
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        let path = self.path(&format!("/element/{id}/click"));
        self.command(Method::POST, &path, Some(json!({})), COMMAND_TIMEOUT)
            .await;
    }

    /// Clears the field `css` selects and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        let clear = self.path(&format!("/element/{id}/clear"));
        self.command(Method::POST, &clear, Some(json!({})), COMMAND_TIMEOUT)
            .await;
        let path = self.path(&format!("/element/{id}/value"));
        self.command(
            Method::POST,
            &path,
            Some(json!({ "text": text })),
            COMMAND_TIMEOUT,
        )
        .await;
    }

    /// The rendered text of the element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        let path = self.path(&format!("/element/{id}/text"));
        let v = self
            .command(Method::GET, &path, None, COMMAND_TIMEOUT)
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body) in the page with `args`; what it
    /// returns.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        let path = self.path("/execute/sync");
        self.command(
            Method::POST,
            &path,
            Some(json!({ "script": script, "args": args })),
            COMMAND_TIMEOUT,
        )
        .await
    }

    /// Runs `script` until it returns something other than `null` or
    /// `false`, at most [`WAIT_TIMEOUT`]; that value. Panics naming `what`
    /// with the last value and the page's problems line.
    pub async fn wait_until(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let v = self.execute(script, json!([])).await;
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            if Instant::now() >= deadline {
                let problems = self
                    .execute(
                        "const p = document.getElementById('problems'); return p ? p.textContent : '';",
                        json!([]),
                    )
                    .await;
                panic!("waited {WAIT_TIMEOUT:?} for {what}: last {v}; page problems: {problems}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let path = self.path("/screenshot");
        let v = self
            .command(Method::GET, &path, None, COMMAND_TIMEOUT)
            .await;
        base64_decode(v.as_str().expect("a base64 screenshot"))
    }

    /// Ends the session (Chromium quits).
    pub async fn close(self) {
        let path = self.path("");
        self.command(Method::DELETE, &path, None, COMMAND_TIMEOUT)
            .await;
    }
}

/// Standard base64 (with padding, as WebDriver sends screenshots).
fn base64_decode(s: &str) -> Vec<u8> {
    fn value(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        }
    }
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, &c) in data.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        let take = data.len().saturating_sub(1);
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

/// Writes `bytes` to `path`, making its directory.
pub fn save(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("create the artifact directory");
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn base64_round_trips() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("aA=="), b"h");
    assert_eq!(base64_decode(""), b"");
}
