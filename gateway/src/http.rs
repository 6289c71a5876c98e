//! The HTTP surface: `/ws`, health, metrics and the server API, on one
//! listener.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use switchboard_protocol::{split_value, validate_room, CommandKind};
use switchboard_router::{PublishReply, PublishRequest, RoomMsg};
use switchboard_telemetry::names;

use crate::auth::{AuthError, Identity, RoomGrants};
use crate::client_addr::Origin;
use crate::node::NodeCtx;

type Resp = Response<Full<Bytes>>;

/// What a response carries: a whole body, or an event stream's.
pub type Body = Either<Full<Bytes>, Channel<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut body: String = body.into();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn json_error(status: StatusCode, error: impl std::fmt::Display) -> Resp {
    json(status, &serde_json::json!({ "error": error.to_string() }))
}

/// Routes one HTTP request.
pub async fn route(
    node: Arc<NodeCtx>,
    origin: Origin,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let client = client_of(&node, &origin, &req);
    if req.method() == Method::GET && req.uri().path() == "/sse" {
        return Ok(event_stream(node, &req, client));
    }
    Ok(respond(node, client, req).await.map(Either::Left))
}

/// `GET /sse` on a connection that served other requests first (a stream
/// that is its connection's first request is answered in upgrade.rs).
fn event_stream(node: Arc<NodeCtx>, req: &Request<Incoming>, client: IpAddr) -> Response<Body> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let checked = crate::sse::check(
        &node,
        req.uri().query(),
        header("authorization"),
        header("last-event-id"),
    );
    match checked {
        Ok((feed, from)) => {
            let (tx, body) = Channel::new(1);
            tokio::spawn(crate::sse::serve_body(node, tx, feed, from, client));
            let mut r = Response::new(Either::Right(body));
            for (name, value) in crate::sse::HEADERS {
                r.headers_mut()
                    .insert(name, HeaderValue::from_static(value));
            }
            r
        }
        Err(refused) => {
            let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut r = text(status, refused.reason);
            if let Some(s) = refused.retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            r.map(Either::Left)
        }
    }
}

async fn respond(node: Arc<NodeCtx>, client: IpAddr, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let resp = match (req.method(), path.as_str()) {
        // Upgrades are answered before hyper sees the connection
        // (upgrade.rs), so only as a connection's first request.
        (&Method::GET, "/ws") => text(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade must be the connection's first request",
        ),
        (&Method::GET, "/poll") => {
            let query = req.uri().query();
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match crate::poll::poll(&node, query, auth, client).await {
                Ok(body) => json(StatusCode::OK, &body),
                Err(r) => {
                    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
                    let mut resp = json_error(status, r.reason);
                    if let Some(s) = r.retry_after {
                        resp.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from(s));
                    }
                    resp
                }
            }
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if node.is_ready() {
                text(StatusCode::OK, "ready")
            } else if node.draining.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "joining the cluster")
            }
        }
        (&Method::GET, "/metrics") => {
            crate::metrics::collect_process();
            // Sampled when scraped: what a leak would show as growth.
            metrics::gauge!(names::SESSION_ACTORS).set(node.sessions.len() as f64);
            metrics::gauge!(names::TOKIO_TASKS).set(
                tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks() as f64,
            );
            crate::metrics::sample_backlogs(node.conns.iter().map(|c| c.value().backlog()));
            let mut r = text(StatusCode::OK, node.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, "/api/node") => match check_api_key(&node, &req) {
            Err(r) => *r,
            Ok(()) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "node": node.settings.node.name,
                    "cluster_addr": node.cluster_addr.map(|a| a.to_string()),
                    "nodes": node.cluster.view().nodes(),
                    "ready": node.is_ready(),
                    "draining": node.draining.load(Ordering::SeqCst),
                }),
            ),
        },
        (&Method::POST, "/api/publish") => match caller(&node, &req) {
            Err(r) => *r,
            Ok(caller) => publish(node, caller, req).await,
        },
        (&Method::POST, "/api/send") => match caller(&node, &req) {
            Err(r) => *r,
            Ok(caller) => send(node, caller, req).await,
        },
        (&Method::GET, p) if room_in(p, "/api/rooms/", "/presence").is_some() => {
            match check_api_key(&node, &req) {
                Err(r) => *r,
                Ok(()) => {
                    presence(&node, room_in(p, "/api/rooms/", "/presence").unwrap_or("")).await
                }
            }
        }
        (&Method::POST, p)
            if node.settings.debug.faults && room_in(p, "/debug/rooms/", "/crash").is_some() =>
        {
            let room = room_in(p, "/debug/rooms/", "/crash").unwrap_or("");
            if node.rooms.crash(room) {
                text(StatusCode::OK, "crashed")
            } else {
                text(StatusCode::NOT_FOUND, "room not running")
            }
        }
        (&Method::GET, p) if node.settings.http.demo && p.starts_with("/demo") => {
            crate::demo::serve(p).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found"))
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    tracing::debug!(client = %client, method = %method, path, status = resp.status().as_u16(), "http request");
    resp
}

/// The request's client: its own forwarding headers count, since a proxy
/// may send several clients' requests over one kept-alive connection.
fn client_of(node: &NodeCtx, origin: &Origin, req: &Request<Incoming>) -> IpAddr {
    if !origin.trusted {
        return origin.peer;
    }
    let joined = |name: &str| {
        let all: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .collect();
        (!all.is_empty()).then(|| all.join(", "))
    };
    origin.client(
        &node.settings.http,
        joined("forwarded").as_deref(),
        joined("x-forwarded-for").as_deref(),
    )
}

/// The room name in `{prefix}{room}{suffix}` (possibly empty: the handler
/// says what is wrong with it); `None` if the path has another shape.
fn room_in<'a>(path: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?.strip_suffix(suffix)
}

/// Who calls `publish` or `send`: the server side (the API key), or a
/// client with its own token, which publishes as its user, within its rooms
/// claim and its user's publish rate.
enum Caller {
    Server,
    Client {
        user: Arc<str>,
        grants: Option<Arc<RoomGrants>>,
    },
}

impl Caller {
    fn from(&self) -> Arc<str> {
        match self {
            Caller::Server => "api".into(),
            Caller::Client { user, .. } => user.clone(),
        }
    }

    /// A client may use a room its claim allows, at its publish rate.
    fn check(&self, node: &NodeCtx, room: Option<&str>) -> Result<(), Box<Resp>> {
        let Caller::Client { user, grants } = self else {
            return Ok(());
        };
        if let (Some(room), Some(g)) = (room, grants) {
            if !g.allows(room) {
                return Err(Box::new(json_error(
                    StatusCode::FORBIDDEN,
                    format!("room: {room:?} is not allowed by the token's rooms claim"),
                )));
            }
        }
        if !node.publish_allowed(user) {
            let l = &node.settings.limits;
            return Err(Box::new(json_error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "rate: publish_per_s limit ({}/s, burst {}) exceeded; not published",
                    l.publish_per_s, l.publish_burst
                ),
            )));
        }
        Ok(())
    }
}

fn caller(node: &NodeCtx, req: &Request<Incoming>) -> Result<Caller, Box<Resp>> {
    match check_api_key(node, req) {
        Ok(()) => {
            // An open API (`auth.mode = "none"`, no key) sends as `?user=`.
            let user = crate::auth::query_param(req.uri().query(), "user")
                .ok()
                .flatten();
            match user {
                Some(u) if node.settings.api.key.is_none() => {
                    switchboard_protocol::validate_user(&u).map_err(|e| {
                        Box::new(json_error(StatusCode::BAD_REQUEST, format!("user: {e}")))
                    })?;
                    Ok(Caller::Client {
                        user: u.into(),
                        grants: None,
                    })
                }
                _ => Ok(Caller::Server),
            }
        }
        Err(refusal) if node.settings.auth.mode == switchboard_config::AuthMode::Jwt => {
            let authorization = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match node.auth.authenticate(req.uri().query(), authorization) {
                Ok(Identity {
                    user: Some(user),
                    grants,
                }) => Ok(Caller::Client {
                    user: user.into(),
                    grants,
                }),
                Ok(_) => Err(refusal),
                Err(AuthError::MissingToken) => Err(refusal),
                Err(e) => Err(Box::new(json_error(
                    StatusCode::UNAUTHORIZED,
                    format!("neither the api key nor a valid client token: {e}"),
                ))),
            }
        }
        Err(refusal) => Err(refusal),
    }
}

fn check_api_key(node: &NodeCtx, req: &Request<Incoming>) -> Result<(), Box<Resp>> {
    let Some(key) = &node.settings.api.key else {
        return if node.settings.auth.mode == switchboard_config::AuthMode::None {
            Ok(())
        } else {
            Err(Box::new(json_error(
                StatusCode::UNAUTHORIZED,
                "api.key is not configured; the HTTP API is off",
            )))
        };
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, k)| k.trim());
    match given {
        Some(k) if constant_time_eq(k.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "wrong api key",
        ))),
        None => Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "missing api key (Authorization: Bearer <api.key>)",
        ))),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct JsonPublish {
    room: String,
    data: serde_json::Value,
    #[serde(default)]
    msg_id: Option<String>,
}

/// `POST /api/publish`: `{"room","data"}` as JSON, or as a MessagePack map
/// (`Content-Type: application/msgpack`), whose `data` is kept byte for byte.
async fn publish(node: Arc<NodeCtx>, caller: Caller, req: Request<Incoming>) -> Resp {
    let (body, msgpack) = match read_body(&node, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = if msgpack {
        parse_msgpack_command(&body, "pub").and_then(|k| match k {
            CommandKind::Pub { room, data, msg_id } => Ok((room, data, msg_id)),
            _ => Err("body: not a publish".into()),
        })
    } else {
        parse_json_publish(&body)
    };
    let (room, data, msg_id) = match parsed {
        Ok(p) => p,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = validate_room(&room) {
        return json_error(StatusCode::BAD_REQUEST, format!("room: {e}"));
    }
    if let Err(r) = caller.check(&node, Some(&room)) {
        return *r;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = PublishRequest {
        from: caller.from(),
        data,
        msg_id,
        reply: PublishReply::Offset(tx),
        hops: 0,
    };
    if let Err(e) = node
        .rooms
        .cast(&room, RoomMsg::Publish(Box::new(req)))
        .await
    {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, e);
    }
    match rx.await {
        Ok(offset) => json(
            StatusCode::OK,
            &serde_json::json!({ "room": room, "offset": offset }),
        ),
        Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "the room did not answer"),
    }
}

/// The body (at most `limits.max_frame_bytes`), and whether it is MessagePack.
async fn read_body(node: &NodeCtx, req: Request<Incoming>) -> Result<(Bytes, bool), Resp> {
    let msgpack = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("msgpack"));
    let limit = node.settings.limits.max_frame_bytes;
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok((b.to_bytes(), msgpack)),
        Err(_) => Err(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than limits.max_frame_bytes ({limit})"),
        )),
    }
}

#[derive(Deserialize)]
struct JsonSend {
    to: String,
    data: serde_json::Value,
}

/// `POST /api/send`: `{"to","data"}` as JSON or MessagePack, a `dm` to
/// every connection of the user, cluster-wide.
async fn send(node: Arc<NodeCtx>, caller: Caller, req: Request<Incoming>) -> Resp {
    let (body, msgpack) = match read_body(&node, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = if msgpack {
        parse_msgpack_command(&body, "send").and_then(|k| match k {
            CommandKind::Send { to, data } => Ok((to, data)),
            _ => Err("body: not a send".into()),
        })
    } else {
        serde_json::from_slice::<JsonSend>(&body)
            .map_err(|e| format!("body: {e}"))
            .and_then(|s| {
                let data = rmp_serde::to_vec(&s.data).map_err(|e| format!("data: {e}"))?;
                Ok((s.to, Bytes::from(data)))
            })
    };
    let (to, data) = match parsed {
        Ok(p) => p,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = switchboard_protocol::validate_user(&to) {
        return json_error(StatusCode::BAD_REQUEST, format!("to: {e}"));
    }
    if let Err(r) = caller.check(&node, None) {
        return *r;
    }
    let (here, there) = crate::node::send_dm(&node, &caller.from(), &to, &data);
    let there = match there {
        Some(there) => there.await,
        None => 0,
    };
    match here + there {
        0 => json_error(
            StatusCode::NOT_FOUND,
            format!("to: user {to:?} is not online"),
        ),
        n => json(StatusCode::OK, &serde_json::json!({ "delivered": n })),
    }
}

fn parse_json_publish(body: &[u8]) -> Result<(String, Bytes, Option<String>), String> {
    let p: JsonPublish = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let data = rmp_serde::to_vec(&p.data).map_err(|e| format!("data: {e}"))?;
    Ok((p.room, Bytes::from(data), p.msg_id))
}

/// A MessagePack map that is a command without its `op`: `op` is added and
/// the command decoder checks the rest exactly as for WebSocket clients.
fn parse_msgpack_command(body: &Bytes, op: &str) -> Result<CommandKind, String> {
    let (value, rest) = split_value(body).map_err(|e| format!("body: {e}"))?;
    if !rest.is_empty() {
        return Err("body: one MessagePack map expected".into());
    }
    let mut fields = value;
    let entries = rmp::decode::read_map_len(&mut fields)
        .map_err(|_| "body: a MessagePack map expected".to_owned())?;
    let mut cmd = Vec::with_capacity(value.len() + 12);
    rmp::encode::write_map_len(&mut cmd, entries + 1).map_err(|e| e.to_string())?;
    rmp::encode::write_str(&mut cmd, "op").map_err(|e| e.to_string())?;
    rmp::encode::write_str(&mut cmd, op).map_err(|e| e.to_string())?;
    cmd.extend_from_slice(fields);
    let cmd = Bytes::from(cmd);
    match switchboard_protocol::decode_commands(&cmd).next() {
        Some(Ok(c)) => Ok(c.kind),
        Some(Err(e)) => Err(e.reason),
        None => Err(format!("body: not a {op}")),
    }
}

async fn presence(node: &NodeCtx, room: &str) -> Resp {
    if let Err(e) = validate_room(room) {
        return json_error(StatusCode::BAD_REQUEST, format!("room: {e}"));
    }
    match node.presence.users(room).await {
        Ok(users) => {
            let users: Vec<&str> = users.iter().map(|u| &**u).collect();
            json(
                StatusCode::OK,
                &serde_json::json!({ "room": room, "users": users }),
            )
        }
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
