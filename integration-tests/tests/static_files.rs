//! Static routes served by the real binary beside a real worker: files,
//! index, 304, compression, traversal refused, the worker never asked.

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
