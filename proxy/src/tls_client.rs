//! Outbound HTTP GETs for small documents (a `jwks_url`), over `http://` or
//! `https://` with rustls (aws-lc). The server's certificate is always
//! verified, against the CA bundle in `SSL_CERT_FILE` if set, else the
//! system's. One connection per fetch: they are minutes apart. A leaf: it
//! names no other module.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Where Debian/Ubuntu, RHEL/Fedora, Alpine and distroless keep the bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The CA certificates servers are verified against.
fn roots() -> Result<RootCertStore, String> {
    let path = match std::env::var_os("SSL_CERT_FILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => SYSTEM_BUNDLES
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .ok_or("no CA bundle found (set SSL_CERT_FILE)")?,
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "CA bundle {}: no usable certificate",
            path.display()
        ));
    }
    Ok(store)
}

pub struct Fetched {
    pub body: Bytes,
    pub cache_control: Option<String>,
}

/// GET `url`, the body cut at `max_bytes`, the whole exchange within `timeout`.
pub async fn get(url: &str, max_bytes: usize, timeout: Duration) -> Result<Fetched, String> {
    tokio::time::timeout(timeout, fetch(url, max_bytes))
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn fetch(url: &str, max_bytes: usize) -> Result<Fetched, String> {
    let uri: http::Uri = url.parse().map_err(|_| "invalid URL".to_string())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must start with https:// or http://".into()),
    };
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    // An IPv6 literal comes bracketed in the URL.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    if !tls {
        return exchange(tcp, req, max_bytes).await;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots()?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(bare).map_err(|e| format!("server name {host}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    exchange(stream, req, max_bytes).await
}

async fn exchange<IO>(
    io: IO,
    req: http::Request<Empty<Bytes>>,
    max_bytes: usize,
) -> Result<Fetched, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        conn.abort();
        return Err(format!("status {}", resp.status()));
    }
    let cache_control = resp
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(resp.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    conn.abort();
    Ok(Fetched {
        body,
        cache_control,
    })
}
