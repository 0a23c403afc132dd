//! A fault-injecting HTTP proxy in front of moto (which has no fault injection): for chosen EC2/Auto Scaling
//! actions it answers RequestLimitExceeded, a 5xx, an InsufficientInstanceCapacity error, or a CreateFleet response
//! whose `Errors` list every override; everything else is forwarded to moto unchanged, except that RunInstances and
//! CreateFleet get EC2's ClientToken idempotency, which moto lacks (see [`Idempotency`]).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// HTTP 503 RequestLimitExceeded (EC2's throttle).
    Throttle,
    /// HTTP 500 InternalError.
    ServerError,
    /// HTTP 500 InsufficientInstanceCapacity (RunInstances' shape).
    InsufficientCapacityError,
    /// HTTP 200 CreateFleet with no instance and one InsufficientInstanceCapacity error per override.
    FleetCapacityErrors,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub action: String,
    /// Form fields that must all be present with these values (e.g. the capacity type of a CreateFleet).
    pub when: BTreeMap<String, String>,
    pub kind: FaultKind,
    /// None = always.
    pub remaining: Option<u32>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    /// (action, fault served or "forwarded")
    log: Vec<(String, String)>,
    /// (action, form body) of every request.
    bodies: Vec<(String, String)>,
    /// Every RunInstances and CreateFleet that reached idempotency handling (not faulted).
    launches: Vec<LaunchCall>,
}

#[derive(Clone)]
pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

/// How long EC2 remembers a client token: "the same token and parameters within 24 hours return the first call's
/// result" (EC2 API reference, Ensuring idempotency).
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The actions EC2 makes idempotent by ClientToken that berth launches with.
const IDEMPOTENT_ACTIONS: [&str; 2] = ["RunInstances", "CreateFleet"];

/// A response as moto gave it, kept so that a repeated request can be answered with it.
#[derive(Clone)]
struct Recorded {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Recorded {
    fn response(&self) -> Response<Full<Bytes>> {
        let mut b = Response::builder().status(self.status);
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(Full::new(self.body.clone())).unwrap()
    }
}

/// The first call made with a client token: its parameters and moto's answer.
struct FirstCall {
    /// Every form field but the token itself (and the SDK's per-call fields, which none of EC2's are).
    parameters: BTreeMap<String, String>,
    answer: Recorded,
    at: Instant,
}

/// EC2's ClientToken idempotency for RunInstances and CreateFleet, which moto ignores (it launches again for a
/// repeated token). berth's crash safety rests on it: a Machine's launch uses a token derived from its uid, so a
/// berth killed between sending a launch and recording the instance sends the same token again after a restart
/// and must get the same instance back, not a second one. Without this, a test against moto would see duplicate
/// launches that real EC2 never makes. Per EC2's documentation: the same token with the same parameters within
/// 24 hours returns the first call's result without launching; the same token with other parameters is refused
/// with `IdempotentParameterMismatch`. Calls with one token are serialised (a per-token lock), as EC2 answers a
/// concurrent retry with the one launch.
#[derive(Default)]
struct Idempotency {
    tokens: HashMap<String, Arc<tokio::sync::Mutex<Option<FirstCall>>>>,
}

/// One launch call as the proxy saw it: its token, whether moto launched or the first answer was replayed, and
/// the instance ids of the answer.
#[derive(Debug, Clone)]
#[allow(dead_code)] // each test binary reads a different part of it
pub struct LaunchCall {
    pub action: String,
    pub client_token: String,
    pub replayed: bool,
    pub instance_ids: Vec<String>,
}

/// The instance ids in a RunInstances or CreateFleet answer (`<instanceId>` elements, and CreateFleet's
/// `<instanceIds><item>` lists).
pub fn instance_ids_in(xml: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut rest = xml;
    while let Some(at) = rest.find("i-") {
        // An id is "i-" then hex digits, delimited by a tag boundary on both sides.
        let before = &rest[..at];
        let tail = &rest[at..];
        let end = tail[2..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .map_or(tail.len(), |e| e + 2);
        if before.ends_with('>') && tail[end..].starts_with('<') && end > 2 {
            let id = tail[..end].to_string();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        rest = &tail[end.max(2)..];
    }
    ids
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((decode(k), decode(v)))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let h = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn error_response(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(xml)))
        .unwrap()
}

fn fleet_errors_response(f: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    let lifecycle = if f
        .get("TargetCapacitySpecification.DefaultTargetCapacityType")
        .map(String::as_str)
        == Some("spot")
    {
        "spot"
    } else {
        "on-demand"
    };
    let lt_name = f
        .get("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName")
        .cloned()
        .unwrap_or_default();
    let mut items = String::new();
    for n in 1.. {
        let Some(itype) = f.get(&format!(
            "LaunchTemplateConfigs.1.Overrides.{n}.InstanceType"
        )) else {
            break;
        };
        let subnet = f
            .get(&format!("LaunchTemplateConfigs.1.Overrides.{n}.SubnetId"))
            .cloned()
            .unwrap_or_default();
        items.push_str(&format!(
            "<item><launchTemplateAndOverrides><launchTemplateSpecification><launchTemplateName>{lt_name}</launchTemplateName><version>$Latest</version></launchTemplateSpecification><overrides><instanceType>{itype}</instanceType><subnetId>{subnet}</subnetId></overrides></launchTemplateAndOverrides><lifecycle>{lifecycle}</lifecycle><errorCode>InsufficientInstanceCapacity</errorCode><errorMessage>We currently do not have sufficient {itype} capacity.</errorMessage></item>"
        ));
    }
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CreateFleetResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fault-proxy</requestId><fleetId>fleet-00000000-0000-0000-0000-000000000000</fleetId><errorSet>{items}</errorSet><fleetInstanceSet/></CreateFleetResponse>"
    );
    Response::builder()
        .status(200)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(xml)))
        .unwrap()
}

/// Forwards one request to moto over a fresh connection (HTTP/1.1, Connection: close) and relays the answer.
async fn forward(
    upstream: &str,
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Recorded {
    let addr = upstream.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).await.expect("moto is reachable");
    let mut req = format!(
        "{method} {uri} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        let lk = k.to_ascii_lowercase();
        if lk != "host" && lk != "connection" && lk != "content-length" && lk != "transfer-encoding"
        {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer from moto");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(502);
    let mut kept = Vec::new();
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let lk = k.trim().to_ascii_lowercase();
            if lk == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
                continue;
            }
            if lk == "content-length" || lk == "connection" {
                continue;
            }
            kept.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if chunked {
        let mut out = Vec::new();
        let mut rest = &payload[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        payload = out;
    }
    Recorded {
        status,
        headers: kept,
        body: Bytes::from(payload),
    }
}

/// Forwards a RunInstances or CreateFleet with EC2's token semantics (see [`Idempotency`]). The forward runs in
/// its own task: a client killed mid-call (SIGKILL) drops its connection, and with it this handler, but moto may
/// already be launching, and EC2 would remember that launch under the token all the same.
async fn forward_idempotent(
    state: Arc<Mutex<State>>,
    idempotency: Arc<Mutex<Idempotency>>,
    upstream: String,
    request: (String, String, Vec<(String, String)>, Bytes),
    f: BTreeMap<String, String>,
) -> Response<Full<Bytes>> {
    let action = f.get("Action").cloned().unwrap_or_default();
    let Some(token) = f.get("ClientToken").cloned() else {
        let (method, uri, headers, body) = request;
        return forward(&upstream, &method, &uri, &headers, &body)
            .await
            .response();
    };
    let task = tokio::spawn(async move {
        let slot = idempotency
            .lock()
            .unwrap()
            .tokens
            .entry(token.clone())
            .or_default()
            .clone();
        let mut first = slot.lock().await;
        let mut parameters = f.clone();
        parameters.remove("ClientToken");
        let (answer, replayed) = match first.as_ref() {
            Some(call) if call.at.elapsed() < TOKEN_LIFETIME => {
                if call.parameters != parameters {
                    let mismatch = error_response(
                        400,
                        "IdempotentParameterMismatch",
                        &format!("The client token {token} was used with different parameters."),
                    );
                    return mismatch;
                }
                (call.answer.clone(), true)
            }
            _ => {
                let (method, uri, headers, body) = request;
                let answer = forward(&upstream, &method, &uri, &headers, &body).await;
                // Only a launch EC2 accepted binds the token; an error leaves it free for the retry.
                if (200..300).contains(&answer.status) {
                    *first = Some(FirstCall {
                        parameters,
                        answer: answer.clone(),
                        at: Instant::now(),
                    });
                }
                (answer, false)
            }
        };
        let call = LaunchCall {
            action,
            client_token: token,
            replayed,
            instance_ids: instance_ids_in(&String::from_utf8_lossy(&answer.body)),
        };
        // Logged here, not after the await below: a killed client drops that half, and the launch must be
        // logged all the same.
        state.lock().unwrap().launches.push(call);
        answer.response()
    });
    task.await.expect("the idempotent forward does not panic")
}

impl FaultProxy {
    /// Starts the proxy on 127.0.0.1 in front of `upstream`.
    pub async fn start(upstream: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let idempotency = Arc::new(Mutex::new(Idempotency::default()));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                let upstream = upstream.clone();
                let idempotency = idempotency.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        let upstream = upstream.clone();
                        let idempotency = idempotency.clone();
                        async move {
                            let method = req.method().to_string();
                            let uri = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_else(|| "/".into());
                            let headers: Vec<(String, String)> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let f = form(&body);
                            let action = f.get("Action").cloned().unwrap_or_default();
                            let fault = {
                                let mut s = st.lock().unwrap();
                                let idx = s.rules.iter().position(|r| {
                                    r.action == action
                                        && r.remaining != Some(0)
                                        && r.when.iter().all(|(k, v)| f.get(k) == Some(v))
                                });
                                let kind = idx.map(|i| {
                                    let r = &mut s.rules[i];
                                    if let Some(n) = r.remaining.as_mut() {
                                        *n -= 1;
                                    }
                                    r.kind.clone()
                                });
                                s.bodies.push((
                                    action.clone(),
                                    String::from_utf8_lossy(&body).into_owned(),
                                ));
                                s.log.push((
                                    action.clone(),
                                    kind.as_ref()
                                        .map_or("forwarded".to_string(), |k| format!("{k:?}")),
                                ));
                                kind
                            };
                            let resp = match fault {
                                Some(FaultKind::Throttle) => error_response(503, "RequestLimitExceeded", "Request limit exceeded."),
                                Some(FaultKind::ServerError) => error_response(500, "InternalError", "An internal error has occurred."),
                                Some(FaultKind::InsufficientCapacityError) => error_response(
                                    500,
                                    "InsufficientInstanceCapacity",
                                    "We currently do not have sufficient capacity in the Availability Zone you requested.",
                                ),
                                Some(FaultKind::FleetCapacityErrors) => fleet_errors_response(&f),
                                None if IDEMPOTENT_ACTIONS.contains(&action.as_str()) => {
                                    forward_idempotent(st.clone(), idempotency, upstream, (method, uri, headers, body), f).await
                                }
                                None => forward(&upstream, &method, &uri, &headers, &body).await.response(),
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FaultProxy { endpoint, state }
    }

    pub fn add(&self, action: &str, when: &[(&str, &str)], kind: FaultKind, times: Option<u32>) {
        self.state.lock().unwrap().rules.push(Rule {
            action: action.into(),
            when: when
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kind,
            remaining: times,
        });
    }

    /// The form bodies of every request of `action`, in order.
    pub fn bodies(&self, action: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .bodies
            .iter()
            .filter(|(a, _)| a == action)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Every RunInstances and CreateFleet the proxy answered (forwarded or replayed), in order of answer.
    pub fn launches(&self) -> Vec<LaunchCall> {
        self.state.lock().unwrap().launches.clone()
    }

    /// How many requests of `action` got `what` ("forwarded" or a fault kind's debug name).
    pub fn count(&self, action: &str, what: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(a, w)| a == action && w == what)
            .count()
    }
}
