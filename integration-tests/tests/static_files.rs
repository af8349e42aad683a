//! Static routes served by the real binary beside a real worker: files,
//! index, 304, compression, traversal refused, byte ranges, precompressed
//! siblings, the worker never asked.

mod common;

use std::time::Duration;

use common::*;
use http::Method;

struct Site {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
}

fn site() -> Site {
    let dir = tempdir();
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    let css: String = (0..400)
        .map(|i| format!(".c{i} {{ color: red }}\n"))
        .collect();
    std::fs::write(root.join("site.css"), &css).unwrap();
    std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "not for you").unwrap();
    Site { _dir: dir, root }
}

fn yaml(w: &Worker, s: &Site) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{sock}\"]\n\
         compression: {{ algorithms: [gzip] }}\n\
         routes:\n\
         \x20 - path: /static/{{*path}}\n\
         \x20   static: {{ dir: \"{root}\", index: index.html, cache_control: \"public, max-age=3600\" }}\n\
         \x20 - path: /pre/{{*path}}\n\
         \x20   static: {{ dir: \"{root}\", index: index.html, precompressed: true }}\n\
         \x20 - path: /{{*rest}}\n    upstream: app\n",
        sock = w.sock.display(),
        root = s.root.display()
    )
}

async fn send(g: &Gate, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
    send_with(g.addr, method, path, headers).await
}

#[tokio::test]
async fn files_index_304_and_gzip_without_the_worker() {
    let w = Worker::start().await;
    let s = site();
    let g = Gate::start(&yaml(&w, &s)).await;
    let hits = w.hits().await;

    let css = std::fs::read(s.root.join("site.css")).unwrap();
    let r = send(&g, Method::GET, "/static/site.css", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, css);
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
    assert!(r.header("last-modified").is_some());
    assert!(r.header("x-request-id").is_some());
    let etag = r.header("etag").unwrap().to_string();

    let again = send(
        &g,
        Method::GET,
        "/static/site.css",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    let gz = send(
        &g,
        Method::GET,
        "/static/site.css",
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(gz.status, 200);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz.body[..]), &mut plain)
        .unwrap();
    assert_eq!(plain, css);
    assert!(
        gz.header("etag").unwrap().starts_with("W/"),
        "a gzipped body's ETag is weak"
    );

    let head = send(&g, Method::HEAD, "/static/site.css", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(css.len().to_string().as_str())
    );
    assert!(head.body.is_empty());

    for dir in ["/static/docs", "/static/docs/"] {
        let r = send(&g, Method::GET, dir, &[]).await;
        assert_eq!(r.status, 200, "{dir}");
        assert_eq!(r.text(), "<h1>docs</h1>");
    }
    send(&g, Method::GET, "/static/nope.js", &[])
        .await
        .assert_rejection(404, "not_found");
    let post = send(&g, Method::POST, "/static/site.css", &[]).await;
    post.assert_rejection(405, "method_not_allowed");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    assert_eq!(w.hits().await, hits, "a static request reached the worker");
    // The app route beside it still works.
    assert_eq!(get(g.addr, "/hello").await.status, 200);
}

#[tokio::test]
async fn traversal_is_refused_on_the_wire() {
    let w = Worker::start().await;
    let s = site();
    let g = Gate::start(&yaml(&w, &s)).await;
    for target in [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/docs/..%2f..%2fsecret.txt",
        "/static/..%5csecret.txt",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        match raw_exchange(g.addr, raw.as_bytes(), Duration::from_secs(5)).await {
            RawOutcome::Response(r) => {
                assert!(
                    !String::from_utf8_lossy(&r.body).contains("not for you"),
                    "{target} leaked the file"
                );
                assert!(r.status == 404 || r.status == 400, "{target}: {}", r.status);
            }
            other => panic!("{target}: {other:?}"),
        }
    }
}

/// A site with what a deploy often leaves in a static directory: secrets in
/// dotfiles, a `.git`, and a `.well-known` that is meant to be public.
fn site_with_dotfiles() -> Site {
    let s = site();
    let r = &s.root;
    std::fs::write(r.join(".env"), "SECRET_KEY=dotenv-leak").unwrap();
    std::fs::write(r.join(".htpasswd"), "admin:htpasswd-leak").unwrap();
    std::fs::create_dir_all(r.join(".git")).unwrap();
    std::fs::write(r.join(".git/config"), "[remote] git-leak").unwrap();
    std::fs::write(r.join("docs/.draft.html"), "draft-leak").unwrap();
    std::fs::create_dir_all(r.join(".well-known/acme-challenge")).unwrap();
    std::fs::write(r.join(".well-known/security.txt"), "Contact: sec@x").unwrap();
    std::fs::write(r.join(".well-known/acme-challenge/tok"), "tok.key").unwrap();
    std::fs::write(r.join(".well-known/.secret"), "wk-leak").unwrap();
    s
}

#[tokio::test]
async fn dotfiles_are_404_and_never_served() {
    let w = Worker::start().await;
    let s = site_with_dotfiles();
    let g = Gate::start(&yaml(&w, &s)).await;
    for path in [
        "/static/.env",
        "/static/.htpasswd",
        "/static/.git/config",
        "/static/.git/",
        "/static/%2eenv",
        "/static/%2Egit/config",
        "/static/docs/.draft.html",
        "/static/.well-known/.secret",
    ] {
        for method in [Method::GET, Method::HEAD] {
            let r = send(&g, method.clone(), path, &[]).await;
            assert!(
                !r.text().contains("leak"),
                "{method} {path} leaked: {}",
                r.text()
            );
            if method == Method::GET {
                r.assert_rejection(404, "not_found");
            } else {
                assert_eq!(r.status, 404, "HEAD {path}");
            }
        }
    }
    // `.well-known` (RFC 8615: ACME challenges, security.txt) is served.
    let r = send(&g, Method::GET, "/static/.well-known/security.txt", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Contact: sec@x");
    let r = send(
        &g,
        Method::GET,
        "/static/.well-known/acme-challenge/tok",
        &[],
    )
    .await;
    assert_eq!(r.text(), "tok.key");
}

#[tokio::test]
async fn dotfiles_true_serves_them() {
    let w = Worker::start().await;
    let s = site_with_dotfiles();
    let conf = yaml(&w, &s).replace("index: index.html,", "index: index.html, dotfiles: true,");
    assert!(conf.contains("dotfiles: true"));
    let g = Gate::start(&conf).await;
    let r = send(&g, Method::GET, "/static/.env", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "SECRET_KEY=dotenv-leak");
    let r = send(&g, Method::GET, "/static/.git/config", &[]).await;
    assert_eq!(r.text(), "[remote] git-leak");
}

/// Symlinks are followed only to files under the root, whether the link is
/// relative or absolute; an escape is 404 as a missing file is.
#[tokio::test]
async fn symlinks_out_of_the_root_are_refused() {
    use std::os::unix::fs::symlink;
    let w = Worker::start().await;
    let s = site();
    let r = &s.root;
    let outside = r.parent().unwrap();
    symlink("../secret.txt", r.join("rel-out.txt")).unwrap();
    symlink(outside.join("secret.txt"), r.join("abs-out.txt")).unwrap();
    symlink("..", r.join("up")).unwrap();
    symlink(outside, r.join("abs-up")).unwrap();
    symlink("docs/index.html", r.join("rel-in.html")).unwrap();
    symlink(r.join("docs/index.html"), r.join("abs-in.html")).unwrap();
    symlink("../site.css", r.join("docs/roundabout.css")).unwrap();
    let g = Gate::start(&yaml(&w, &s)).await;
    for path in [
        "/static/rel-out.txt",
        "/static/abs-out.txt",
        "/static/up/secret.txt",
        "/static/abs-up/secret.txt",
    ] {
        let resp = send(&g, Method::GET, path, &[]).await;
        assert!(
            !resp.text().contains("not for you"),
            "{path} leaked the file"
        );
        assert_eq!(resp.status, 404, "{path}");
    }
    // Out and back in again: under the root once resolved, so served.
    let resp = send(&g, Method::GET, "/static/up/www/site.css", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for path in ["/static/rel-in.html", "/static/abs-in.html"] {
        let resp = send(&g, Method::GET, path, &[]).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.text(), "<h1>docs</h1>", "{path}");
    }
    let resp = send(&g, Method::GET, "/static/docs/roundabout.css", &[]).await;
    assert_eq!(resp.status, 200);
}

/// A 300 000-byte file of varied bytes, written into the site.
fn data_file(s: &Site) -> Vec<u8> {
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = s.root.join("data.bin");
    std::fs::write(&path, &data).unwrap();
    // A minute old: a Last-Modified of the current second is no If-Range
    // validator (RFC 9110 §8.8.2.2).
    set_mtime(&path, -60);
    data
}

fn set_mtime(path: &std::path::Path, from_now_secs: i64) {
    let now = std::time::SystemTime::now();
    let d = Duration::from_secs(from_now_secs.unsigned_abs());
    let t = if from_now_secs < 0 { now - d } else { now + d };
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

fn range(r: &str) -> [(&str, &str); 1] {
    [("range", r)]
}

#[tokio::test]
async fn byte_ranges_206_and_416() {
    let w = Worker::start().await;
    let s = site();
    let data = data_file(&s);
    let len = data.len();
    let g = Gate::start(&yaml(&w, &s)).await;

    let full = send(&g, Method::GET, "/static/data.bin", &[]).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert!(full.header("content-range").is_none());

    // first-last, across several 64 KiB reads, from an offset.
    let r = send(
        &g,
        Method::GET,
        "/static/data.bin",
        &range("bytes=1000-199999"),
    )
    .await;
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, data[1000..200_000]);
    assert_eq!(r.header("content-length"), Some("199000"));
    let want = format!("bytes 1000-199999/{len}");
    assert_eq!(r.header("content-range"), Some(want.as_str()));
    assert!(r.header("etag").is_some());

    // A last position past the end is cut to the end.
    let r = send(
        &g,
        Method::GET,
        "/static/data.bin",
        &range("bytes=299990-400000"),
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[299_990..]);

    // Suffix: the last 500 bytes.
    let r = send(&g, Method::GET, "/static/data.bin", &range("bytes=-500")).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[len - 500..]);
    let want = format!("bytes {}-{}/{len}", len - 500, len - 1);
    assert_eq!(r.header("content-range"), Some(want.as_str()));

    // Open-ended.
    let r = send(&g, Method::GET, "/static/data.bin", &range("bytes=250000-")).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[250_000..]);
    assert_eq!(r.header("content-length"), Some("50000"));

    // Past the end: 416 with the length, as the gate's other refusals.
    for bad in [
        "bytes=300000-",
        "bytes=99999999999999999999999-",
        "bytes=-0",
    ] {
        let r = send(&g, Method::GET, "/static/data.bin", &range(bad)).await;
        r.assert_rejection(416, "range_not_satisfiable");
        let want = format!("bytes */{len}");
        assert_eq!(r.header("content-range"), Some(want.as_str()), "{bad}");
    }

    // A range of a compressible file on a compressing route: the identity
    // bytes, never compressed (a 206 is of the identity representation).
    let css = std::fs::read(s.root.join("site.css")).unwrap();
    let r = send(
        &g,
        Method::GET,
        "/static/site.css",
        &[("range", "bytes=10-2009"), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, css[10..2010]);
}

#[tokio::test]
async fn if_range_malformed_ranges_and_head() {
    let w = Worker::start().await;
    let s = site();
    let data = data_file(&s);
    let g = Gate::start(&yaml(&w, &s)).await;
    let full = send(&g, Method::GET, "/static/data.bin", &[]).await;
    let etag = full.header("etag").unwrap().to_string();
    let date = full.header("last-modified").unwrap().to_string();

    fn with(if_range: &str) -> [(&str, &str); 2] {
        [("range", "bytes=100-199"), ("if-range", if_range)]
    }
    for current in [etag.as_str(), date.as_str()] {
        let r = send(&g, Method::GET, "/static/data.bin", &with(current)).await;
        assert_eq!(r.status, 206, "If-Range {current}");
        assert_eq!(r.body, data[100..200]);
    }
    let weak = format!("W/{etag}");
    for stale in [
        "\"1-2\"",
        weak.as_str(),
        "Thu, 01 Jan 1970 00:00:01 GMT",
        "not a date",
    ] {
        let r = send(&g, Method::GET, "/static/data.bin", &with(stale)).await;
        assert_eq!(r.status, 200, "If-Range {stale}");
        assert_eq!(r.body, data, "If-Range {stale}");
        assert!(r.header("content-range").is_none());
    }

    // A date of a second not yet over is weak: no range on it.
    std::fs::write(s.root.join("fresh.bin"), &data).unwrap();
    set_mtime(&s.root.join("fresh.bin"), 3600);
    let fresh = send(&g, Method::GET, "/static/fresh.bin", &[]).await;
    let fresh_date = fresh.header("last-modified").unwrap().to_string();
    let r = send(&g, Method::GET, "/static/fresh.bin", &with(&fresh_date)).await;
    assert_eq!(r.status, 200, "If-Range with a date not yet past");
    let fresh_etag = fresh.header("etag").unwrap().to_string();
    let r = send(&g, Method::GET, "/static/fresh.bin", &with(&fresh_etag)).await;
    assert_eq!(r.status, 206, "its ETag is still strong");

    // Malformed, another unit, several ranges: the whole file (200).
    for ignored in [
        "bytes=abc",
        "bytes=5-1",
        "bytes=",
        "pages=1-2",
        "bytes=0-0,-1",
        "bytes=0-99,200-299",
    ] {
        let r = send(&g, Method::GET, "/static/data.bin", &range(ignored)).await;
        assert_eq!(r.status, 200, "{ignored}");
        assert_eq!(r.body, data, "{ignored}");
    }
    let many = format!("bytes={}", vec!["400000-"; 200].join(","));
    let r = send(&g, Method::GET, "/static/data.bin", &range(&many)).await;
    assert_eq!(r.status, 200, "more ranges than the gate parses");

    // HEAD: GET's status and headers, no body.
    let r = send(&g, Method::HEAD, "/static/data.bin", &range("bytes=-10")).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(
        r.header("content-range"),
        Some("bytes 299990-299999/300000")
    );
    assert!(r.body.is_empty());
    let r = send(
        &g,
        Method::HEAD,
        "/static/data.bin",
        &range("bytes=300000-"),
    )
    .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));
}

/// `app.js` with real br, zstd and gzip siblings; returns the original.
fn precompressed_site(s: &Site) -> Vec<u8> {
    let js: String = (0..300)
        .map(|i| format!("console.log('line {i}');\n"))
        .collect();
    let r = &s.root;
    std::fs::write(r.join("app.js"), &js).unwrap();
    let mut br = Vec::new();
    {
        let mut enc = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        std::io::Write::write_all(&mut enc, js.as_bytes()).unwrap();
    }
    std::fs::write(r.join("app.js.br"), br).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, js.as_bytes()).unwrap();
    std::fs::write(r.join("app.js.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(
        r.join("app.js.zst"),
        zstd::encode_all(js.as_bytes(), 3).unwrap(),
    )
    .unwrap();
    // Only a gzip sibling here.
    std::fs::write(r.join("docs/index.html"), &js).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, js.as_bytes()).unwrap();
    std::fs::write(r.join("docs/index.html.gz"), gz.finish().unwrap()).unwrap();
    js.into_bytes()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(b), &mut out).unwrap();
    out
}

#[tokio::test]
async fn precompressed_siblings_by_accept_encoding() {
    let w = Worker::start().await;
    let s = site();
    let js = precompressed_site(&s);
    let file = |n: &str| std::fs::read(s.root.join(n)).unwrap();
    let g = Gate::start(&yaml(&w, &s)).await;
    let mut etags = Vec::new();
    for (accept, coding, sibling) in [
        ("gzip, deflate, br, zstd", Some("br"), "app.js.br"),
        ("gzip, br", Some("br"), "app.js.br"),
        ("gzip, zstd", Some("zstd"), "app.js.zst"),
        ("gzip", Some("gzip"), "app.js.gz"),
        ("br;q=0, zstd;q=0, gzip", Some("gzip"), "app.js.gz"),
        ("br;q=0.5, gzip", Some("gzip"), "app.js.gz"),
        ("br;q=0, gzip;q=0, zstd;q=0", None, "app.js"),
        ("identity", None, "app.js"),
        ("", None, "app.js"),
    ] {
        let r = send(
            &g,
            Method::GET,
            "/pre/app.js",
            &[("accept-encoding", accept)],
        )
        .await;
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.header("content-encoding"), coding, "{accept}");
        // The sibling's bytes as they are on disk: compressed once.
        assert_eq!(r.body, file(sibling), "{accept}");
        assert_eq!(
            r.header("content-type"),
            Some("text/javascript; charset=utf-8"),
            "{accept}"
        );
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{accept}");
        assert_eq!(r.header("accept-ranges"), Some("bytes"), "{accept}");
        let etag = r.header("etag").unwrap().to_string();
        assert!(!etag.starts_with("W/"), "{accept}: {etag}");
        etags.push((sibling, etag));
    }
    assert_eq!(gunzip(&file("app.js.gz")), js);
    etags.dedup_by(|a, b| a.0 == b.0);
    assert_eq!(etags.len(), 4, "{etags:?}");
    for (i, (_, a)) in etags.iter().enumerate() {
        for (_, b) in &etags[i + 1..] {
            assert_ne!(a, b, "two variants share an ETag");
        }
    }

    // No Accept-Encoding at all: identity, still with Vary.
    let r = send(&g, Method::GET, "/pre/app.js", &[]).await;
    assert_eq!(r.body, js);
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));

    // 304 of the variant, with Vary.
    let br_tag = etags[0].1.clone();
    let r = send(
        &g,
        Method::GET,
        "/pre/app.js",
        &[("accept-encoding", "br"), ("if-none-match", &br_tag)],
    )
    .await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));

    // A range of a variant is of its encoded bytes.
    let gz = file("app.js.gz");
    let r = send(
        &g,
        Method::GET,
        "/pre/app.js",
        &[("accept-encoding", "gzip"), ("range", "bytes=0-99")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, gz[..100]);
    let want = format!("bytes 0-99/{}", gz.len());
    assert_eq!(r.header("content-range"), Some(want.as_str()));

    // The index's sibling; br accepted but only gzip exists beside it.
    let r = send(
        &g,
        Method::GET,
        "/pre/docs/",
        &[("accept-encoding", "br, gzip")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(gunzip(&r.body), js);

    // Without `precompressed: true`, the siblings are not looked for: the
    // gate's own gzip, from the original.
    let r = send(
        &g,
        Method::GET,
        "/static/app.js",
        &[("accept-encoding", "br, gzip")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&r.body), js);
    assert!(r.header("etag").unwrap().starts_with("W/"));
}

#[tokio::test]
async fn precompressed_siblings_keep_the_path_rules() {
    use std::os::unix::fs::symlink;
    let w = Worker::start().await;
    let s = site_with_dotfiles();
    let js = precompressed_site(&s);
    let r = &s.root;
    let outside = r.parent().unwrap();
    std::fs::write(outside.join("secret.txt.gz"), "gz-leak").unwrap();
    std::fs::write(r.join(".env.gz"), "dotenv-gz-leak").unwrap();
    std::fs::write(r.join(".git/config.gz"), "git-gz-leak").unwrap();
    // A sibling linking out of the root, beside a real file.
    std::fs::write(r.join("linked.js"), &js).unwrap();
    symlink(outside.join("secret.txt.gz"), r.join("linked.js.gz")).unwrap();
    symlink("../secret.txt.gz", r.join("linked.js.br")).unwrap();
    // A sibling with no original; one that is a directory.
    std::fs::write(r.join("orphan.js.gz"), "orphan-leak").unwrap();
    std::fs::create_dir_all(r.join("dir.js.gz")).unwrap();
    std::fs::write(r.join("dir.js"), &js).unwrap();
    let g = Gate::start(&yaml(&w, &s)).await;
    let gz = [("accept-encoding", "gzip, br")];

    for path in ["/pre/.env", "/pre/.git/config", "/pre/orphan.js"] {
        let resp = send(&g, Method::GET, path, &gz).await;
        assert!(!resp.text().contains("leak"), "{path}: {}", resp.text());
        resp.assert_rejection(404, "not_found");
    }
    for target in [
        "/pre/../secret.txt",
        "/pre/%2e%2e/secret.txt",
        "/pre/docs/..%2f..%2fsecret.txt",
    ] {
        let raw = format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
        );
        match raw_exchange(g.addr, raw.as_bytes(), Duration::from_secs(5)).await {
            RawOutcome::Response(resp) => {
                assert!(
                    !String::from_utf8_lossy(&resp.body).contains("leak"),
                    "{target}"
                );
                assert!(resp.status == 404 || resp.status == 400, "{target}");
            }
            other => panic!("{target}: {other:?}"),
        }
    }
    // The escaping and the directory siblings are passed over: identity.
    for path in ["/pre/linked.js", "/pre/dir.js"] {
        let resp = send(&g, Method::GET, path, &[("accept-encoding", "br")]).await;
        assert_eq!(resp.status, 200, "{path}");
        assert!(resp.header("content-encoding").is_none(), "{path}");
        assert_eq!(resp.body, js, "{path}");
    }
}
