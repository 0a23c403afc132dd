//! Serving the emulator: over HTTP/1.1 on a TCP socket (for kubectl), and in-process as a tower Service behind a
//! `kube::Client` (for simulations and tests, no sockets).

use super::error::ApiError;
use super::faults::{ApiFaultKind, Decision};
use super::http::{error_response, handle, Body, Context2};
use super::Emulator;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use tokio::net::TcpListener;

async fn collect<B>(emu: &Emulator, server_address: &str, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = emu.store().config.max_body_bytes;
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let msg = e.to_string();
            let err = if msg.contains("length limit exceeded") {
                ApiError::TooLarge(format!("Request entity too large: limit is {limit}"))
            } else {
                ApiError::BadRequest(format!("could not read the request body: {msg}"))
            };
            return error_response(&err);
        }
    };
    let ctx = Context2 {
        server_address: server_address.to_string(),
        drop_watches: emu.drop_receiver(),
    };
    let store = emu.store().clone();
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let is_watch = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let decision = emu
        .injector()
        .map_or(Decision::Serve, |i| i.decide(is_watch));
    let response = match decision {
        Decision::Serve => handle(&store, &ctx, Request::from_parts(parts, bytes)),
        Decision::Fail(kind) => fault_response(emu, kind, &store, &ctx, parts, bytes).await,
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "emulator request");
    response
}

/// The answer of a request a fault hit. Failed requests are not applied; a cut watch is served, then cut.
async fn fault_response(
    emu: &Emulator,
    kind: ApiFaultKind,
    store: &std::sync::Arc<super::Store>,
    ctx: &Context2,
    parts: http::request::Parts,
    bytes: Bytes,
) -> Response<Body> {
    match kind {
        ApiFaultKind::InternalError => {
            error_response(&ApiError::Internal("injected fault: internal error".into()))
        }
        ApiFaultKind::Unavailable => status_response(
            503,
            "ServiceUnavailable",
            "injected fault: the server is unavailable",
        ),
        ApiFaultKind::TooManyRequests => {
            let mut r = status_response(
                429,
                "TooManyRequests",
                "injected fault: too many requests, please try again later",
            );
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            r
        }
        ApiFaultKind::Timeout => {
            let wait = emu
                .injector()
                .map_or(std::time::Duration::from_secs(30), |i| i.faults().timeout);
            tokio::time::sleep(wait).await;
            status_response(504, "Timeout", "injected fault: the request timed out")
        }
        ApiFaultKind::ExpireWatches => {
            // The history goes, then the request is served: the next watch resuming from it gets 410 Gone.
            emu.compact();
            handle(store, ctx, Request::from_parts(parts, bytes))
        }
        ApiFaultKind::CutWatch => {
            let response = handle(store, ctx, Request::from_parts(parts, bytes));
            cut_after(response, std::time::Duration::from_secs(5))
        }
    }
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    let mut r = Response::new(Body::Full(Some(Bytes::from(status.to_string()))));
    *r.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A streamed response that ends after `after`, as a dropped connection ends it.
fn cut_after(response: Response<Body>, after: std::time::Duration) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let Body::Stream(mut rx) = body else {
        return Response::from_parts(parts, body);
    };
    let (tx, cut_rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(after);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                line = rx.recv() => match line {
                    Some(line) => if tx.send(line).await.is_err() { return },
                    None => return,
                },
            }
        }
    });
    Response::from_parts(parts, Body::Stream(cut_rx))
}

/// The in-process tower Service: every request is answered by the emulator directly.
#[derive(Clone)]
pub struct EmulatorService {
    emu: Emulator,
}

impl EmulatorService {
    /// Wraps an emulator.
    pub fn new(emu: Emulator) -> Self {
        EmulatorService { emu }
    }
}

impl tower::Service<Request<kube::client::Body>> for EmulatorService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let emu = self.emu.clone();
        Box::pin(async move { Ok(collect(&emu, "in-process", req).await) })
    }
}

/// A running socket server.
pub struct RunningServer {
    /// The bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and closes open ones.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves the emulator until the returned server is stopped or dropped.
pub async fn serve(emu: Emulator, addr: SocketAddr) -> std::io::Result<RunningServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let server_address = addr.to_string();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "emulator accept failed");
                    continue;
                }
            };
            let emu = emu.clone();
            let server_address = server_address.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let emu = emu.clone();
                    let server_address = server_address.clone();
                    async move { Ok::<_, Infallible>(collect(&emu, &server_address, req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "emulator connection ended");
                }
            });
            // Reap finished connections so the set does not grow without bound.
            while connections.try_join_next().is_some() {}
        }
    });
    Ok(RunningServer { addr, task })
}

/// A kubeconfig pointing at `url` with no credentials (the emulator does not authenticate).
pub fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: berth-emulator\n  cluster:\n    server: {url}\nusers:\n- name: berth-emulator\n  user: {{}}\ncontexts:\n- name: berth-emulator\n  context:\n    cluster: berth-emulator\n    user: berth-emulator\n    namespace: default\ncurrent-context: berth-emulator\npreferences: {{}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::faults::{ApiFaultKind, ApiFaults};
    use tower::Service;

    async fn get(emu: &Emulator, uri: &str) -> Response<Body> {
        let req = Request::get(uri).body(kube::client::Body::empty()).unwrap();
        EmulatorService::new(emu.clone()).call(req).await.unwrap()
    }

    fn only(kind: ApiFaultKind) -> Option<ApiFaults> {
        Some(ApiFaults::new(1.0, vec![kind], 1))
    }

    async fn drain(r: Response<Body>) -> (u16, Vec<u8>) {
        let status = r.status().as_u16();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, bytes.to_vec())
    }

    #[tokio::test(start_paused = true)]
    async fn each_fault_kind_answers_as_a_struggling_api_server_does() {
        let emu = Emulator::new();
        let pods = "/api/v1/namespaces/default/pods";
        assert_eq!(get(&emu, pods).await.status(), 200);

        emu.set_api_faults(only(ApiFaultKind::TooManyRequests));
        let r = get(&emu, pods).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
        let (_, body) = drain(r).await;
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["reason"], "TooManyRequests");

        emu.set_api_faults(only(ApiFaultKind::Unavailable));
        assert_eq!(get(&emu, pods).await.status(), 503);
        emu.set_api_faults(only(ApiFaultKind::InternalError));
        assert_eq!(get(&emu, pods).await.status(), 500);

        emu.set_api_faults(only(ApiFaultKind::Timeout));
        let before = tokio::time::Instant::now();
        assert_eq!(get(&emu, pods).await.status(), 504);
        assert!(before.elapsed() >= std::time::Duration::from_secs(30));

        // Cut watches: only watches are hit, and the stream ends by itself.
        emu.set_api_faults(only(ApiFaultKind::CutWatch));
        assert_eq!(get(&emu, pods).await.status(), 200);
        let (status, _) = drain(get(&emu, &format!("{pods}?watch=true")).await).await;
        assert_eq!(status, 200);

        // An expired history: the next watch resuming from an old version gets 410 Gone.
        emu.set_api_faults(only(ApiFaultKind::ExpireWatches));
        assert_eq!(get(&emu, pods).await.status(), 200);
        emu.set_api_faults(None);
        let (_, body) =
            drain(get(&emu, &format!("{pods}?watch=true&resourceVersion=1")).await).await;
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("\"ERROR\"") && text.contains("410"), "{text}");

        let served = emu.api_faults_served();
        assert_eq!(
            served.values().sum::<u64>(),
            0,
            "counts restart with new faults"
        );
    }
}
