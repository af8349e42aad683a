//! Rate limits end to end: the gate answers 429 itself with Retry-After and
//! the IETF RateLimit headers, and the worker never sees a refused request.

mod common;

use std::path::Path;

use common::*;
use http::Method;

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
    send_with(g.addr, Method::GET, path, headers).await
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

/// `shared: true`: two gates count into one bucket in a real Redis.
fn shared_config(sock: &Path, redis_url: &str) -> String {
    shared_config_rate(sock, redis_url, "6/m, burst: 6")
}

fn shared_config_rate(sock: &Path, redis_url: &str, rate: &str) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{sock}\"]\n\
         revocation:\n  redis: {redis_url}\n\
         rate_limits:\n\
         \x20 global: {{ key: client_ip, rate: {rate}, shared: true, headers: true }}\n\
         routes:\n\
         \x20 - path: /hello\n    upstream: app\n    rate_limit: global\n\
         \x20 - path: /{{*rest}}\n    upstream: app\n",
        sock = sock.display()
    )
}

#[tokio::test]
async fn shared_limits_count_across_gates_in_redis() {
    let redis = Redis::start();
    let w = Worker::start().await;
    let yaml = shared_config(&w.sock, &redis.url());
    let a = Gate::start(&yaml).await;
    let b = Gate::start(&yaml).await;
    let before = w.hits().await;
    let mut statuses = Vec::new();
    for i in 0..10 {
        let g = if i % 2 == 0 { &a } else { &b };
        let r = get_with(g, "/hello", &[]).await;
        if r.status == 200 {
            let rl = r.header("ratelimit").unwrap_or_default().to_string();
            assert!(rl.contains(&format!("r={}", 5 - i)), "request {i}: {rl}");
        } else {
            r.assert_rejection(429, "rate_limited");
            assert!(r.header("retry-after").is_some());
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 429, 429, 429, 429],
        "one bucket of 6 for both gates"
    );
    assert_eq!(
        w.hits().await - before,
        6,
        "the worker saw exactly the allowed"
    );
    let keys = redis.cli(&["--scan", "--pattern", "asgi-gate:rl:global:*"]);
    assert_eq!(keys.trim(), "asgi-gate:rl:global:4:7f000001", "{keys}");
    let ttl: i64 = redis.cli(&["PTTL", keys.trim()]).parse().unwrap();
    assert!(
        ttl > 0 && ttl <= 61_000,
        "the bucket expires once full again: {ttl} ms"
    );
}

#[tokio::test]
async fn shared_limits_fall_back_to_each_gate_without_redis() {
    let port = unused_port();
    let w = Worker::start().await;
    let g = Gate::start(&shared_config(
        &w.sock,
        &format!("redis://127.0.0.1:{port}/0"),
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get_with(&g, "/hello", &[]).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn shared_limits_fall_back_at_once_when_redis_stops() {
    let mut redis = Redis::start();
    let w = Worker::start().await;
    let g = Gate::start(&shared_config_rate(
        &w.sock,
        &redis.url(),
        "1000/s, burst: 1000",
    ))
    .await;
    let r = get_with(&g, "/hello", &[]).await;
    assert_eq!(r.status, 200);

    redis.stop();
    // Each request waiting out the 100 ms Redis timeout would take >= 5 s.
    let started = std::time::Instant::now();
    for i in 0..50 {
        let r = get_with(&g, "/hello", &[]).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(2),
        "50 requests with Redis down took {took:?}; gate log:\n{}",
        g.log()
    );
    assert!(
        g.log().contains("shared rate limits: Redis unavailable"),
        "{}",
        g.log()
    );
}
