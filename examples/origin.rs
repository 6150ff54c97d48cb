//! A slow origin to put behind the proxy for `examples/loadgen.rs`: every
//! GET waits `--delay` and answers a small body with
//! `Cache-Control: public, max-age=N`.
//!
//! ```text
//! cargo run --release --example origin -- --listen 127.0.0.1:8000 --delay 50ms
//! ```
//!
//! Flags: `--listen ADDR` (default 127.0.0.1:8000; port 0 picks one),
//! `--delay D` (default 50ms), `--max-age SECONDS` (default 300),
//! `--body-bytes N` (default 1024). It prints `listening on ADDR` once it
//! accepts connections and runs until Ctrl-C (SIGINT), when it prints how
//! many requests it served.

#[path = "support/load.rs"]
#[allow(dead_code)] // the origin parses flags; it draws no keys
mod load;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use axum::Router;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The origin's settings.
#[derive(Clone)]
struct Origin {
    delay: Duration,
    cache_control: String,
    body: String,
    served: Arc<AtomicU64>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (listen, origin) = args()?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let served = Arc::clone(&origin.served);
    let app = Router::new().fallback(answer).with_state(origin);
    tokio::select! {
        served = axum::serve(listener, app) => served?,
        stop = tokio::signal::ctrl_c() => stop?,
    }
    println!("served {} requests", served.load(Ordering::Relaxed));
    Ok(())
}

/// Any path: wait, then answer with a cacheable body naming the path.
async fn answer(State(origin): State<Origin>, req: Request) -> impl IntoResponse {
    origin.served.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(origin.delay).await;
    let body = format!("{} {}\n", req.uri().path(), origin.body);
    ([(CACHE_CONTROL, origin.cache_control)], body)
}

fn args() -> Result<(SocketAddr, Origin), String> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 8000).into();
    let mut delay = Duration::from_millis(50);
    let mut max_age = 300u64;
    let mut body_bytes = 1024usize;
    let usage = "origin [--listen ADDR] [--delay 50ms] [--max-age SECONDS] [--body-bytes N]";
    for (flag, value) in load::flag_pairs(std::env::args().skip(1), usage)? {
        match flag.as_str() {
            "--listen" => listen = load::parse(&flag, &value)?,
            "--delay" => delay = load::parse_duration(&flag, &value)?,
            "--max-age" => max_age = load::parse(&flag, &value)?,
            "--body-bytes" => body_bytes = load::parse(&flag, &value)?,
            _ => return Err(format!("unknown flag {flag} (--help lists them)")),
        }
    }
    Ok((
        listen,
        Origin {
            delay,
            cache_control: format!("public, max-age={max_age}"),
            body: "x".repeat(body_bytes),
            served: Arc::new(AtomicU64::new(0)),
        },
    ))
}
