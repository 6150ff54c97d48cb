//! A first look at the reqwest middleware against a real axum origin.
#![cfg(feature = "reqwest")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tower_tiered_cache::reqwest::ClientBuilder;
use tower_tiered_cache::{Cache, CacheMode};

#[tokio::test]
async fn a_second_get_is_a_hit_and_the_origin_is_called_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().route(
        "/odds",
        get(move || {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                ([("cache-control", "max-age=60")], "1.85")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let cache = Cache::builder().mode(CacheMode::Private).build().unwrap();
    let client = ClientBuilder::new(reqwest::Client::new(), cache.clone()).build();
    let url = format!("http://{addr}/odds");
    let first = client.get(&url).send().await.unwrap();
    assert_eq!(first.url().as_str(), url);
    assert!(first.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("stored"));
    assert_eq!(first.text().await.unwrap(), "1.85");
    let second = client.get(&url).send().await.unwrap();
    assert_eq!(
        second.headers()["cache-status"],
        "tower-tiered-cache; hit; detail=l1"
    );
    assert_eq!(second.url().as_str(), url);
    assert_eq!(second.text().await.unwrap(), "1.85");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let labels = cache.label_stats();
    assert_eq!(labels[0].label, "127.0.0.1");
    assert_eq!((labels[0].hits, labels[0].misses), (1, 1));
}
