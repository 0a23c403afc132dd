//! The operations endpoint: `/metrics` (Prometheus text format), `/healthz` (the process is alive) and `/readyz`
//! (caches synced; a standby replica is ready too, it just does not act), on one port.

use crate::telemetry::metrics::Metrics;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address}: {reason}")]
    Bind { address: String, reason: String },
}

impl ServerError {
    pub fn category(&self) -> &'static str {
        match self {
            ServerError::Bind { .. } => "bind",
        }
    }
}

/// What the endpoint reports.
#[derive(Clone)]
pub struct OpsState {
    pub metrics: Metrics,
    /// True once the controller's caches have synced.
    pub ready: watch::Receiver<bool>,
}

/// Answers one request. Pure apart from reading the state, so it is tested without a socket.
pub fn respond(state: &OpsState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &str| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".into(),
            "text/plain",
        );
    }
    match path {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => {
            if *state.ready.borrow() {
                text(StatusCode::OK, "ok\n".into(), "text/plain")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "caches not synced\n".into(),
                    "text/plain",
                )
            }
        }
        "/metrics" => match state.metrics.encode() {
            Ok(body) => text(
                StatusCode::OK,
                body,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e}\n"),
                "text/plain",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".into(),
            "text/plain",
        ),
    }
}

/// Binds `address` and serves until `shutdown` resolves. Returns the bound address (useful with port 0).
pub async fn serve(
    address: &str,
    state: OpsState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServerError> {
    let bind_err = |reason: String| ServerError::Bind {
        address: address.to_string(),
        reason,
    };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| bind_err(e.to_string()))?;
    let local = listener.local_addr().map_err(|e| bind_err(e.to_string()))?;
    let handle = tokio::spawn(async move {
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let resp = respond(&state, req.method(), req.uri().path());
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn endpoints() {
        let (tx, rx) = watch::channel(false);
        let state = OpsState {
            metrics: Metrics::new().unwrap(),
            ready: rx,
        };
        assert_eq!(
            respond(&state, &Method::GET, "/healthz").status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&state, &Method::GET, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        tx.send_replace(true);
        assert_eq!(
            respond(&state, &Method::GET, "/readyz").status(),
            StatusCode::OK
        );
        assert!(body(respond(&state, &Method::GET, "/metrics"))
            .await
            .contains("berth_build_info"));
        assert_eq!(
            respond(&state, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&state, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let (_tx, rx) = watch::channel(true);
        let state = OpsState {
            metrics: Metrics::new().unwrap(),
            ready: rx,
        };
        let (addr, _h) = serve("127.0.0.1:0", state, futures::future::pending())
            .await
            .unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(serve(
            "127.0.0.1:not-a-port",
            OpsState {
                metrics: Metrics::new().unwrap(),
                ready: watch::channel(true).1
            },
            futures::future::pending()
        )
        .await
        .is_err());
    }
}
