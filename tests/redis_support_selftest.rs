//! Tests of the Redis test support (`tests/support/redis.rs`): servers on
//! free loopback ports, kill/restart, password and ACL users, extra args,
//! freezing, clean-up on drop and on panic, and a 3-master cluster.
//!
//! Checks go through `redis-cli` (and the support's std-only RESP client),
//! not the `redis` crate. Without Redis installed these tests print
//! "skipping: redis-server not installed", unless `CI` is set.

#[path = "support/redis.rs"]
mod redis_support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use redis_support::{
    redis_cli, redis_requirement, require_redis, Auth, RedisCluster, RedisServer, Reply,
    START_TIMEOUT,
};

/// The process is gone and reaped (no zombie): `/proc/PID` is absent.
fn assert_gone(pid: u32) {
    if Path::new("/proc/self").exists() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists (alive or zombie)"
        );
    }
}

#[test]
fn a_missing_redis_fails_the_test_in_and_out_of_ci() {
    assert_eq!(redis_requirement(true), Ok(()));
    let msg = redis_requirement(false).unwrap_err();
    assert!(msg.contains("apt-get install redis-server"), "{msg}");
}

#[test]
fn set_get_kill_restart() {
    require_redis();
    let mut server = RedisServer::start();
    let port = server.port();
    assert_ne!(port, 6379);
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}/"));
    assert_eq!(server.url_with_auth(), server.url());
    assert_eq!(server.auth(), Auth::None);

    assert_eq!(server.cli(&["set", "foo", "bar"]).text(), "OK");
    assert_eq!(server.cli(&["get", "foo"]).text(), "bar");
    assert_eq!(
        server.cmd(&["GET", "foo"]),
        Ok(Reply::Bulk(b"bar".to_vec()))
    );
    // The configured settings are in force.
    let save = server.cli(&["config", "get", "save"]);
    assert_eq!(save.stdout.lines().nth(1).unwrap_or("?"), "", "{save:?}");
    let dir = server.dir().to_path_buf();
    assert!(dir.exists());

    let pid = server.pid().unwrap();
    server.kill();
    assert!(!server.is_running());
    assert_gone(pid);
    let down = server.cli(&["ping"]);
    assert!(!down.success(), "{down:?}");
    assert!(down.all().contains("Connection refused"), "{down:?}");
    assert!(!server.ping(Duration::from_millis(200)));

    let t = Instant::now();
    server.restart();
    eprintln!("restart took {:?}", t.elapsed());
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    assert_eq!(server.cli(&["ping"]).text(), "PONG");
    // No persistence: the data is gone after a restart.
    assert_eq!(server.cli(&["get", "foo"]).text(), "");

    // Graceful stop, then restart again.
    let pid = server.pid().unwrap();
    server.stop();
    assert_gone(pid);
    assert!(!server.ping(Duration::from_millis(200)));
    server.restart();
    assert!(server.ping(Duration::from_secs(1)));

    let pid = server.pid().unwrap();
    drop(server);
    assert_gone(pid);
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
}

#[test]
fn restart_waits_for_its_port() {
    require_redis();
    let mut server = RedisServer::start();
    let port = server.port();
    server.kill();
    // Something else holds the port for a moment: restart retries.
    let holder = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let release = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        let released = Instant::now();
        drop(holder);
        released
    });
    server.restart();
    // Structural, not a duration: restart came back only after the port
    // was released (however late a busy machine ran either thread).
    let restarted = Instant::now();
    let released = release.join().unwrap();
    assert!(restarted >= released, "restart did not wait for its port");
    assert_eq!(server.port(), port);
    assert!(server.ping(Duration::from_secs(1)));
    assert!(server.log().contains("in use"));
}

#[test]
fn password_server() {
    require_redis();
    let server = RedisServer::with_password("s3cret");
    let port = server.port().to_string();

    let anon = redis_cli(&["-p", &port, "ping"]);
    assert!(anon.all().contains("NOAUTH"), "{anon:?}");
    let wrong = redis_cli(&["-p", &port, "-a", "nope", "--no-auth-warning", "ping"]);
    assert!(wrong.all().contains("WRONGPASS"), "{wrong:?}");
    let good = redis_cli(&["-p", &port, "-a", "s3cret", "--no-auth-warning", "ping"]);
    assert_eq!(good.text(), "PONG");

    assert_eq!(
        server.url_with_auth(),
        format!("redis://:s3cret@127.0.0.1:{port}/")
    );
    // redis-cli (7.0) sends `AUTH "" PW` for `redis://:PW@`, so it needs
    // the user named; the redis crate takes the empty-user form as is.
    let url = format!("redis://default:s3cret@127.0.0.1:{port}/");
    let by_url = redis_cli(&["-u", &url, "--no-auth-warning", "ping"]);
    assert_eq!(by_url.text(), "PONG", "{by_url:?}");
    assert_eq!(server.cli(&["ping"]).text(), "PONG");
    assert!(server
        .cli_unauthenticated(&["ping"])
        .all()
        .contains("NOAUTH"));
}

#[test]
fn acl_user_server() {
    require_redis();
    // Characters that need percent-encoding in a URL and quoting in a
    // redis.conf line.
    let pw = "p@ss w:rd/\"x\"";
    let mut server = RedisServer::with_acl_user("alice", pw);
    let port = server.port().to_string();

    // The default user is off.
    let anon = redis_cli(&["-p", &port, "ping"]);
    assert!(anon.all().contains("NOAUTH"), "{anon:?}");
    let as_alice = redis_cli(&[
        "-p",
        &port,
        "--user",
        "alice",
        "--pass",
        pw,
        "--no-auth-warning",
        "acl",
        "whoami",
    ]);
    assert_eq!(as_alice.text(), "alice", "{as_alice:?}");
    let wrong = redis_cli(&[
        "-p",
        &port,
        "--user",
        "alice",
        "--pass",
        "nope",
        "--no-auth-warning",
        "ping",
    ]);
    assert!(wrong.all().contains("WRONGPASS"), "{wrong:?}");

    let url = server.url_with_auth();
    assert_eq!(
        url,
        format!("redis://alice:p%40ss%20w%3Ard%2F%22x%22@127.0.0.1:{port}/")
    );
    let by_url = redis_cli(&["-u", &url, "--no-auth-warning", "acl", "whoami"]);
    assert_eq!(by_url.text(), "alice", "{by_url:?}");

    // The user survives a restart (it is in the config, not set at runtime).
    server.restart();
    assert_eq!(server.cli(&["acl", "whoami"]).text(), "alice");
    assert_eq!(
        server.cmd(&["ACL", "WHOAMI"]),
        Ok(Reply::Bulk(b"alice".to_vec()))
    );
}

#[test]
fn password_and_acl_user_together() {
    require_redis();
    let server = RedisServer::builder()
        .password("defaultpw")
        .acl_user("bob", "bobpw")
        .start();
    let port = server.port().to_string();
    let default = redis_cli(&["-p", &port, "-a", "defaultpw", "--no-auth-warning", "ping"]);
    assert_eq!(default.text(), "PONG");
    assert_eq!(server.cli(&["acl", "whoami"]).text(), "bob");
}

#[test]
fn extra_args() {
    require_redis();
    let server = RedisServer::with_args(&["--maxmemory", "12345678", "--databases", "4"]);
    let maxmemory = server.cli(&["config", "get", "maxmemory"]);
    assert_eq!(maxmemory.stdout.lines().nth(1), Some("12345678"));
    let dbs = server.cli(&["config", "get", "databases"]);
    assert_eq!(dbs.stdout.lines().nth(1), Some("4"));
}

#[test]
fn bad_args_fail_with_the_log() {
    require_redis();
    let t = Instant::now();
    let err = RedisServer::builder()
        .args(&["--no-such-option", "1"])
        .try_start()
        .unwrap_err();
    assert!(err.contains("no-such-option"), "{err}");
    // Failed as soon as the server exited, not at the end of its start
    // budget: the bound is half of START_TIMEOUT (10 s), where starting a
    // server with a bad option takes milliseconds however busy the machine.
    assert!(t.elapsed() < START_TIMEOUT / 2, "{:?}", t.elapsed());
}

#[test]
fn freeze_and_unfreeze() {
    require_redis();
    let mut server = RedisServer::start();
    server.freeze();
    let t = Instant::now();
    assert!(!server.ping(Duration::from_millis(300)));
    // It gave up: a ping that ignored its bound would wait as long as the
    // server is frozen, for ever. The bound is generous (each of the
    // ping's steps has 300 ms) so that a busy machine cannot break it.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    server.unfreeze();
    assert!(server.ping(Duration::from_secs(2)));
    // Dropping a frozen server still kills it.
    server.freeze();
    let pid = server.pid().unwrap();
    drop(server);
    assert_gone(pid);
}

#[test]
fn many_servers_get_distinct_ports() {
    require_redis();
    let handles: Vec<_> = (0..6).map(|_| thread::spawn(RedisServer::start)).collect();
    let servers: Vec<RedisServer> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for s in &servers {
        // Each port is answered by its own process.
        let info = s.cli(&["info", "server"]);
        let pid = format!("process_id:{}", s.pid().unwrap());
        assert!(info.stdout.contains(&pid), "{info:?}");
    }
}

#[test]
fn killed_on_panic() {
    require_redis();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    let result = thread::spawn(move || {
        let server = RedisServer::start();
        *seen2.lock().unwrap() = Some((server.pid().unwrap(), server.dir().to_path_buf()));
        // A panic without the panic hook's backtrace noise; it unwinds
        // (running Drop) like any test failure.
        std::panic::resume_unwind(Box::new("test panics while the server runs"));
    })
    .join();
    assert!(result.is_err());
    let (pid, dir) = seen.lock().unwrap().take().unwrap();
    assert_gone(pid);
    assert!(!dir.exists());
}

#[test]
fn cluster_set_and_get_through_another_node() {
    require_redis();
    let t = Instant::now();
    let cluster = RedisCluster::start(3);
    eprintln!("cluster start took {:?}", t.elapsed());
    assert_eq!(cluster.nodes().len(), 3);
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    for (url, port) in urls.iter().zip(cluster.ports()) {
        assert_eq!(url, &format!("redis://127.0.0.1:{port}/"));
    }
    let info = redis_cli(&["-p", &cluster.ports()[0].to_string(), "cluster", "info"]);
    assert!(info.stdout.contains("cluster_state:ok"), "{info:?}");
    assert!(info.stdout.contains("cluster_slots_assigned:16384"));

    let p1 = cluster.ports()[0].to_string();
    let p2 = cluster.ports()[1].to_string();
    let set = redis_cli(&["-c", "-p", &p1, "set", "foo", "bar"]);
    assert_eq!(set.text(), "OK", "{set:?}");
    let get = redis_cli(&["-c", "-p", &p2, "get", "foo"]);
    assert_eq!(get.text(), "bar", "{get:?}");
    // Keys in other slots land on other nodes, all reachable with -c.
    for k in ["a", "b", "c", "{user1}x", "{user2}y"] {
        assert_eq!(cluster.cli(2, &["set", k, k]).text(), "OK");
        assert_eq!(cluster.cli(0, &["get", k]).text(), k);
    }

    let pids: Vec<u32> = cluster.nodes().iter().map(|n| n.pid().unwrap()).collect();
    drop(cluster);
    for pid in pids {
        assert_gone(pid);
    }
}

#[test]
fn cluster_node_kill_and_restart() {
    require_redis();
    let mut cluster = RedisCluster::start(3);
    // The node serving "foo" answers; the others (without -c) say MOVED.
    let owner = (0..3)
        .find(|&i| !cluster.node(i).cli(&["get", "foo"]).all().contains("MOVED"))
        .expect("some node owns foo");
    let other = (owner + 1) % 3;

    let t = Instant::now();
    cluster.kill_node(owner);
    // The others notice after about the node timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = cluster.cluster_info(other).unwrap();
        if info.contains("cluster_state:fail") {
            break;
        }
        assert!(Instant::now() < deadline, "cluster never failed:\n{info}");
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("cluster failed after {:?}", t.elapsed());
    let down = cluster.cli(other, &["get", "foo"]);
    assert!(down.all().contains("CLUSTERDOWN"), "{down:?}");

    let t = Instant::now();
    cluster.restart_node(owner);
    eprintln!("cluster ok again {:?} after the restart", t.elapsed());
    assert_eq!(cluster.cli(other, &["set", "foo", "2"]).text(), "OK");
    assert_eq!(cluster.cli(owner, &["get", "foo"]).text(), "2");
}

#[test]
fn cluster_with_password() {
    require_redis();
    let cluster = RedisCluster::start_with(3, RedisServer::builder().password("clusterpw"));
    let p = cluster.ports()[0].to_string();
    assert!(redis_cli(&["-c", "-p", &p, "set", "k", "v"])
        .all()
        .contains("NOAUTH"));
    assert_eq!(cluster.cli(0, &["set", "k", "v"]).text(), "OK");
    assert_eq!(cluster.cli(1, &["get", "k"]).text(), "v");
    assert!(cluster.urls_with_auth()[2].starts_with("redis://:clusterpw@127.0.0.1:"));
}
