//! The L2 tier over TLS (`rediss://`), against a real `redis-server`
//! listening only on a TLS port, with a throwaway CA and server certificate
//! made by the `openssl` CLI. Needs the `redis-tls` feature; without it (but
//! with `redis`) only the check that `rediss://` is a clear build error runs.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

#[cfg(feature = "redis-tls")]
mod tls {
    use std::collections::hash_map::RandomState;
    use std::fs::{self, File};
    use std::hash::{BuildHasher, Hasher};
    use std::io;
    use std::net::{Ipv4Addr, TcpListener};
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::redis_support::{require_redis, run_bounded, CliOutput, RedisServer};
    use super::support::*;
    use tower_tiered_cache::{Cache, CacheBuilder};

    const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";
    const L1_HIT: &str = "tower-tiered-cache; hit; detail=l1";
    const URL: &str = "http://example.com/item";
    /// Bound on one `openssl` run.
    const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);
    /// Bound on the TLS server answering `PING`, port retries included.
    const START_TIMEOUT: Duration = Duration::from_secs(15);
    /// Set in the child process of [`a_verified_connection_trusts_the_ca_from_ssl_cert_file`].
    const CHILD_URL_ENV: &str = "TTC_TLS_TEST_VERIFIED_URL";

    /// A cache on `url` whose L2 operations may take 1 s. A new TLS
    /// connection is slow to make: native-tls builds a connector for each
    /// one and loads the system CA bundle (`SSL_CERT_FILE`, ~150
    /// certificates) into it, even with `#insecure`; with OpenSSL 3 that
    /// is 50-200 ms, so under the default 50 ms `l2_timeout` the first
    /// lookups of a new instance are timeouts (misses). See
    /// [`with_the_default_l2_timeout_l2_hits_once_connected`].
    /// A generous L2 timeout: the first operation makes the TLS connection,
    /// whose handshake (a debug build of rustls) took over a second with
    /// the cores busy (load 12).
    fn l2(url: String) -> CacheBuilder {
        l2_default_timeout(url).l2_timeout(Duration::from_secs(10))
    }

    fn l2_default_timeout(url: String) -> CacheBuilder {
        Cache::builder().redis(url).namespace("t")
    }

    /// `require_redis`, plus the `openssl` CLI: a test that needs them
    /// fails without them. Returns `false` (run).
    fn skip() -> bool {
        require_redis();
        let found = Command::new("openssl")
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        // A test that needs the CLI never passes without it.
        assert!(
            found,
            "the openssl CLI is not installed (Debian: apt-get install openssl; .ci/run does it)"
        );
        false
    }

    fn random_u64() -> u64 {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        h.finish()
    }

    /// A free loopback port below the ephemeral range (so no outgoing
    /// connection takes it between the check and the server's bind).
    fn free_port() -> u16 {
        let eph: u32 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32_768);
        for _ in 0..500 {
            let p = if eph > 11_000 {
                10_000 + (random_u64() % u64::from(eph - 10_000)) as u32
            } else {
                0
            };
            let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, p as u16)) else {
                continue;
            };
            if let Ok(addr) = l.local_addr() {
                return addr.port();
            }
        }
        panic!("no free loopback port found");
    }

    fn make_temp_dir() -> PathBuf {
        for _ in 0..100 {
            let dir = std::env::temp_dir().join(format!(
                "tower-tiered-cache-tls-{}-{:08x}",
                std::process::id(),
                random_u64() as u32
            ));
            match fs::create_dir(&dir) {
                Ok(()) => return dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create {}: {e}", dir.display()),
            }
        }
        panic!("cannot create a unique temporary directory");
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let mut cmd = Command::new("openssl");
        cmd.args(args).current_dir(dir);
        let out: CliOutput = run_bounded(cmd, OPENSSL_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.success(), "openssl {args:?} failed: {out:?}");
    }

    /// A CA (`ca.crt`) and a server certificate it signed (`server.crt`,
    /// `server.key`) for `127.0.0.1` and `localhost`, valid for a day.
    fn make_certificates(dir: &Path) {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            dir,
            &[
                &["req", "-x509", "-nodes"][..],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=tower-tiered-cache test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                &["req", "-nodes"][..],
                &ec[..],
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        );
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write server.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "1",
                "-extfile",
                "server.ext",
            ],
        );
    }

    /// A `redis-server` listening only on a TLS port of 127.0.0.1 (plain
    /// TCP off), with its own CA. Dropping it kills the server and removes
    /// its directory (certificates, log), also when a test panics.
    struct TlsRedis {
        port: u16,
        dir: PathBuf,
        child: Option<Child>,
        /// Kills the server if this process dies without running `Drop`.
        watchdog: Option<Child>,
    }

    impl TlsRedis {
        fn start() -> TlsRedis {
            let mut server = TlsRedis {
                port: 0,
                dir: make_temp_dir(),
                child: None,
                watchdog: None,
            };
            make_certificates(&server.dir);
            let deadline = Instant::now() + START_TIMEOUT;
            let mut tries = Vec::new();
            while Instant::now() < deadline {
                server.port = free_port();
                match server.spawn_until_ready(deadline) {
                    Ok(()) => return server,
                    // Someone took the port meanwhile: try another.
                    Err(e) if e.contains("in use") => tries.push(e),
                    Err(e) => panic!("TLS redis-server did not start: {e}"),
                }
            }
            panic!("TLS redis-server did not start within {START_TIMEOUT:?}: {tries:?}");
        }

        fn spawn_until_ready(&mut self, deadline: Instant) -> Result<(), String> {
            let log_path = self.dir.join("redis.log");
            let log = File::create(&log_path).map_err(|e| e.to_string())?;
            let log_err = log.try_clone().map_err(|e| e.to_string())?;
            let port = self.port.to_string();
            let child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port, "--bind", "127.0.0.1"])
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot run redis-server: {e}"))?;
            self.watchdog = spawn_watchdog(child.id());
            self.child = Some(child);
            loop {
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    self.kill();
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    return Err(format!("redis-server exited ({status}); log:\n{log}"));
                }
                // Only our server presents a certificate from our CA.
                let out = self.cli(&["PING"]);
                if out.text() == "PONG" {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let last = out.all();
                    self.kill();
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    return Err(format!(
                        "not ready on TLS port {port} (last probe: {last}); log:\n{log}"
                    ));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }

        /// `redis-cli --tls` (verifying against our CA), bounded.
        fn cli(&self, args: &[&str]) -> CliOutput {
            let mut cmd = Command::new("redis-cli");
            cmd.args(["--tls", "--cacert"])
                .arg(self.dir.join("ca.crt"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args);
            run_bounded(cmd, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"))
        }

        fn ca(&self) -> PathBuf {
            self.dir.join("ca.crt")
        }

        /// `rediss://127.0.0.1:PORT/#insecure`: TLS without certificate checks.
        fn insecure_url(&self) -> String {
            format!("rediss://127.0.0.1:{}/#insecure", self.port)
        }

        /// `rediss://127.0.0.1:PORT/`: TLS, certificate and host name checked.
        fn verified_url(&self) -> String {
            format!("rediss://127.0.0.1:{}/", self.port)
        }

        fn kill(&mut self) {
            if let Some(mut wd) = self.watchdog.take() {
                let _ = wd.kill();
                let _ = wd.wait();
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for TlsRedis {
        fn drop(&mut self) {
            self.kill();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// `bash` reading a pipe from this process: on EOF (this process died)
    /// it SIGKILLs the server's process group.
    fn spawn_watchdog(pgid: u32) -> Option<Child> {
        Command::new("bash")
            .args([
                "-c",
                r#"read -r line; kill -s KILL -- "-$1" 2>/dev/null; exit 0"#,
                "redis-tls-watchdog",
                &pgid.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()
    }

    /// One cache stores a response in L2 over `url`; a second cache (empty
    /// L1) on the same URL serves it from L2 without calling the origin.
    async fn round_trip(url: String) {
        let (origin, log) = origin(|_, _| ok("max-age=60", "over tls"));
        let a = l2(url.clone()).build().unwrap();
        let r = send(&cached(&a, origin.clone()), get(URL)).await;
        assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
        written(&a, 1).await;

        let b = l2(url).build().unwrap();
        let r = send(&cached(&b, origin), get(URL)).await;
        assert_eq!(cache_status(&r), L2_HIT, "{:?}", b.stats());
        assert_eq!(body(r).await, "over tls");
        assert_eq!(log.calls(), 1, "the second cache did not call the origin");
        assert_eq!(b.stats().hits_l2, 1);
        assert_eq!(a.stats().l2_errors + b.stats().l2_errors, 0);
    }

    #[tokio::test]
    async fn a_second_cache_is_served_from_l2_over_tls() {
        if skip() {
            return;
        }
        let server = TlsRedis::start();
        round_trip(server.insecure_url()).await;
        // The entry really is in the TLS server.
        let keys = server.cli(&["--scan", "--pattern", "t:*"]);
        assert_eq!(keys.text().lines().count(), 1, "{keys:?}");
    }

    /// Sends requests for fresh URLs (`{prefix}0`, `{prefix}1`, …) through
    /// `svc` until `want` of their L2 writes have landed (or `budget` has
    /// passed); returns those URLs. With the default 50 ms timeout a write
    /// (or the TLS connection it waits for) may miss its deadline on a busy
    /// machine and be dropped by design: that URL is simply not one of the
    /// landed ones. Each write's fate (landed or dropped) is waited for
    /// before the next.
    async fn landed_writes(
        cache: &Cache,
        svc: &Svc,
        prefix: &str,
        want: usize,
        budget: Duration,
    ) -> Vec<String> {
        let mut landed = Vec::new();
        let deadline = Instant::now() + budget;
        for i in 0.. {
            // Timeouts while the TLS connection is made may open the L2
            // breaker (writes are then dropped at once): wait until it
            // lets operations through again.
            let closed = within(Duration::from_secs(30), || {
                cache.stats().l2_breaker != Some(tower_tiered_cache::BreakerState::Open)
            })
            .await;
            assert!(closed, "the L2 breaker stayed open: {:?}", cache.stats());
            if Instant::now() > deadline {
                break;
            }
            let url = format!("{prefix}{i}");
            let before = cache.stats();
            send(svc, get(&url)).await;
            let settled = within(Duration::from_secs(10), || {
                let st = cache.stats();
                st.l2_writes + st.l2_writes_dropped > before.l2_writes + before.l2_writes_dropped
            })
            .await;
            assert!(
                settled,
                "a write neither landed nor dropped: {:?}",
                cache.stats()
            );
            if cache.stats().l2_writes > before.l2_writes {
                landed.push(url);
                if landed.len() == want {
                    break;
                }
            }
        }
        landed
    }

    /// The default 50 ms budget was never met. That is a failure unless
    /// the machine is measurably too slow for it right now: a cache with a
    /// generous timeout times making its TLS connection and five L2 hits
    /// over the same server; a connection slower than the default 500 ms
    /// connect timeout, or a median hit above 50 ms, means the defaults
    /// cannot be met here (issue 12 point 8: a busy machine is not a dead
    /// Redis), and the test says so instead of failing.
    async fn starved_or_fail(server: &TlsRedis, what: &str, stats: &tower_tiered_cache::Stats) {
        let (origin, _) = origin(|_, _| ok("max-age=60", "control"));
        let c = l2(server.insecure_url()).build().unwrap();
        send(
            &cached(&c, origin.clone()),
            get("http://example.com/control"),
        )
        .await;
        written(&c, 1).await;
        let d = l2(server.insecure_url())
            .promote_after(1_000_000)
            .build()
            .unwrap();
        let svc = cached(&d, origin);
        // The first makes the connection (with a 10 s budget).
        let mut times = Vec::new();
        for _ in 0..6 {
            let t = Instant::now();
            let r = send(&svc, get("http://example.com/control")).await;
            assert_eq!(cache_status(&r), L2_HIT);
            times.push(t.elapsed());
        }
        let connect = times.remove(0);
        times.sort();
        let median = times[times.len() / 2];
        assert!(
            connect > Duration::from_millis(500) || median > Duration::from_millis(50),
            "{what}: no L2 operation met the default timeouts over TLS, though \
             connecting takes {connect:?} and L2 hits {median:?} here (median of \
             {times:?}): {stats:?}"
        );
        eprintln!(
            "{what}: the default L2 timeouts cannot be met on this machine now \
             (a TLS connection takes {connect:?}, L2 hits {median:?}, median of \
             {times:?}); not asserted"
        );
    }

    #[tokio::test]
    async fn with_the_default_l2_timeout_l2_hits_once_connected() {
        if skip() {
            return;
        }
        let server = TlsRedis::start();
        let (origin, log) = origin(|_, _| ok("max-age=60", "warm"));
        let budget = Duration::from_secs(30);
        // a stores entries until five have landed in L2 (its connection is
        // then up); b connects by the same evidence (one landed write).
        let a = l2_default_timeout(server.insecure_url()).build().unwrap();
        let stored = landed_writes(
            &a,
            &cached(&a, origin.clone()),
            "http://example.com/a/",
            5,
            budget,
        )
        .await;
        if stored.is_empty() {
            return starved_or_fail(&server, "writes of a", &a.stats()).await;
        }
        let b = l2_default_timeout(server.insecure_url()).build().unwrap();
        let svc = cached(&b, origin.clone());
        if landed_writes(&b, &svc, "http://example.com/b/", 1, budget)
            .await
            .is_empty()
        {
            return starved_or_fail(&server, "writes of b", &b.stats()).await;
        }
        // Connected, a read answers within 50 ms: one of those stored must
        // be an L2 hit (a read that still misses the deadline is a miss by
        // design).
        let calls = log.calls();
        let mut seen = Vec::new();
        for url in &stored {
            let r = send(&svc, get(url)).await;
            if cache_status(&r) == L2_HIT {
                assert_eq!(body(r).await, "warm");
                assert_eq!(log.calls(), calls + seen.len(), "an L2 hit calls no origin");
                return;
            }
            seen.push(cache_status(&r));
        }
        starved_or_fail(&server, &format!("reads of b {seen:?}"), &b.stats()).await;
    }

    #[tokio::test]
    async fn invalidations_reach_the_other_instance_over_tls_pubsub() {
        if skip() {
            return;
        }
        let server = TlsRedis::start();
        let (origin, log) = origin(|n, _| ok("max-age=60", &format!("v{n}")));
        let a = l2(server.insecure_url()).build().unwrap();
        let b = l2(server.insecure_url()).promote_after(1).build().unwrap();
        let (svc_a, svc_b) = (cached(&a, origin.clone()), cached(&b, origin));
        send(&svc_a, get(URL)).await;
        written(&a, 1).await;
        assert_eq!(cache_status(&send(&svc_b, get(URL)).await), L2_HIT);
        assert_eq!(cache_status(&send(&svc_b, get(URL)).await), L1_HIT);
        for cache in [&a, &b] {
            assert!(
                eventually(|| cache.stats().l2_subscribed).await,
                "not subscribed over TLS: {:?}",
                cache.stats()
            );
        }
        assert!(a.invalidate(&get(URL)));
        assert!(
            eventually(|| b.stats().l2_messages_received >= 1).await,
            "no invalidation message reached b"
        );
        let r = send(&svc_b, get(URL)).await;
        assert!(
            cache_status(&r).contains("fwd=uri-miss"),
            "{}",
            cache_status(&r)
        );
        assert_eq!(body(r).await, "v1");
        assert_eq!(log.calls(), 2);
    }

    #[tokio::test]
    async fn without_insecure_an_untrusted_certificate_is_refused_and_l2_misses() {
        if skip() {
            return;
        }
        let server = TlsRedis::start();
        let (origin, log) = origin(|_, _| ok("max-age=60", "x"));
        let cache = l2(server.verified_url()).build().unwrap();
        let svc = cached(&cache, origin);
        for _ in 0..2 {
            let r = send(&svc, get("http://example.com/untrusted")).await;
            assert_eq!(r.status(), 200);
        }
        // Served by L1 and the origin; L2 failed the handshake.
        assert_eq!(log.calls(), 1);
        assert!(
            eventually(|| cache.stats().l2_errors + cache.stats().l2_timeouts >= 1).await,
            "{:?}",
            cache.stats()
        );
        assert_eq!(cache.stats().l2_writes, 0, "{:?}", cache.stats());
        assert!(server.cli(&["--scan"]).text().is_empty());
    }

    /// A verified `rediss://` connection (no `#insecure`): native-tls reads
    /// the trusted CAs from `SSL_CERT_FILE` once per process, so the check
    /// runs in a child process (this test binary, this test) with it set.
    #[tokio::test]
    async fn a_verified_connection_trusts_the_ca_from_ssl_cert_file() {
        if skip() {
            return;
        }
        if let Ok(url) = std::env::var(CHILD_URL_ENV) {
            round_trip(url).await;
            return;
        }
        let server = TlsRedis::start();
        let name = "tls::a_verified_connection_trusts_the_ca_from_ssl_cert_file";
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_URL_ENV, server.verified_url())
            .env("SSL_CERT_FILE", server.ca())
            .env_remove("SSL_CERT_DIR");
        let out = run_bounded(cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.success() && out.stdout.contains("1 passed"),
            "the verified round trip failed: {out:?}\nserver log:\n{}",
            fs::read_to_string(server.dir.join("redis.log")).unwrap_or_default()
        );
    }

    #[tokio::test]
    async fn plain_redis_urls_work_as_before_with_tls_compiled_in() {
        require_redis();
        let server = RedisServer::start();
        round_trip(server.url()).await;
    }

    #[test]
    fn a_bad_tls_url_is_a_build_error() {
        let err = Cache::builder()
            .redis("rediss://127.0.0.1:6380/#nonsense")
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "redis");
        assert!(err.to_string().contains("Redis URL"), "{err}");
        // A good one builds (nothing is connected yet).
        assert!(Cache::builder()
            .redis("rediss://127.0.0.1:1/#insecure")
            .build()
            .is_ok());
        assert!(Cache::builder()
            .redis_cluster(["rediss://127.0.0.1:1/", "rediss://127.0.0.1:2/"])
            .build()
            .is_ok());
    }
}

#[cfg(not(feature = "redis-tls"))]
mod no_tls {
    use tower_tiered_cache::Cache;

    #[test]
    fn rediss_urls_without_the_feature_are_a_clear_build_error() {
        for url in [
            "rediss://127.0.0.1:6380/",
            "rediss://127.0.0.1:6380/#insecure",
            "REDISS://user:pw@localhost/",
            "valkeys://127.0.0.1/",
        ] {
            let err = Cache::builder().redis(url).build().unwrap_err();
            assert_eq!(err.setting(), "redis", "{url}");
            let msg = err.to_string();
            assert!(msg.contains("`redis-tls` feature"), "{url}: {msg}");
            assert!(!msg.contains("pw"), "{url}: the message leaks the URL");
        }
        let err = Cache::builder()
            .redis_cluster(["redis://127.0.0.1:7000/", "rediss://127.0.0.1:7001/"])
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("`redis-tls` feature"), "{err}");
        // Plain URLs are unaffected.
        assert!(Cache::builder()
            .redis("redis://127.0.0.1:1/")
            .build()
            .is_ok());
    }
}
