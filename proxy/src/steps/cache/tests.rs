//! The store on its own: weights, variants, purges, the fill lock.

use std::sync::atomic::Ordering::Relaxed;

use super::*;

fn conf(max_size: u64) -> CacheConf {
    CacheConf {
        max_size,
        max_entry_size: 64 * 1024,
        lock_timeout: Duration::from_secs(5),
    }
}

fn entry(path: &str, body: usize, tags: &[&str]) -> Entry {
    let mut h = HeaderMap::new();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    let now = crate::clock::unix_now_ms();
    Entry {
        status: StatusCode::OK,
        freshness: policy::storable(StatusCode::OK, &h, false, now).unwrap(),
        headers: h,
        body: Bytes::from(vec![b'x'; body]),
        path: path.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

fn tenant(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-tenant", HeaderValue::from_str(v).unwrap());
    h
}

#[test]
fn an_entry_weighs_its_body_headers_and_overhead() {
    let slot = Slot::Entry(Arc::new(entry("/a", 10_000, &[])));
    let key: Box<[u8]> = b"key".to_vec().into();
    let w = u64::from(weigh(&key, &slot));
    assert!(w >= 10_000 + ENTRY_OVERHEAD + 3, "{w}");
    assert!(w < 10_000 + ENTRY_OVERHEAD + 200, "{w}");
}

#[test]
fn variants_are_found_by_the_request_headers_they_vary_on() {
    let store = Store::new(&conf(1 << 20));
    let names = vec![HeaderName::from_static("x-tenant")];
    store.put(b"P", &tenant("a"), entry("/a", 10, &[]), names.clone());
    store.put(b"P", &tenant("b"), entry("/a", 20, &[]), names);
    assert_eq!(store.find(b"P", &tenant("a")).unwrap().body.len(), 10);
    assert_eq!(store.find(b"P", &tenant("b")).unwrap().body.len(), 20);
    assert!(store.find(b"P", &tenant("c")).is_none());
    assert!(store.find(b"P", &HeaderMap::new()).is_none());
}

#[test]
fn purges_count_responses_by_prefix_and_tag() {
    let store = Store::new(&conf(1 << 20));
    let names = vec![HeaderName::from_static("x-tenant")];
    store.put(
        b"1",
        &tenant("a"),
        entry("/api/items/1", 10, &["items"]),
        names,
    );
    store.put(
        b"2",
        &HeaderMap::new(),
        entry("/api/items/2", 10, &["items", "i2"]),
        vec![],
    );
    store.put(
        b"3",
        &HeaderMap::new(),
        entry("/api/other", 10, &[]),
        vec![],
    );
    assert_eq!(store.purge(None, Some("i2")), 1);
    assert_eq!(store.purge(Some("/api/items"), None), 1);
    assert!(store.find(b"1", &tenant("a")).is_none());
    assert!(store.find(b"3", &HeaderMap::new()).is_some());
    assert_eq!(store.purge(None, None), 1);
    assert_eq!(store.usage().1, 0);
}

#[test]
fn the_byte_bound_holds() {
    let store = Store::new(&conf(100_000));
    for i in 0..100u32 {
        let key = format!("k{i}");
        store.put(
            key.as_bytes(),
            &HeaderMap::new(),
            entry("/k", 5_000, &[]),
            vec![],
        );
    }
    let (bytes, entries) = store.usage();
    assert!(bytes <= 100_000, "{bytes}");
    assert!(entries < 20, "{entries}");
}

#[tokio::test]
async fn a_fill_wakes_its_waiters_when_it_ends() {
    let store = Arc::new(Store::new(&conf(1 << 20)));
    let guard = store.lock_or_wait(b"K").ok().unwrap();
    let mut rx = store.lock_or_wait(b"K").err().unwrap();
    assert!(store.try_lock(b"K").is_none());
    drop(guard);
    // The sender is gone: the waiter wakes at once, and the key is free.
    assert!(rx.changed().await.is_err());
    assert!(store.try_lock(b"K").is_some());
}

async fn fill_and_read(store: &Arc<Store>, key: &[u8], body: usize) {
    let h = HeaderMap::new();
    let req = Request {
        method: &Method::GET,
        headers: &h,
        proto: "http",
        host: b"h",
        path: "/a",
        query: None,
        decoded_path: "/a",
        coding: None,
        gate_compresses: false,
        claim: None,
        had_authorization: false,
        has_body: false,
    };
    let fill = Fill::new(store.clone(), key.to_vec(), &req, false, None, None);
    let resp = Response::builder()
        .header("cache-control", "max-age=60")
        .body(GateBody::full(vec![b'x'; body]))
        .unwrap();
    let (resp, outcome) = fill.finish(resp).await;
    assert_eq!(outcome, Outcome::Miss);
    let got = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    // The client always gets the whole body.
    assert_eq!(got.len(), body);
}

#[tokio::test]
async fn a_copy_is_stored_when_its_body_ends_within_the_limits() {
    let store = Arc::new(Store::new(&conf(200_000)));
    fill_and_read(&store, b"A", 1000).await;
    let e = store.find(b"A", &HeaderMap::new()).unwrap();
    assert_eq!(e.body.len(), 1000);
    assert_eq!(e.headers[header::CONTENT_LENGTH], "1000");
    // Past max_entry_size (64 KiB here): sent, not stored.
    fill_and_read(&store, b"B", 70_000).await;
    assert!(store.find(b"B", &HeaderMap::new()).is_none());
    // Copies in flight already hold the whole budget: not stored either.
    store.filling.store(200_000, Relaxed);
    fill_and_read(&store, b"C", 1000).await;
    assert!(store.find(b"C", &HeaderMap::new()).is_none());
    store.filling.store(0, Relaxed);
    fill_and_read(&store, b"D", 1000).await;
    assert!(store.find(b"D", &HeaderMap::new()).is_some());
    assert_eq!(store.filling.load(Relaxed), 0);
}
