//! Real servers for the over-the-wire tests: an axum `Router` on a free
//! loopback port, a plain hyper-util client, and responses read to their end.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The bound on any single exchange.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A server on a free loopback port, stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` on `127.0.0.1:0`.
pub async fn serve(app: Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Server { addr, task }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A plain hyper-util client: it sends `Accept-Encoding` only when told to
/// and never decompresses, so the test sees the bytes on the wire.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Reads `resp` to its end (no time bound of its own).
pub async fn read_reply<B>(resp: Response<B>) -> Reply
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

/// Sends `req` with `client` and reads the response, within [`DEADLINE`].
pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    timeout(DEADLINE, async {
        read_reply(client.request(req).await.expect("request")).await
    })
    .await
    .unwrap_or_else(|_| panic!("{what} timed out"))
}
