//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`, `POST /savepoint`,
//! `POST /resume`, and (operator mode) `POST /assign` and `POST /release`. With a token,
//! every route but the metrics and health checks needs `Authorization: Bearer <token>`:
//! whoever can reach a pod must not stop it, take its partitions or read its state.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Query, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::{net::TcpListener, sync::oneshot};
use weir_admin_api::{SavepointQuery, routes};

use crate::{
    assignment::{AssignmentMode, Slot},
    runner::{AssignRequest, ResumeRequest, SavepointRequest, Shared, Status},
};

/// How long a savepoint may take before the request gives up (it may still complete).
const SAVEPOINT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a resume may wait for the job loop, which may be busy with a savepoint queued
/// before it.
const RESUME_TIMEOUT: Duration = SAVEPOINT_TIMEOUT;
/// How long an assignment may wait for the job loop: handing partitions over commits them.
const ASSIGN_TIMEOUT: Duration = SAVEPOINT_TIMEOUT;

/// Who may call the routes that read or change the job's state.
#[derive(Clone)]
pub enum Access {
    /// Anyone (a runtime run by hand, without a token).
    Open,
    /// Callers presenting this bearer token (the operator's, from the job's Secret).
    Token(Arc<str>),
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: it may end up in a log.
        f.write_str(match self {
            Self::Open => "Open",
            Self::Token(_) => "Token(..)",
        })
    }
}

/// The admin routes over the runtime's shared state.
pub fn router(shared: Arc<Shared>, access: Access) -> Router {
    let guarded = Router::new()
        .route(routes::STATUS, get(status))
        .route(routes::SAVEPOINT, post(savepoint))
        .route(routes::RESUME, post(resume))
        .route(routes::ASSIGN, post(assign))
        .route(routes::RELEASE, post(release))
        .route_layer(middleware::from_fn_with_state(access, require_token));
    Router::new()
        .route(routes::METRICS, get(metrics))
        .route(routes::HEALTHZ, get(|| async { "ok" }))
        .route(routes::READYZ, get(ready))
        .merge(guarded)
        .with_state(shared)
}

/// Lets a request through when `access` allows it; else 401, before anything is done.
async fn require_token(State(access): State<Access>, request: Request, next: Next) -> Response {
    let Access::Token(token) = &access else { return next.run(request).await };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented.is_some_and(|presented| same_secret(presented.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "the admin token is required").into_response()
}

/// Compares without stopping at the first difference, so timing does not tell how much of
/// a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], shared.metrics.render())
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    match shared.readiness() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}")).into_response(),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Status> {
    Json(shared.status())
}

async fn savepoint(State(shared): State<Arc<Shared>>, Query(query): Query<SavepointQuery>) -> Response {
    if let Some(problem) = query.invalid_id() {
        return (StatusCode::BAD_REQUEST, problem).into_response();
    }
    let (reply, answer) = oneshot::channel();
    shared.request_savepoint(SavepointRequest { id: query.id, stop: query.stop, reply });
    match tokio::time::timeout(SAVEPOINT_TIMEOUT, answer).await {
        Ok(Ok(Ok(savepoint))) => Json(savepoint).into_response(),
        Ok(Ok(Err(e))) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Ok(Err(_)) => (StatusCode::SERVICE_UNAVAILABLE, "the job is stopping").into_response(),
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "the savepoint did not complete in time").into_response(),
    }
}

/// `POST /resume`: consume again after a stop-with-savepoint (the operator aborted the
/// rollout). Answers `{"stopped": false}`, also when the instance was not stopped.
async fn resume(State(shared): State<Arc<Shared>>) -> Response {
    let (reply, answer) = oneshot::channel();
    shared.request_resume(ResumeRequest { reply });
    match tokio::time::timeout(RESUME_TIMEOUT, answer).await {
        Ok(Ok(Ok(resumed))) => Json(resumed).into_response(),
        Ok(Ok(Err(e))) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Ok(Err(_)) => (StatusCode::SERVICE_UNAVAILABLE, "the job is stopping").into_response(),
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "the job loop did not answer in time").into_response(),
    }
}

/// `POST /assign?slot=I&slots=N` (operator mode): own every partition `p` with
/// `p % N == I`. Answered once partitions no longer owned are handed over and the new ones
/// taken: `{"slot": I, "slots": N}`.
async fn assign(State(shared): State<Arc<Shared>>, Query(query): Query<Slot>) -> Response {
    match Slot::new(query.slot, query.slots) {
        Ok(slot) => reassign(shared, Some(slot)).await,
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// `POST /release` (operator mode): hand over every partition and own none.
async fn release(State(shared): State<Arc<Shared>>) -> Response {
    reassign(shared, None).await
}

async fn reassign(shared: Arc<Shared>, slot: Option<Slot>) -> Response {
    if shared.status().assignment_mode != AssignmentMode::Operator {
        let refusal = "this instance shares partitions through its consumer group (--assignment=group)";
        return (StatusCode::CONFLICT, refusal).into_response();
    }
    let (reply, answer) = oneshot::channel();
    shared.request_assign(AssignRequest { slot, reply });
    match tokio::time::timeout(ASSIGN_TIMEOUT, answer).await {
        Ok(Ok(Ok(assigned))) => Json(assigned).into_response(),
        Ok(Ok(Err(e))) => (StatusCode::CONFLICT, e).into_response(),
        Ok(Err(_)) => (StatusCode::SERVICE_UNAVAILABLE, "the job is stopping").into_response(),
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "the job loop did not answer in time").into_response(),
    }
}

/// Binds `addr` and serves until the process ends.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>, access: Access) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    axum::serve(listener, router(shared, access)).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{
        metrics::Metrics,
        runner::{AdminRequest, Resumed},
    };

    /// Serves the admin routes on a free port; returns its address.
    async fn serve_on_free_port(shared: Arc<Shared>) -> SocketAddr {
        serve_with(shared, Access::Open).await
    }

    async fn serve_with(shared: Arc<Shared>, access: Access) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(shared, access)).await });
        addr
    }

    async fn post(addr: SocketAddr, path: &str) -> (u16, String) {
        request(addr, "POST", path, "").await
    }

    async fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
    }

    #[tokio::test]
    async fn resume_is_answered_by_the_job_loop_as_json() {
        let shared = Arc::new(Shared::new(Metrics::new("t").unwrap()));
        let addr = serve_on_free_port(shared.clone()).await;
        // Plays the job loop: answers whatever is queued.
        let job_loop = shared.clone();
        tokio::spawn(async move {
            loop {
                for request in job_loop.take_requests() {
                    match request {
                        AdminRequest::Resume(r) => drop(r.reply.send(Ok(Resumed { stopped: false }))),
                        AdminRequest::Savepoint(r) => drop(r.reply.send(Err("no storage".into()))),
                        AdminRequest::Assign(r) => drop(r.reply.send(Ok(r.slot.into()))),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let (code, body) = post(addr, "/resume").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), serde_json::json!({"stopped": false}));
        assert_eq!(post(addr, "/savepoint?stop=true&id=sp-1").await, (500, "no storage".into()));
    }

    #[tokio::test]
    async fn assignments_are_answered_in_operator_mode_only() {
        let shared = Arc::new(Shared::new(Metrics::new("t").unwrap()));
        let addr = serve_on_free_port(shared.clone()).await;
        assert_eq!(post(addr, "/assign?slot=0&slots=2").await.0, 409, "group mode");
        assert!(shared.take_requests().is_empty(), "nothing queued");
        shared.set_assignment_mode(AssignmentMode::Operator);
        assert_eq!(post(addr, "/assign?slot=2&slots=2").await.0, 400, "no such slot");
        let job_loop = shared.clone();
        tokio::spawn(async move {
            loop {
                for request in job_loop.take_requests() {
                    if let AdminRequest::Assign(r) = request {
                        drop(r.reply.send(Ok(r.slot.into())));
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let (code, body) = post(addr, "/assign?slot=1&slots=2").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"slot": 1, "slots": 2})
        );
        let (code, body) = post(addr, "/release").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"slot": null, "slots": null})
        );
    }

    #[tokio::test]
    async fn with_a_token_only_metrics_and_health_are_open() {
        let shared = Arc::new(Shared::new(Metrics::new("t").unwrap()));
        shared.set_assignment_mode(AssignmentMode::Operator);
        let addr = serve_with(shared.clone(), Access::Token("s3cret".into())).await;
        for (method, path) in [("GET", "/metrics"), ("GET", "/healthz")] {
            assert_eq!(request(addr, method, path, "").await.0, 200, "{path} stays open");
        }
        let wrong =
            ["", "Authorization: Bearer s3cre\r\n", "Authorization: Bearer s3cret2\r\n", "Authorization: s3cret\r\n"];
        for headers in wrong {
            for (method, path) in [
                ("GET", "/status"),
                ("POST", "/savepoint?stop=true&id=x"),
                ("POST", "/resume"),
                ("POST", "/assign?slot=0&slots=1"),
                ("POST", "/release"),
            ] {
                let (code, body) = request(addr, method, path, headers).await;
                assert_eq!((code, body.as_str()), (401, "the admin token is required"), "{method} {path} {headers:?}");
            }
        }
        assert!(shared.take_requests().is_empty(), "nothing reached the job loop");
        let (code, body) = request(addr, "GET", "/status", "Authorization: Bearer s3cret\r\n").await;
        assert_eq!(code, 200, "{body}");
        assert!(format!("{:?}", Access::Token("s3cret".into())).contains(".."), "the token never shows in Debug");
    }

    #[tokio::test]
    async fn a_savepoint_id_outside_the_safe_characters_is_refused() {
        let shared = Arc::new(Shared::new(Metrics::new("t").unwrap()));
        let addr = serve_on_free_port(shared.clone()).await;
        assert_eq!(post(addr, "/savepoint?id=../x").await.0, 400);
        assert!(shared.take_requests().is_empty(), "nothing queued");
    }
}
