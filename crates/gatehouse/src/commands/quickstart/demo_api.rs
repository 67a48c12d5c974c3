//! The quickstart's HTTP target: a small JSON API served by the quickstart itself on a loopback
//! port — users with e-mail addresses, phone and card numbers, and a DELETE endpoint. It demands
//! an API key (`X-Api-Key`) that only the gateway holds, so a request that reaches it without the
//! gateway is refused.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::commands::CommandError;

type Users = Arc<Mutex<BTreeMap<u32, serde_json::Value>>>;

fn seed() -> BTreeMap<u32, serde_json::Value> {
    let rows = [
        (
            1,
            "Ada Lovelace",
            "ada@example.com",
            "4111 1111 1111 1111",
            "+44 20 7946 0958",
            "prefers email",
        ),
        (
            2,
            "Grace Hopper",
            "grace@example.org",
            "5500 0000 0000 0004",
            "+1 202 555 0143",
            "card on file: 4012 8888 8888 1881",
        ),
        (
            3,
            "Alan Turing",
            "alan@example.net",
            "3400 000000 00009",
            "+44 161 496 0123",
            "VIP",
        ),
    ];
    rows.into_iter()
        .map(|(id, name, email, card, phone, notes)| {
            (
                id,
                serde_json::json!({
                    "id": id, "name": name, "email": email, "card_number": card,
                    "phone": phone, "notes": notes,
                }),
            )
        })
        .collect()
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn handle(req: &Request<Incoming>, users: &Users, api_key: &str) -> Response<Full<Bytes>> {
    let presented = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if presented != api_key {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "missing or wrong X-Api-Key" }),
        );
    }
    let path = req.uri().path().trim_end_matches('/');
    let id = path
        .strip_prefix("/users/")
        .and_then(|rest| rest.parse::<u32>().ok());
    let Ok(mut users) = users.lock() else {
        return json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": "state poisoned" }),
        );
    };
    match (req.method(), path, id) {
        (&Method::GET, "/users", _) => json(
            StatusCode::OK,
            serde_json::json!({ "users": users.values().cloned().collect::<Vec<_>>() }),
        ),
        (&Method::GET, _, Some(id)) => match users.get(&id) {
            Some(user) => json(StatusCode::OK, user.clone()),
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": format!("no user {id}") }),
            ),
        },
        (&Method::DELETE, _, Some(id)) => match users.remove(&id) {
            Some(_) => json(StatusCode::OK, serde_json::json!({ "deleted": id })),
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": format!("no user {id}") }),
            ),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "try GET /users, GET /users/{id} or DELETE /users/{id}" }),
        ),
    }
}

/// Binds the demo API on a free loopback port and serves it on the current runtime.
pub async fn start(api_key: String) -> Result<SocketAddr, CommandError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CommandError::Failed(format!("demo API listener: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CommandError::Failed(format!("demo API listener: {e}")))?;
    let users: Users = Arc::new(Mutex::new(seed()));
    let api_key = Arc::new(api_key);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let users = users.clone();
            let api_key = api_key.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = handle(&req, &users, &api_key);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
