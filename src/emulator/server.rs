//! Serving the emulator: over HTTP/1.1 on a TCP socket (for kubectl), and in-process as a tower Service behind a
//! `kube::Client` (for simulations and tests, no sockets).

use super::error::ApiError;
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
    let response = handle(&store, &ctx, Request::from_parts(parts, bytes));
    tracing::debug!(%method, %path, status = response.status().as_u16(), "emulator request");
    response
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
