//! The cluster port: node-to-node messages over HTTP/2 (cleartext, prior knowledge), one
//! persistent connection per peer carrying every group's messages as concurrent streams.
//! Each request is `POST /engram/cluster/v1` whose body is one message of [`crate::codec`] and
//! whose response body is the reply.
//!
//! - **Authentication.** With a cluster secret every request carries
//!   `X-Engram-Cluster-Token`, the hex SHA-256 of a fixed label and the secret (the secret
//!   itself never travels); the server compares it in constant time and answers 401 to a
//!   request without the right one, before decoding anything. A node with another secret is
//!   refused and changes nothing. Without a secret the port must be bound to loopback (the
//!   caller checks: `engram start`). The traffic is not encrypted and the token is the same
//!   on every request: it keeps out whoever can reach the port but not read its traffic; one
//!   who can read it can replay the token. Run the cluster port on a private network (a
//!   per-request HMAC or mTLS is the next step).
//! - **Bounds and backpressure.** A request body is read up to [`MAX_FRAME`] (a longer one is
//!   refused with 413 before it is buffered); the server handles at most
//!   [`MAX_CONCURRENT`] requests at once (more wait for a slot: HTTP/2 flow control then holds
//!   the senders back), a peer connection carries at most [`MAX_CONCURRENT`] streams, and the
//!   port keeps at most [`MAX_CONNECTIONS`] connections (more are closed at once); the server
//!   pings each connection every 10 s and closes one silent for 5 s more (a peer gone
//!   without a FIN does not hold its place).
//!   A malformed message is answered with the codec's `Error` and a log line, never a panic.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::codec::MAX_FRAME;
use crate::network::{BoxFut, Transport};
use crate::ReplicaNode;

/// The path of every message.
pub const PATH: &str = "/engram/cluster/v1";
/// The header carrying the token derived from the cluster secret.
pub const TOKEN_HEADER: &str = "x-engram-cluster-token";
/// Requests one server handles at once, and streams one connection carries.
pub const MAX_CONCURRENT: usize = 1024;
/// Connections the cluster port keeps open at once (a node keeps one to each peer).
pub const MAX_CONNECTIONS: usize = 512;
/// The shortest cluster secret accepted (API.md: 32 bytes or more).
pub const MIN_SECRET: usize = 32;

/// The token a node with `secret` sends: hex SHA-256 of a label and the secret.
pub fn token(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"engram cluster token v1\0");
    h.update(secret);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a cluster secret file: its bytes without trailing whitespace, at least
/// [`MIN_SECRET`] of them.
pub fn read_secret(path: &std::path::Path) -> io::Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cluster secret file {}: {e}", path.display()),
        )
    })?;
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let secret = bytes[..end].to_vec();
    if secret.len() < MIN_SECRET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cluster secret file {}: {} bytes, at least {MIN_SECRET} are needed (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
                path.display(),
                secret.len()
            ),
        ));
    }
    Ok(secret)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sends messages to other nodes' cluster ports.
pub struct HttpTransport {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    token: Option<String>,
    /// Cluster addresses by raft id.
    book: parking_lot::RwLock<HashMap<u64, String>>,
}

impl HttpTransport {
    /// A transport sending `secret`'s token (none: no token, for a loopback-only cluster).
    pub fn new(secret: Option<&[u8]>) -> Arc<Self> {
        Self::with_local_ip(secret, None)
    }

    /// As [`HttpTransport::new`], its connections leaving from `local_ip` (`None`: the
    /// system's choice).
    pub fn with_local_ip(secret: Option<&[u8]>, local_ip: Option<IpAddr>) -> Arc<Self> {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_local_address(local_ip);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Some(Duration::from_secs(10)))
            .http2_keep_alive_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Arc::new(Self {
            client,
            token: secret.map(token),
            book: parking_lot::RwLock::new(HashMap::new()),
        })
    }

    /// Records (or changes) the cluster address of node `id`.
    pub fn set_address(&self, id: u64, address: &str) {
        let mut book = self.book.write();
        if book.get(&id).map(String::as_str) != Some(address) {
            book.insert(id, address.to_string());
        }
    }

    /// The address recorded for `id`.
    pub fn address(&self, id: u64) -> Option<String> {
        self.book.read().get(&id).cloned()
    }

    /// Sends one message to the node at `address` (`host:port`) and returns its reply.
    pub fn call_address(&self, address: &str, body: Vec<u8>) -> BoxFut<io::Result<Vec<u8>>> {
        let uri = format!("http://{address}{PATH}");
        let mut req = Request::post(uri);
        if let Some(t) = &self.token {
            req = req.header(TOKEN_HEADER, t);
        }
        let req = req.body(Full::new(Bytes::from(body)));
        let client = self.client.clone();
        let address = address.to_string();
        Box::pin(async move {
            let req = req.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let resp = client.request(req).await.map_err(|e| {
                io::Error::new(io::ErrorKind::ConnectionRefused, format!("{address}: {e}"))
            })?;
            match resp.status() {
                StatusCode::OK => {}
                StatusCode::UNAUTHORIZED => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{address} refused this node: another cluster secret"),
                    ))
                }
                s => return Err(io::Error::other(format!("{address} answered {s}"))),
            }
            let body = Limited::new(resp.into_body(), MAX_FRAME)
                .collect()
                .await
                .map_err(|e| io::Error::other(format!("{address}: {e}")))?;
            Ok(body.to_bytes().to_vec())
        })
    }
}

impl Transport for HttpTransport {
    fn call(&self, to: u64, request: Vec<u8>) -> BoxFut<io::Result<Vec<u8>>> {
        match self.address(to) {
            Some(a) => self.call_address(&a, request),
            None => Box::pin(async move {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no cluster address known for node {to}"),
                ))
            }),
        }
    }
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Handles one request: authenticated, bounded, decoded by the node.
async fn handle(
    req: Request<Incoming>,
    node: Arc<ReplicaNode>,
    token: Option<Arc<str>>,
    slots: Arc<Semaphore>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != PATH || req.method() != hyper::Method::POST {
        return Ok(reply(StatusCode::NOT_FOUND, Vec::new()));
    }
    if let Some(t) = &token {
        let ok = req
            .headers()
            .get(TOKEN_HEADER)
            .is_some_and(|v| constant_time_eq(v.as_bytes(), t.as_bytes()));
        if !ok {
            tracing::warn!(%peer, "refusing a cluster message without this cluster's token");
            return Ok(reply(StatusCode::UNAUTHORIZED, Vec::new()));
        }
    }
    // The body before the slot: a request waiting for a slot with its body unread would hold
    // the connection's flow-control window that the requests holding slots need to finish
    // theirs. What is buffered meanwhile is bounded by HTTP/2's windows and MAX_CONCURRENT
    // streams per connection.
    let body = match Limited::new(req.into_body(), MAX_FRAME).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refusing a cluster message");
            return Ok(reply(StatusCode::PAYLOAD_TOO_LARGE, Vec::new()));
        }
    };
    let Ok(_slot) = slots.acquire().await else {
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, Vec::new()));
    };
    Ok(reply(StatusCode::OK, node.handle(&body).await))
}

/// Serves `node` on `listener` until `shutdown` resolves. `secret`: requests must carry its
/// token (none: any request is taken; bind such a listener to loopback only).
pub async fn serve(
    listener: TcpListener,
    node: Arc<ReplicaNode>,
    secret: Option<&[u8]>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let token: Option<Arc<str>> = secret.map(|s| Arc::from(token(s)));
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A peer keeps one connection; more than MAX_CONNECTIONS at once is not a cluster's
        // traffic: closed at once, with a log line.
        let Ok(held) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "cluster port: too many connections; closing this one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (node, token, slots) = (node.clone(), token.clone(), slots.clone());
        tokio::spawn(async move {
            let _held = held;
            let service = hyper::service::service_fn(move |req| {
                handle(req, node.clone(), token.clone(), slots.clone(), peer)
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_CONCURRENT as u32)
                .keep_alive_interval(Some(Duration::from_secs(10)))
                .keep_alive_timeout(Duration::from_secs(5))
                .max_header_list_size(16 << 10)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "cluster connection ended");
            }
        });
    }
}
