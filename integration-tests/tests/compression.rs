//! Response compression end to end: the real gate in front of a real uvicorn
//! worker, every compressed body decoded with the reference decoders
//! (flate2, brotli, zstd) and compared with what the worker sends directly.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, Version};
use http_body_util::{BodyExt, Full};

/// Top-level compression with all three codings, a catch-all route that
/// compresses, and `/echo/plain/...` with `compression: false`.
fn main_config(sock: &Path) -> String {
    main_config_min(sock, 1024)
}

fn main_config_min(sock: &Path, min_size: u64) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{sock}\"]\n\
         compression:\n\
         \x20 algorithms: [br, gzip, zstd]\n\
         \x20 min_size: {min_size}\n\
         \x20 content_types: [application/json, \"text/*\"]\n\
         \x20 levels: {{ gzip: 6, br: 4, zstd: 3 }}\n\
         routes:\n\
         \x20 - path: /echo/plain/{{*rest}}\n    upstream: app\n    compression: false\n\
         \x20 - path: /{{*rest}}\n    upstream: app\n",
        sock = sock.display()
    )
}

/// br and gzip only; `/sse` opts event streams in.
fn sse_config(sock: &Path) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{sock}\"]\n\
         compression:\n\
         \x20 algorithms: [br, gzip]\n\
         \x20 min_size: 1024\n\
         \x20 content_types: [application/json, \"text/*\"]\n\
         routes:\n\
         \x20 - path: /sse\n    upstream: app\n    compression: {{ sse: true }}\n\
         \x20 - path: /{{*rest}}\n    upstream: app\n",
        sock = sock.display()
    )
}

/// The five events of the app's `/sse`.
const SSE_TEXT: &str = "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n";

fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .expect("valid gzip");
        }
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .expect("valid brotli");
        }
        "zstd" => out = zstd::stream::decode_all(data).expect("valid zstd"),
        other => panic!("unexpected coding {other}"),
    }
    out
}

/// A decoder fed frame by frame as they arrive; `decoded()` is everything
/// decodable so far.
enum StreamDecoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl StreamDecoder {
    fn new(coding: &str) -> StreamDecoder {
        match coding {
            "gzip" => StreamDecoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            "br" => StreamDecoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            "zstd" => StreamDecoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
            other => panic!("unexpected coding {other}"),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        match self {
            StreamDecoder::Gzip(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
            }
            StreamDecoder::Br(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
            }
            StreamDecoder::Zstd(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
            }
        }
    }

    fn decoded(&self) -> &[u8] {
        match self {
            StreamDecoder::Gzip(d) => d.get_ref(),
            StreamDecoder::Br(d) => d.get_ref(),
            StreamDecoder::Zstd(d) => d.get_ref(),
        }
    }
}

fn all_values<'h>(h: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii header"))
        .collect()
}

/// `GET path` on a fresh h1 connection with these extra headers.
async fn get_with(g: &Gate, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = req(method, g.addr, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send_h1(g.addr, b.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{path} {headers:?}: {e}"))
}

async fn get_ae(g: &Gate, path: &str, accept_encoding: &str) -> Resp {
    get_with(
        g,
        Method::GET,
        path,
        &[("accept-encoding", accept_encoding)],
    )
    .await
}

/// Asserts the response is `coding`-compressed as the contract says and
/// decodes to `original`.
fn assert_compressed(r: &Resp, coding: &str, original: &[u8], what: &str) {
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(
        all_values(&r.headers, "content-encoding"),
        [coding],
        "{what}: Content-Encoding"
    );
    assert_eq!(r.header("content-length"), None, "{what}: Content-Length");
    assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{what}: Vary");
    assert!(
        r.body.len() < original.len() / 2,
        "{what}: {} compressed bytes for {} original",
        r.body.len(),
        original.len()
    );
    assert!(
        decode(coding, &r.body) == original,
        "{what}: the decoded body differs from the worker's"
    );
}

/// Asserts an identity response carrying the worker's exact bytes.
fn assert_identity(r: &Resp, original: &[u8], vary: Option<&str>, what: &str) {
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(
        r.header("content-encoding"),
        None,
        "{what}: Content-Encoding"
    );
    let len = original.len().to_string();
    assert_eq!(
        r.header("content-length"),
        Some(len.as_str()),
        "{what}: Content-Length"
    );
    assert_eq!(r.header("vary"), vary, "{what}: Vary");
    assert!(r.body == original, "{what}: body differs from the worker's");
}

#[tokio::test]
async fn big_decodes_to_the_worker_bytes_under_br_gzip_and_zstd() {
    let w = Worker::start().await;
    let g = Gate::start(&main_config(&w.sock)).await;
    let direct = w.direct(Method::GET, "/big").await;
    assert_eq!(direct.status, 200);
    assert_eq!(direct.header("content-type"), Some("application/json"));
    assert!(direct.body.len() > 60_000, "{}", direct.body.len());

    for coding in ["br", "gzip", "zstd"] {
        // Raw bytes, to see the h1 framing exactly as a client does.
        let request = format!(
            "GET /big HTTP/1.1\r\nHost: {}\r\nAccept-Encoding: {coding}\r\nConnection: close\r\n\r\n",
            g.addr
        );
        let r = match raw_exchange(g.addr, request.as_bytes(), Duration::from_secs(10)).await {
            RawOutcome::Response(r) => r,
            other => panic!("{coding}: no response: {other:?}"),
        };
        assert_eq!(r.status, 200, "{coding}");
        let encodings: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k == "content-encoding")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(encodings, [coding], "{coding}: Content-Encoding");
        assert_eq!(r.header("content-length"), None, "{coding}: Content-Length");
        assert_eq!(
            r.header("transfer-encoding"),
            Some("chunked"),
            "{coding}: h1 framing"
        );
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{coding}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{coding}"
        );
        assert!(
            r.body.len() < direct.body.len() / 4,
            "{coding}: {} bytes for {}",
            r.body.len(),
            direct.body.len()
        );
        assert!(
            decode(coding, &r.body) == direct.body,
            "{coding}: decoded body differs from the worker's /big"
        );
    }
}

#[tokio::test]
async fn accept_encoding_q_values_wildcard_and_server_order() {
    let w = Worker::start().await;
    let all = Gate::start(&main_config(&w.sock)).await; // [br, gzip, zstd]
    let two = Gate::start(&sse_config(&w.sock)).await; // [br, gzip]
    let big = w.direct(Method::GET, "/big").await.body;

    // (gate, Accept-Encoding, expected coding or identity)
    let cases: &[(&Gate, &str, Option<&str>)] = &[
        (&all, "gzip;q=1, br;q=0", Some("gzip")),
        (&all, "br;q=0, *", Some("gzip")),
        (&two, "br;q=0, *", Some("gzip")),
        (&all, "zstd, gzip", Some("gzip")), // equal weights: server order
        (&all, "gzip;q=0.5, zstd", Some("zstd")),
        (&all, "GZIP ;Q=0.9 , Br;q=0.8", Some("gzip")),
        (&all, "x-gzip", Some("gzip")),
        (&all, "*", Some("br")),
        (&two, "zstd;q=1, gzip;q=0.1", Some("gzip")),
        (&all, "identity", None),
        (&all, "*;q=0", None),
        (&all, "br;q=0, gzip;q=0, zstd;q=0", None),
        (&all, "deflate", None),
        (&two, "zstd", None),
    ];
    for (g, ae, expected) in cases {
        let what = format!("Accept-Encoding: {ae:?} via :{}", g.addr.port());
        let r = get_ae(g, "/big", ae).await;
        match expected {
            Some(coding) => assert_compressed(&r, coding, &big, &what),
            // Identity, with Vary: another Accept-Encoding would have compressed.
            None => assert_identity(&r, &big, Some("Accept-Encoding"), &what),
        }
    }

    // No Accept-Encoding at all: identity too, and still Vary.
    let r = get_with(&all, Method::GET, "/big", &[]).await;
    assert_identity(&r, &big, Some("Accept-Encoding"), "no Accept-Encoding");
}

#[tokio::test]
async fn small_response_stays_identity_with_vary() {
    let w = Worker::start().await;
    let g = Gate::start(&main_config(&w.sock)).await;
    let direct = w.direct(Method::GET, "/hello").await;
    assert!(direct.body.len() < 1024);

    let r = get_ae(&g, "/hello", "br, gzip, zstd").await;
    assert_identity(&r, &direct.body, Some("Accept-Encoding"), "/hello");
    assert_eq!(r.json(), serde_json::json!({"message": "hello"}));
}

#[tokio::test]
async fn worker_never_sees_accept_encoding_unless_the_route_opts_out() {
    let w = Worker::start().await;
    let g = Gate::start(&main_config(&w.sock)).await;
    // /echo answers with the request headers: 2 KiB of them make its JSON
    // big enough to compress.
    let pad = "p".repeat(2048);
    let headers = [
        ("accept-encoding", "br, gzip;q=0.5"),
        ("x-pad", pad.as_str()),
    ];

    // Compressing route: Accept-Encoding is the gate's business only.
    let r = get_with(&g, Method::GET, "/echo/x", &headers).await;
    assert_eq!(r.status, 200);
    assert_eq!(all_values(&r.headers, "content-encoding"), ["br"]);
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    let echo: serde_json::Value = serde_json::from_slice(&decode("br", &r.body)).unwrap();
    assert_eq!(echo["path"], "/echo/x");
    assert_eq!(echoed(&echo, "x-pad"), [pad.as_str()]);
    assert_eq!(
        echoed(&echo, "accept-encoding"),
        Vec::<String>::new(),
        "the worker received Accept-Encoding on a compressing route"
    );

    // `compression: false`: Accept-Encoding passed through untouched, the
    // same response sent as the worker made it, without Vary.
    let r = get_with(&g, Method::GET, "/echo/plain/x", &headers).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), None);
    assert!(r.body.len() > 2048, "{}", r.body.len());
    let len = r.body.len().to_string();
    assert_eq!(r.header("content-length"), Some(len.as_str()));
    let echo = r.json();
    assert_eq!(echo["path"], "/echo/plain/x");
    assert_eq!(echoed(&echo, "x-pad"), [pad.as_str()]);
    assert_eq!(echoed(&echo, "accept-encoding"), ["br, gzip;q=0.5"]);
}

/// Streams `path` and records when each `data: N` event became decodable,
/// in ms after the request was sent, plus when the body ended.
async fn stream_events(
    g: &Gate,
    path: &str,
    accept_encoding: &str,
) -> (HeaderMap, Vec<u128>, u128, Vec<u8>) {
    let mut c = H1::connect(g.addr).await.unwrap();
    let r = req(Method::GET, g.addr, path)
        .header("accept-encoding", accept_encoding)
        .body(Full::default())
        .unwrap();
    let t0 = Instant::now();
    let resp = c.send_streaming(r).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (parts, mut body) = resp.into_parts();
    let coding = parts
        .headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    let mut decoder = coding.as_deref().map(StreamDecoder::new);
    let mut plain = Vec::new();
    let mut seen = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the stream stalled")
    {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        let decoded = match &mut decoder {
            Some(d) => {
                d.feed(&data);
                d.decoded()
            }
            None => {
                plain.extend_from_slice(&data);
                &plain[..]
            }
        };
        let text = String::from_utf8_lossy(decoded);
        while seen.len() < 5 && text.contains(&format!("data: {}\n\n", seen.len())) {
            seen.push(t0.elapsed().as_millis());
        }
    }
    let total = t0.elapsed().as_millis();
    let decoded = match &decoder {
        Some(d) => d.decoded().to_vec(),
        None => plain,
    };
    (parts.headers, seen, total, decoded)
}

#[tokio::test]
async fn event_stream_is_not_compressed_by_default() {
    let w = Worker::start().await;
    let g = Gate::start(&main_config(&w.sock)).await;
    let (headers, seen, total, body) = stream_events(&g, "/sse", "br, gzip, zstd").await;
    assert_eq!(
        headers.get("content-type").unwrap(),
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(headers.get("content-encoding"), None);
    assert_eq!(headers.get("vary"), None, "never compressed: no Vary");
    assert_eq!(String::from_utf8(body).unwrap(), SSE_TEXT);
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen[0] < 500, "first event after {} ms: {seen:?}", seen[0]);
    assert!(total >= 800, "whole stream in {total} ms");
}

#[tokio::test]
async fn opted_in_event_stream_is_compressed_and_flushed_per_event() {
    let w = Worker::start().await;
    let g = Gate::start(&sse_config(&w.sock)).await;
    // Both codings at once: the stream takes ~800 ms each.
    let (br, gzip) = tokio::join!(
        stream_events(&g, "/sse", "br"),
        stream_events(&g, "/sse", "gzip, br;q=0.5"),
    );
    for (coding, (headers, seen, total, body)) in [("br", br), ("gzip", gzip)] {
        assert_eq!(
            all_values(&headers, "content-encoding"),
            [coding],
            "{coding}"
        );
        assert_eq!(headers.get("content-length"), None, "{coding}");
        assert_eq!(headers.get("vary").unwrap(), "Accept-Encoding", "{coding}");
        assert_eq!(String::from_utf8(body).unwrap(), SSE_TEXT, "{coding}");
        assert_eq!(seen.len(), 5, "{coding}: events decoded at {seen:?}");
        assert!(
            seen[0] < 500,
            "{coding}: first event decodable only after {} ms ({seen:?}): not flushed",
            seen[0]
        );
        assert!(
            seen[4] >= 700 && total >= 800,
            "{coding}: last event at {} ms, end at {total} ms",
            seen[4]
        );
    }
}

#[tokio::test]
async fn already_gzipped_response_passes_unchanged() {
    let w = Worker::start().await;
    let g = Gate::start(&main_config(&w.sock)).await;
    let direct = w.direct(Method::GET, "/gzipped").await;
    assert_eq!(direct.header("content-encoding"), Some("gzip"));
    let big = w.direct(Method::GET, "/big").await.body;

    for ae in ["br, gzip, zstd", "zstd", "gzip"] {
        let r = get_ae(&g, "/gzipped", ae).await;
        assert_eq!(r.status, 200, "{ae}");
        assert_eq!(
            all_values(&r.headers, "content-encoding"),
            ["gzip"],
            "{ae}: one Content-Encoding"
        );
        assert_eq!(
            r.header("content-length"),
            direct.header("content-length"),
            "{ae}"
        );
        assert_eq!(r.header("vary"), None, "{ae}: never compressed: no Vary");
        assert!(r.body == direct.body, "{ae}: bytes changed");
        assert!(decode("gzip", &r.body) == big, "{ae}: not single gzip");
    }
}

/// The app's FastAPI GET routes answer HEAD with 405 (FastAPI does not add
/// HEAD as Starlette does), so there is no large HEAD response to probe.
/// With `min_size: 16` the worker's 31-byte 405 JSON is big enough to be
/// compressed: POST shows it is, HEAD must not be (no body to encode).
#[tokio::test]
async fn head_is_never_compressed() {
    let w = Worker::start().await;
    let g = Gate::start(&main_config_min(&w.sock, 16)).await;
    let direct = w.direct(Method::HEAD, "/big").await;
    assert_eq!(
        direct.status, 405,
        "the app now answers HEAD /big: test its 200"
    );
    let direct_len = direct.header("content-length").expect("length").to_string();
    assert!(direct_len.parse::<u64>().unwrap() >= 16, "{direct_len}");
    assert_eq!(direct.header("content-type"), Some("application/json"));

    // The same response to another method is compressed...
    let r = get_with(&g, Method::POST, "/big", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, 405);
    assert_eq!(all_values(&r.headers, "content-encoding"), ["gzip"]);
    let direct_post = w.direct(Method::POST, "/big").await;
    assert_eq!(direct_post.status, 405);
    assert_eq!(decode("gzip", &r.body), direct_post.body);
    // ...but not to HEAD: untouched, the worker's Content-Length kept, no Vary.
    let r = get_with(&g, Method::HEAD, "/big", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(r.status, direct.status);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some(direct_len.as_str()));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("vary"), None);
}

#[tokio::test]
async fn h2c_request_gets_brotli() {
    let w = Worker::start().await;
    let g = Gate::start(&main_config(&w.sock)).await;
    let big = w.direct(Method::GET, "/big").await.body;
    let r = send_h2(
        g.addr,
        http::Request::builder()
            .uri(g.url("/big"))
            .header("accept-encoding", "br")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.version, Version::HTTP_2);
    assert_compressed(&r, "br", &big, "h2c");
}
