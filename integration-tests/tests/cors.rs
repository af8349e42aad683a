//! CORS answered by the gate in front of the real app: preflights never
//! reach the worker, actual responses (rejections included) carry the
//! headers for allowed origins only, `cors: false` routes pass OPTIONS on.

mod common;

use std::time::Duration;

use common::*;
use http::Method;

const APP: &str = "https://app.example.com";

fn cors_config(w: &Worker) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{sock}\"]\n\
         rate_limits:\n  one: {{ key: client_ip, rate: 1/m, burst: 1 }}\n\
         cors:\n  allow_origins: [\"{APP}\", \"https://*.example.org\"]\n\
         \x20 allow_methods: [GET, POST]\n\
         \x20 allow_headers: [authorization, x-api-key]\n\
         \x20 expose_headers: [x-request-id]\n\
         \x20 allow_credentials: true\n\
         \x20 max_age: 10m\n\
         routes:\n\
         \x20 - path: /limited\n    upstream: app\n    rate_limit: one\n\
         \x20 - path: /echo/{{*rest}}\n    upstream: app\n    cors: false\n\
         \x20 - path: /{{*rest}}\n    upstream: app\n",
        sock = w.sock.display()
    )
}

async fn send(g: &Gate, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
    send_with(g.addr, method, path, headers).await
}

/// uvicorn's access-log lines for `OPTIONS <path>`.
fn worker_options(w: &Worker, path: &str) -> usize {
    w.log()
        .matches(&format!("\"OPTIONS {path} HTTP/1.1\""))
        .count()
}

#[tokio::test]
async fn preflight_is_answered_by_the_gate() {
    let w = Worker::start_with_access_log().await;
    let g = Gate::start(&cors_config(&w)).await;

    let ok = send(
        &g,
        Method::OPTIONS,
        "/hello",
        &[
            ("origin", APP),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Authorization, Content-Type",
            ),
        ],
    )
    .await;
    assert_eq!(ok.status, 204, "{}", ok.text());
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET, POST"));
    let allowed = ok.header("access-control-allow-headers").unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert!(ok.header("vary").unwrap().contains("origin"));
    assert!(ok.header("x-request-id").is_some());

    // Refused: origin, method, header; each a 400 saying which.
    for (origin, method, hdrs, why) in [
        ("https://evil.net", "GET", "", "origin"),
        ("https://example.org", "GET", "", "origin"),
        (APP, "DELETE", "", "method"),
        (APP, "GET", "x-secret", "header"),
    ] {
        let mut h = vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ];
        if !hdrs.is_empty() {
            h.push(("access-control-request-headers", hdrs));
        }
        let r = send(&g, Method::OPTIONS, "/hello", &h).await;
        r.assert_rejection(400, "bad_request");
        assert!(
            r.json()["detail"].as_str().unwrap().contains(why),
            "{why}: {}",
            r.text()
        );
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
    // A subdomain of the wildcard origin passes.
    let sub = send(
        &g,
        Method::OPTIONS,
        "/hello",
        &[
            ("origin", "https://shop.example.org"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(sub.status, 204);
    assert_eq!(
        sub.header("access-control-allow-origin"),
        Some("https://shop.example.org")
    );

    // None of them reached the worker; a plain request does (log is live).
    let r = get(g.addr, "/hello").await;
    assert_eq!(r.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            w.log().contains("\"GET /hello HTTP/1.1\" 200")
        })
        .await,
        "worker log:\n{}",
        w.log()
    );
    assert_eq!(worker_options(&w, "/hello"), 0, "{}", w.log());
}

#[tokio::test]
async fn actual_responses_carry_cors_for_allowed_origins_only() {
    let w = Worker::start().await;
    let g = Gate::start(&cors_config(&w)).await;

    let r = send(&g, Method::GET, "/hello", &[("origin", APP)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert!(r.header("vary").unwrap().contains("origin"));

    let r = send(&g, Method::GET, "/hello", &[("origin", "https://evil.net")]).await;
    assert_eq!(r.status, 200, "the request itself is served");
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert!(r.header("vary").unwrap().contains("origin"));

    // No Origin: not a CORS request, nothing added.
    let r = get(g.addr, "/hello").await;
    assert_eq!(r.header("access-control-allow-origin"), None);

    // The gate's own rejection is readable by the allowed origin's script.
    let first = send(&g, Method::GET, "/limited", &[("origin", APP)]).await;
    assert_eq!(
        first.status,
        404,
        "the app has no /limited: {}",
        first.text()
    );
    let limited = send(&g, Method::GET, "/limited", &[("origin", APP)]).await;
    limited.assert_rejection(429, "rate_limited");
    assert_eq!(limited.header("access-control-allow-origin"), Some(APP));
}

#[tokio::test]
async fn cors_false_routes_forward_options_to_the_worker() {
    let w = Worker::start_with_access_log().await;
    let g = Gate::start(&cors_config(&w)).await;
    let r = send(
        &g,
        Method::OPTIONS,
        "/echo/x",
        &[("origin", APP), ("access-control-request-method", "GET")],
    )
    .await;
    // FastAPI's /echo has no OPTIONS: its 405, not the gate's 204.
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert!(
        eventually(Duration::from_secs(5), || async {
            worker_options(&w, "/echo/x") == 1
        })
        .await,
        "worker log:\n{}",
        w.log()
    );
    // An actual request on that route gets no CORS headers either.
    let r = send(&g, Method::GET, "/echo/x", &[("origin", APP)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}
