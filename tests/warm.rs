//! Warming reports: duplicates, skipped, failures with reasons, and a
//! per-request time limit that covers the body too.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use tower::{service_fn, Layer};
use tower_tiered_cache::warm::{WarmOptions, WarmTarget};
use tower_tiered_cache::{Cache, CacheLayer};

/// One chunk, then nothing ever again.
struct Endless {
    sent: bool,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            Poll::Pending
        } else {
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk")))))
        }
    }
}

// Tokio's clock is paused (no real I/O here): the 100 ms limit and the
// bound below are exact, however busy the machine.
#[tokio::test(start_paused = true)]
async fn a_body_that_never_ends_times_out_and_the_report_says_so() {
    let origin = service_fn(|req: Request<String>| async move {
        let endless = req.uri().path() == "/stream";
        let cc = if endless { "no-store" } else { "max-age=60" };
        let body: http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible> = if endless {
            http_body_util::BodyExt::boxed_unsync(Endless { sent: false })
        } else {
            http_body_util::BodyExt::boxed_unsync(http_body_util::Full::new(Bytes::from_static(
                b"ok",
            )))
        };
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", cc)
                .body(body)
                .unwrap(),
        )
    });
    let cache = Cache::builder().build().unwrap();
    let svc = CacheLayer::new(cache.clone()).layer(origin);
    let progress = Arc::new(AtomicUsize::new(0));
    let p = progress.clone();
    let targets: Vec<WarmTarget> = [
        "http://svc.example/stream",
        "http://svc.example/a",
        "http://svc.example/a",
    ]
    .iter()
    .map(|u| u.parse().unwrap())
    .collect();
    let started = tokio::time::Instant::now();
    // A hang would never end (the body stays pending): the paused clock
    // jumps to this timeout instead.
    let report = tokio::time::timeout(
        Duration::from_secs(5),
        svc.warm(
            targets,
            WarmOptions::default().timeout(Duration::from_millis(100)),
            move |_| {
                p.fetch_add(1, Ordering::SeqCst);
            },
        ),
    )
    .await
    .expect("warming hung");
    assert!(started.elapsed() < Duration::from_secs(5), "warming hung");
    assert_eq!(
        (report.requested, report.duplicates, report.warmed),
        (3, 1, 1)
    );
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].url, "http://svc.example/stream");
    assert_eq!(report.failed[0].reason, "timed out");
    assert_eq!(progress.load(Ordering::SeqCst), 2);

    // Warming again: the fresh entry is skipped, not fetched.
    let again = svc
        .warm(
            vec!["http://svc.example/a".parse().unwrap()],
            WarmOptions::default(),
            |_| {},
        )
        .await;
    assert_eq!((again.warmed, again.skipped), (0, 1));
}
