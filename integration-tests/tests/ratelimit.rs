//! Rate limits end to end: the gate answers 429 itself with Retry-After and
//! the IETF RateLimit headers, and the worker never sees a refused request.

mod common;

use std::path::Path;

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;

fn limited_config(sock: &Path) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{sock}\"]\n\
         rate_limits:\n\
         \x20 per_ip: {{ key: client_ip, rate: 5/s, burst: 5 }}\n\
         \x20 per_key: {{ key: \"header:x-api-key\", rate: 3/m, headers: true }}\n\
         routes:\n\
         \x20 - path: /hello\n    upstream: app\n    rate_limit: per_ip\n\
         \x20 - path: /echo\n    upstream: app\n    rate_limit: [per_key]\n\
         \x20 - path: /{{*rest}}\n    upstream: app\n",
        sock = sock.display()
    )
}

async fn get_with(g: &Gate, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = req(Method::GET, g.addr, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send_h1(g.addr, b.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn per_ip_burst_then_429_and_worker_counts_exactly_the_allowed() {
    let w = Worker::start().await;
    let g = Gate::start(&limited_config(&w.sock)).await;
    w.direct(Method::POST, "/count/reset").await;

    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(g.addr, "/hello").await.status.as_u16());
    }
    // The refill (one per 200 ms) may add at most one more allowed request
    // if the loop is slow; the burst itself is exact.
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    assert!((5..=6).contains(&allowed), "{statuses:?}");
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");

    let r = get(g.addr, "/hello").await;
    r.assert_rejection(429, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After in whole seconds, at least 1");
    assert_eq!(r.header("ratelimit-policy"), Some("\"per_ip\";q=5;w=1"));
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"per_ip\";r=0;t="),
        "{:?}",
        r.header("ratelimit")
    );
    assert_eq!(
        w.hits().await,
        allowed as u64,
        "the worker saw only allowed requests"
    );

    // Other routes do not share the per_ip buckets.
    assert_eq!(get(g.addr, "/pid").await.status, 200);
}

#[tokio::test]
async fn header_keyed_limits_are_per_key_and_fall_back_to_ip() {
    let w = Worker::start().await;
    let g = Gate::start(&limited_config(&w.sock)).await;

    for i in 0..3 {
        let r = get_with(&g, "/echo", &[("x-api-key", "alpha")]).await;
        assert_eq!(r.status, 200, "request {i}");
        // headers: true → RateLimit on allowed responses too.
        assert_eq!(r.header("ratelimit-policy"), Some("\"per_key\";q=3;w=60"));
        let remaining = format!("\"per_key\";r={};", 2 - i);
        assert!(
            r.header("ratelimit").unwrap().starts_with(&remaining),
            "{:?}",
            r.header("ratelimit")
        );
    }
    get_with(&g, "/echo", &[("x-api-key", "alpha")])
        .await
        .assert_rejection(429, "rate_limited");
    // Another key has its own bucket.
    assert_eq!(
        get_with(&g, "/echo", &[("x-api-key", "beta")]).await.status,
        200
    );
    // No key: limited by client IP, in its own bucket.
    for _ in 0..3 {
        assert_eq!(get(g.addr, "/echo").await.status, 200);
    }
    get(g.addr, "/echo")
        .await
        .assert_rejection(429, "rate_limited");
    assert_eq!(
        get_with(&g, "/echo", &[("x-api-key", "gamma")])
            .await
            .status,
        200
    );
}
