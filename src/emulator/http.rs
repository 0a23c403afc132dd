//! The HTTP face of the emulator: request routing, content negotiation, list and watch encoding, and the
//! response body type shared by the socket server and the in-process tower service.

use super::discovery;
use super::error::ApiError;
use super::openapi;
use super::resources::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{
    DeleteOptions, EventType, ListQuery, PatchKind, Store, Stored, WatchEvent, WriteOptions,
};
use super::table;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// Response body: a complete buffer, or a stream of watch event lines.
#[derive(Debug)]
pub enum Body {
    /// Whole body (taken once).
    Full(Option<Bytes>),
    /// Watch stream; ends when the sender is dropped.
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }
}

/// Everything a request handler needs besides the store.
pub struct Context2 {
    /// host:port reported in /api.
    pub server_address: String,
    /// Closing signal for all open watches (tests use it to simulate dropped connections).
    pub drop_watches: watch::Receiver<u64>,
}

fn respond(status: u16, content_type: &str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: u16, v: &Value) -> Response<Body> {
    respond(
        status,
        "application/json",
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

/// The Status response of an error.
pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code(), &e.to_status())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() + 1 && i + 2 <= bytes.len().saturating_sub(1) => {
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Parsed resource path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// Group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace, when the path names one.
    pub namespace: Option<String>,
    /// Plural resource.
    pub resource: String,
    /// Object name.
    pub name: Option<String>,
    /// Subresource.
    pub subresource: Option<String>,
}

/// Splits `/api/v1/...` or `/apis/G/V/...` into its parts; None for non-resource paths.
pub fn parse_resource_path(path: &str) -> Option<ResourcePath> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..]
            if !(tail.is_empty()
                || tail.len() == 1 && matches!(tail[0], "status" | "finalize")) =>
        {
            (Some(ns.to_string()), tail)
        }
        other => (None, other),
    };
    let (resource, name, sub) = match rest {
        [r] => (r.to_string(), None, None),
        [r, n] => (r.to_string(), Some(n.to_string()), None),
        [r, n, s] => (r.to_string(), Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(ResourcePath {
        group,
        version,
        namespace,
        resource,
        name,
        subresource: sub,
    })
}

fn header(req: &Request<Bytes>, name: http::header::HeaderName) -> &str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Decodes a request body as JSON or YAML.
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    if content_type.contains("yaml") {
        let v: Value = serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
        Ok(v)
    } else if content_type.contains("protobuf") {
        super::proto::decode(body).ok_or_else(|| {
            ApiError::UnsupportedMediaType(
                "the emulator accepts protobuf only for DeleteOptions and Eviction; send JSON"
                    .into(),
            )
        })
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
        })
    }
}

fn field_manager(q: &HashMap<String, String>, user_agent: &str) -> String {
    match q.get("fieldManager") {
        Some(m) if !m.is_empty() => m.clone(),
        _ => user_agent.split('/').next().unwrap_or_default().to_string(),
    }
}

fn list_query(q: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let bad = |e: super::selector::SelectorError| ApiError::BadRequest(e.to_string());
    Ok(ListQuery {
        label: LabelSelector::parse(
            q.get("labelSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )
        .map_err(bad)?,
        field: FieldSelector::parse(
            q.get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )
        .map_err(bad)?,
        limit: match q.get("limit") {
            Some(l) if !l.is_empty() => l
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?,
            _ => 0,
        },
        continue_token: q.get("continue").cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q
            .get("resourceVersionMatch")
            .cloned()
            .filter(|s| !s.is_empty()),
    })
}

fn true_flag(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

/// Rewrites the apiVersion of a stored object for a request in another served version.
fn in_version(rt: &ResourceType, version: &str, s: &Stored) -> Bytes {
    if version == rt.storage_version() {
        return s.bytes.clone();
    }
    match s.value() {
        Ok(mut v) => {
            v["apiVersion"] = json!(rt.api_version(version));
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        Err(_) => s.bytes.clone(),
    }
}

fn value_in_version(rt: &ResourceType, version: &str, mut v: Value) -> Value {
    if v.get("kind").and_then(Value::as_str) == Some(rt.kind.as_str()) {
        v["apiVersion"] = json!(rt.api_version(version));
    }
    v
}

fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Handles one request. Never panics; every failure becomes a Status response.
pub fn handle(store: &Arc<Store>, ctx: &Context2, req: Request<Bytes>) -> Response<Body> {
    match route(store, ctx, &req) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn route(
    store: &Arc<Store>,
    ctx: &Context2,
    req: &Request<Bytes>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let q = parse_query(req.uri().query());
    let accept = header(req, http::header::ACCEPT).to_string();
    let get = req.method() == Method::GET;
    let trimmed = path.trim_end_matches('/');
    match trimmed {
        "/version" if get => {
            return Ok(json_response(
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-berth-emulator", "gitCommit": "",
                "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
            ))
        }
        "/healthz" | "/livez" | "/readyz" if get => {
            return Ok(respond(200, "text/plain", Bytes::from_static(b"ok")))
        }
        "/api" if get => {
            let reg = store.registry();
            return Ok(if discovery::wants_aggregated(&accept) {
                respond(
                    200,
                    discovery::AGGREGATED_V2,
                    Bytes::from(
                        serde_json::to_vec(&discovery::aggregated(&reg, true)).unwrap_or_default(),
                    ),
                )
            } else {
                json_response(200, &discovery::api_versions(&ctx.server_address))
            });
        }
        "/apis" if get => {
            let reg = store.registry();
            return Ok(if discovery::wants_aggregated(&accept) {
                respond(
                    200,
                    discovery::AGGREGATED_V2,
                    Bytes::from(
                        serde_json::to_vec(&discovery::aggregated(&reg, false)).unwrap_or_default(),
                    ),
                )
            } else {
                json_response(200, &discovery::api_group_list(&reg))
            });
        }
        "/openapi/v2" if get => {
            if !accept.is_empty() && !accept.contains("json") && !accept.contains("*/*") {
                return Err(ApiError::NotAcceptable(
                    "only application/json is served for /openapi/v2".into(),
                ));
            }
            return Ok(json_response(200, &openapi::v2(&store.registry())));
        }
        "/openapi/v3" if get => {
            return Ok(json_response(200, &openapi::v3_root(&store.registry())))
        }
        _ => {}
    }
    if let Some(gv) = trimmed.strip_prefix("/openapi/v3/") {
        if !get {
            return Err(ApiError::MethodNotAllowed(format!(
                "{} is not supported on {path}",
                req.method()
            )));
        }
        let reg = store.registry();
        let (g, v) = match gv.split('/').collect::<Vec<_>>().as_slice() {
            ["api", v] => (String::new(), v.to_string()),
            ["apis", g, v] => (g.to_string(), v.to_string()),
            _ => {
                return Err(ApiError::NotFound(format!(
                    "the server could not find the requested resource ({path})"
                )))
            }
        };
        return openapi::v3_group_version(&reg, &g, &v)
            .map(|d| json_response(200, &d))
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "the server could not find the requested resource ({path})"
                ))
            });
    }
    let segs: Vec<&str> = trimmed.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", v] if get => {
            return discovery::resource_list(&store.registry(), "", v)
                .map(|d| json_response(200, &d))
                .ok_or_else(|| {
                    ApiError::NotFound("the server could not find the requested resource".into())
                })
        }
        ["apis", g] if get => {
            return discovery::api_group(&store.registry(), g)
                .map(|d| json_response(200, &d))
                .ok_or_else(|| {
                    ApiError::NotFound("the server could not find the requested resource".into())
                })
        }
        ["apis", g, v] if get => {
            return discovery::resource_list(&store.registry(), g, v)
                .map(|d| json_response(200, &d))
                .ok_or_else(|| {
                    ApiError::NotFound("the server could not find the requested resource".into())
                })
        }
        _ => {}
    }
    let rp = parse_resource_path(&path).ok_or_else(|| {
        ApiError::NotFound(format!(
            "the server could not find the requested resource ({path})"
        ))
    })?;
    let rt = store
        .resource_type(&rp.group, &rp.resource)
        .filter(|t| t.version(&rp.version).is_some())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "the server could not find the requested resource ({path})"
            ))
        })?;
    if rp.namespace.is_some() && !rt.namespaced {
        return Err(ApiError::NotFound(format!(
            "the server could not find the requested resource ({path})"
        )));
    }
    resource_request(store, ctx, req, &rp, &rt, &q, &accept)
}

fn resource_request(
    store: &Arc<Store>,
    ctx: &Context2,
    req: &Request<Bytes>,
    rp: &ResourcePath,
    rt: &Arc<ResourceType>,
    q: &HashMap<String, String>,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let ns = rp.namespace.clone().unwrap_or_default();
    let ua = header(req, http::header::USER_AGENT);
    let content_type = header(req, http::header::CONTENT_TYPE).to_string();
    let dry_run = q.get("dryRun").is_some_and(|d| d == "All");
    let strict = q.get("fieldValidation").is_some_and(|v| v == "Strict");
    let opts = WriteOptions {
        field_manager: field_manager(q, ua),
        dry_run,
        strict,
        subresource: rp.subresource.clone(),
    };
    let method = req.method().clone();
    let version = rp.version.as_str();
    let ok = |status: u16, v: Value| -> Response<Body> {
        let v = value_in_version(rt, version, v);
        if wants_table(accept) && v.get("kind").and_then(Value::as_str) == Some(rt.kind.as_str()) {
            json_response(
                status,
                &table::table(
                    rt,
                    version,
                    std::slice::from_ref(&v),
                    &store.now(),
                    None,
                    None,
                ),
            )
        } else {
            json_response(status, &v)
        }
    };
    let not_allowed = || {
        ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            req.uri().path()
        ))
    };
    match (&rp.name, rp.subresource.as_deref()) {
        (None, _) => match method {
            Method::GET => {
                let lq = list_query(q)?;
                if true_flag(q, "watch") {
                    return watch(
                        store,
                        ctx,
                        rt,
                        version,
                        rp.namespace.as_deref(),
                        lq,
                        q,
                        accept,
                    );
                }
                let page = store.list(rt, rp.namespace.as_deref(), &lq)?;
                if wants_table(accept) {
                    let items: Vec<Value> =
                        page.items.iter().filter_map(|s| s.value().ok()).collect();
                    return Ok(json_response(
                        200,
                        &table::table(
                            rt,
                            version,
                            &items,
                            &store.now(),
                            Some(page.resource_version),
                            page.continue_token.as_deref(),
                        ),
                    ));
                }
                Ok(list_response(rt, version, &page))
            }
            Method::POST => {
                let body = decode_body(&content_type, req.body())?;
                let created = store.create(rt, &ns, body, &opts)?;
                Ok(ok(201, created))
            }
            Method::DELETE => {
                let lq = list_query(q)?;
                let dopts = delete_options(q, req.body(), &content_type)?;
                let deleted = store.delete_collection(rt, rp.namespace.as_deref(), &lq, &dopts)?;
                let items: Vec<Value> = deleted
                    .into_iter()
                    .map(|v| value_in_version(rt, version, v))
                    .collect();
                Ok(json_response(
                    200,
                    &json!({"apiVersion": rt.api_version(version), "kind": format!("{}List", rt.kind),
                    "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": items}),
                ))
            }
            _ => Err(not_allowed()),
        },
        (Some(name), None) | (Some(name), Some("status")) => {
            if rp.subresource.is_some() && !rt.status {
                return Err(ApiError::NotFound(format!(
                    "the server could not find the requested resource ({})",
                    req.uri().path()
                )));
            }
            match method {
                Method::GET => Ok(ok(200, store.get(rt, &ns, name)?.value()?)),
                Method::PUT => {
                    let body = decode_body(&content_type, req.body())?;
                    Ok(ok(200, store.update(rt, &ns, name, body, &opts)?))
                }
                Method::PATCH => {
                    let kind = patch_kind(&content_type, q)?;
                    let body = decode_body(
                        if matches!(kind, PatchKind::Apply { .. }) {
                            "yaml"
                        } else {
                            &content_type
                        },
                        req.body(),
                    )?;
                    let existed = store.get(rt, &ns, name).is_ok();
                    let v = store.patch(rt, &ns, name, kind, &body, &opts)?;
                    Ok(ok(if existed { 200 } else { 201 }, v))
                }
                Method::DELETE if rp.subresource.is_none() => {
                    let dopts = delete_options(q, req.body(), &content_type)?;
                    let v = store.delete(rt, &ns, name, &dopts)?;
                    let pending = v
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_some_and(|f| !f.is_empty())
                        && store.get(rt, &ns, name).is_ok();
                    Ok(ok(if pending { 202 } else { 200 }, v))
                }
                _ => Err(not_allowed()),
            }
        }
        (Some(name), Some("scale")) => {
            let paths = rt.scale.clone().ok_or_else(|| {
                ApiError::NotFound(format!(
                    "the server could not find the requested resource ({})",
                    req.uri().path()
                ))
            })?;
            scale(
                store,
                rt,
                &ns,
                name,
                &paths,
                &method,
                &content_type,
                req.body(),
                q,
                &opts,
            )
        }
        (Some(name), Some("binding")) if rt.group.is_empty() && rt.resource == "pods" => {
            if method != Method::POST {
                return Err(not_allowed());
            }
            let body = decode_body(&content_type, req.body())?;
            store.bind(&ns, name, &body)?;
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (Some(name), Some("eviction")) if rt.group.is_empty() && rt.resource == "pods" => {
            if method != Method::POST {
                return Err(not_allowed());
            }
            let body = decode_body(&content_type, req.body())?;
            store.evict(&ns, name, &body)?;
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        _ => Err(ApiError::NotFound(format!(
            "the server could not find the requested resource ({})",
            req.uri().path()
        ))),
    }
}

fn patch_kind(content_type: &str, q: &HashMap<String, String>) -> Result<PatchKind, ApiError> {
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    Ok(match ct {
        "application/json-patch+json" => PatchKind::Json,
        "application/merge-patch+json" => PatchKind::Merge,
        "application/strategic-merge-patch+json" => PatchKind::Strategic,
        "application/apply-patch+yaml" | "application/apply-patch+json" | "application/apply-patch+cbor" => PatchKind::Apply { force: true_flag(q, "force") },
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            )))
        }
    })
}

fn delete_options(
    q: &HashMap<String, String>,
    body: &[u8],
    content_type: &str,
) -> Result<DeleteOptions, ApiError> {
    let mut o = DeleteOptions {
        propagation: q
            .get("propagationPolicy")
            .cloned()
            .filter(|s| !s.is_empty()),
        uid: None,
        resource_version: None,
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
    };
    if !body.is_empty() {
        let v = decode_body(content_type, body)?;
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            o.propagation = Some(p.to_string());
        }
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            o.propagation = Some("Orphan".into());
        }
        o.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        o.resource_version = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if v.get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|d| d == "All"))
        {
            o.dry_run = true;
        }
    }
    Ok(o)
}

fn list_response(
    rt: &ResourceType,
    version: &str,
    page: &super::store::ListPage,
) -> Response<Body> {
    let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(c) = &page.continue_token {
        meta["continue"] = json!(c);
    }
    let head = format!(
        "{{\"apiVersion\":{},\"kind\":\"{}List\",\"metadata\":{},\"items\":[",
        json!(rt.api_version(version)),
        rt.kind,
        meta
    );
    let total: usize = page.items.iter().map(|s| s.bytes.len() + 1).sum::<usize>() + head.len() + 2;
    let mut buf = Vec::with_capacity(total);
    buf.extend_from_slice(head.as_bytes());
    for (i, s) in page.items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(&in_version(rt, version, s));
    }
    buf.extend_from_slice(b"]}");
    respond(200, "application/json", Bytes::from(buf))
}

fn read_path(v: &Value, path: &str) -> Option<Value> {
    let pointer = path.trim_start_matches('.').replace('.', "/");
    v.pointer(&format!("/{pointer}")).cloned()
}

fn write_path(v: &mut Value, path: &str, new: Value) {
    let parts: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let mut cur = v;
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i + 1 == parts.len() {
            cur[*p] = new;
            return;
        }
        cur = &mut cur[*p];
    }
}

fn scale_object(rt: &ResourceType, obj: &Value, paths: &super::resources::ScalePaths) -> Value {
    let replicas = read_path(obj, &paths.spec_replicas)
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let status_replicas = read_path(obj, &paths.status_replicas)
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let mut status = json!({"replicas": status_replicas});
    if let Some(sel) = paths
        .label_selector
        .as_deref()
        .and_then(|p| read_path(obj, p))
    {
        let selector = match sel {
            Value::String(s) => s,
            other => super::table::selector_string(&other),
        };
        if !selector.is_empty() {
            status["selector"] = json!(selector);
        }
    }
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    let _ = rt;
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                     "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp")},
        "spec": {"replicas": replicas},
        "status": status,
    })
}

#[allow(clippy::too_many_arguments)]
fn scale(
    store: &Arc<Store>,
    rt: &Arc<ResourceType>,
    ns: &str,
    name: &str,
    paths: &super::resources::ScalePaths,
    method: &Method,
    content_type: &str,
    body: &[u8],
    q: &HashMap<String, String>,
    opts: &WriteOptions,
) -> Result<Response<Body>, ApiError> {
    let current = store.get(rt, ns, name)?;
    let obj = current.value()?;
    let scale_now = scale_object(rt, &obj, paths);
    let desired = match *method {
        Method::GET => return Ok(json_response(200, &scale_now)),
        Method::PUT => decode_body(content_type, body)?,
        Method::PATCH => {
            let kind = patch_kind(content_type, q)?;
            let patch_body = decode_body(content_type, body)?;
            match kind {
                PatchKind::Json => super::patch::json_patch(&scale_now, &patch_body)
                    .map_err(|e| ApiError::Invalid(e.to_string()))?,
                PatchKind::Merge | PatchKind::Apply { .. } => {
                    super::patch::merge_patch(&scale_now, &patch_body)
                }
                PatchKind::Strategic => super::patch::strategic_merge(&scale_now, &patch_body)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?,
            }
        }
        _ => {
            return Err(ApiError::MethodNotAllowed(format!(
                "{method} is not supported on the scale subresource"
            )))
        }
    };
    let replicas = desired
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            ApiError::Invalid(format!(
                "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Required value"
            ))
        })?;
    if replicas < 0 {
        return Err(ApiError::Invalid(format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0")));
    }
    let rv = desired
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !rv.is_empty() && rv != current.rv.to_string() {
        return Err(ApiError::Conflict(format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            super::error::qualified(&rt.resource, &rt.group)
        )));
    }
    let mut updated = obj.clone();
    write_path(&mut updated, &paths.spec_replicas, json!(replicas));
    if let Some(m) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    let main_opts = WriteOptions {
        subresource: None,
        ..opts.clone()
    };
    let stored = store.update(rt, ns, name, updated, &main_opts)?;
    Ok(json_response(200, &scale_object(rt, &stored, paths)))
}

fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(object.len() + 32);
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"object\":");
    buf.extend_from_slice(object);
    buf.extend_from_slice(b"}\n");
    Bytes::from(buf)
}

struct WatchFilter {
    rt: Arc<ResourceType>,
    version: String,
    namespace: Option<String>,
    query: ListQuery,
    table: bool,
    now: String,
}

impl WatchFilter {
    fn matches(&self, s: &Stored) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == s.namespace)
            && self.query.label.matches(&s.labels)
            && self.query.field.matches(|f| s.field(f))
    }

    fn encode(&self, kind: &str, s: &Stored) -> Bytes {
        if self.table {
            let v = s
                .value()
                .map(|v| value_in_version(&self.rt, &self.version, v))
                .unwrap_or_default();
            let t = table::table(
                &self.rt,
                &self.version,
                std::slice::from_ref(&v),
                &self.now,
                None,
                None,
            );
            return event_line(kind, &serde_json::to_vec(&t).unwrap_or_default());
        }
        event_line(kind, &in_version(&self.rt, &self.version, s))
    }

    /// Translates a store event into what this watcher sees, following selector transitions.
    fn translate(&self, ev: &WatchEvent) -> Option<Bytes> {
        if ev.group != self.rt.group || ev.resource != self.rt.resource {
            return None;
        }
        let now = self.matches(&ev.object);
        let before = ev.previous.as_ref().is_some_and(|p| self.matches(p));
        let kind = match ev.kind {
            EventType::Added if now => "ADDED",
            EventType::Deleted if before || now => "DELETED",
            EventType::Modified if now && before => "MODIFIED",
            EventType::Modified if now => "ADDED",
            EventType::Modified if before => "DELETED",
            _ => return None,
        };
        Some(self.encode(kind, &ev.object))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(&self.version), "metadata": meta});
        event_line("BOOKMARK", &serde_json::to_vec(&obj).unwrap_or_default())
    }
}

#[allow(clippy::too_many_arguments)]
fn watch(
    store: &Arc<Store>,
    ctx: &Context2,
    rt: &Arc<ResourceType>,
    version: &str,
    namespace: Option<&str>,
    query: ListQuery,
    q: &HashMap<String, String>,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let filter = WatchFilter {
        rt: rt.clone(),
        version: version.to_string(),
        namespace: namespace.map(str::to_string),
        query: query.clone(),
        table: wants_table(accept),
        now: store.now(),
    };
    let bookmarks = true_flag(q, "allowWatchBookmarks");
    let send_initial = true_flag(q, "sendInitialEvents");
    let timeout = match q.get("timeoutSeconds") {
        Some(t) if !t.is_empty() => {
            Some(Duration::from_secs(t.parse().map_err(|_| {
                ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}"))
            })?))
        }
        _ => None,
    };
    let rv = query.resource_version.clone().unwrap_or_default();
    let mut initial: Vec<Bytes> = Vec::new();
    let (rx, start_rv, gone) = if rv.is_empty() || rv == "0" || send_initial {
        let (items, rx, at) = store.snapshot_and_subscribe(rt, namespace);
        for s in items.iter().filter(|s| filter.matches(s)) {
            initial.push(filter.encode("ADDED", s));
        }
        if send_initial {
            initial.push(filter.bookmark(at, true));
        }
        (Some(rx), at, None)
    } else {
        let n: u64 = rv
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid resource version {rv:?}")))?;
        match store.history_since(n) {
            Ok((events, rx, _)) => {
                let mut last = n;
                for ev in events {
                    last = last.max(ev.object.rv);
                    if let Some(line) = filter.translate(&ev) {
                        initial.push(line);
                    }
                }
                (Some(rx), last, None)
            }
            // Like kube-apiserver's watch cache: the 410 arrives as an ERROR event on a 200 stream.
            Err(e) => (None, n, Some(e)),
        }
    };
    let (tx, body_rx) = mpsc::channel::<Bytes>(256);
    let mut drop_signal = ctx.drop_watches.clone();
    let bookmark_interval = store.config.bookmark_interval;
    tokio::spawn(async move {
        if let Some(e) = gone {
            let _ = tx
                .send(event_line(
                    "ERROR",
                    &serde_json::to_vec(&e.to_status()).unwrap_or_default(),
                ))
                .await;
            return;
        }
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let Some(mut rx) = rx else { return };
        let mut seen = start_rv;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(bookmark_interval);
        ticker.tick().await;
        loop {
            let sleep_until = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if ev.object.rv <= seen {
                            continue;
                        }
                        seen = ev.object.rv;
                        if let Some(line) = filter.translate(&ev) {
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                    }
                    // A watcher that fell behind is closed; the client resumes from its last resourceVersion.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(filter.bookmark(seen, false)).await.is_err() {
                        return;
                    }
                }
                _ = sleep_until => return,
                _ = drop_signal.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let mut r = Response::new(Body::Stream(body_rx));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = parse_resource_path("/api/v1/namespaces/default/pods/x/eviction").unwrap();
        assert_eq!(
            (
                p.namespace.as_deref(),
                p.resource.as_str(),
                p.name.as_deref(),
                p.subresource.as_deref()
            ),
            (Some("default"), "pods", Some("x"), Some("eviction"))
        );
        let p = parse_resource_path("/api/v1/namespaces/default").unwrap();
        assert_eq!(
            (p.namespace, p.resource.as_str(), p.name.as_deref()),
            (None, "namespaces", Some("default"))
        );
        let p = parse_resource_path("/api/v1/namespaces/default/status").unwrap();
        assert_eq!(
            (p.resource.as_str(), p.subresource.as_deref()),
            ("namespaces", Some("status"))
        );
        let p = parse_resource_path("/apis/apps/v1/deployments").unwrap();
        assert_eq!(
            (p.group.as_str(), p.resource.as_str(), p.name),
            ("apps", "deployments", None)
        );
        assert!(parse_resource_path("/apis/apps").is_none());
        assert!(parse_resource_path("/api/v1/a/b/c/d").is_none());
        assert_eq!(
            percent_decode("app%3Dweb%2Ctier+in+(a)"),
            "app=web,tier in (a)"
        );
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
    }
}
