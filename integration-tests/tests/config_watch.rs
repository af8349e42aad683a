//! `asgi-gate --watch` with files laid out as the kubelet lays out a
//! ConfigMap or Secret volume: each key a symlink through `..data`, and an
//! update a new timestamped directory swapped in by renaming a `..data_tmp`
//! symlink over `..data` (the file named in the config never changes
//! itself, which is why the gate watches directories). Real gate binary,
//! real uvicorn worker.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// The kubelet's atomic writer for one volume directory.
struct Volume {
    dir: PathBuf,
    generation: u32,
}

impl Volume {
    fn new(dir: &Path) -> Volume {
        std::fs::create_dir_all(dir).unwrap();
        Volume {
            dir: dir.to_path_buf(),
            generation: 0,
        }
    }

    /// Publishes `files` as the volume's new content, as the kubelet does.
    fn publish(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let stamp = format!(
            "..2026_12_04_00_00_{:02}.{:09}",
            self.generation, self.generation
        );
        let ts = self.dir.join(&stamp);
        std::fs::create_dir(&ts).unwrap();
        for (name, bytes) in files {
            std::fs::write(ts.join(name), bytes).unwrap();
        }
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        // Key links are made once; a plain file of that name (the test
        // harness wrote the first config) is replaced by its link.
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                continue;
            }
            let tmp = self.dir.join(format!("{name}.tmp"));
            std::os::unix::fs::symlink(Path::new("..data").join(name), &tmp).unwrap();
            std::fs::rename(&tmp, &link).unwrap();
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

/// `asgi_gate_config_reloads_total{result=...}` (0 before the first).
async fn reloads(g: &Gate, result: &str) -> u64 {
    let m = get(g.admin, "/metrics").await.text();
    let prefix = format!("asgi_gate_config_reloads_total{{result=\"{result}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn config(sock: &Path, routes: &str) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{}\"]\nroutes:\n{routes}  - path: /{{*rest}}\n    upstream: app\n",
        sock.display()
    )
}

const POST_ONLY: &str = "  - path: /blocked\n    methods: [POST]\n    upstream: app\n";

/// Longer than the watcher's debounce, so "nothing happened" is meaningful.
const SETTLE: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn a_configmap_update_is_applied_and_a_bad_one_refused_with_its_position() {
    let w = Worker::start().await;
    let first = config(&w.sock, "");
    let g = Gate::start_with(&first, &["--watch"], &[]).await;
    let mut vol = Volume::new(g.dir.path());

    // The same bytes behind a new `..data`: nothing to reload.
    vol.publish(&[("gate.yaml", first.as_bytes())]);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(reloads(&g, "ok").await + reloads(&g, "failed").await, 0);
    assert_eq!(get(g.addr, "/blocked").await.status, 404, "the app's 404");

    // A new ConfigMap version: applied, once.
    let second = config(&w.sock, POST_ONLY);
    vol.publish(&[("gate.yaml", second.as_bytes())]);
    let applied = eventually(Duration::from_secs(5), || async {
        get(g.addr, "/blocked").await.status == 405
    })
    .await;
    assert!(
        applied,
        "the swapped ConfigMap was not applied:\n{}",
        g.log()
    );
    tokio::time::sleep(SETTLE).await;
    assert_eq!(reloads(&g, "ok").await, 1);

    // A bad one: every error logged with file:line:col, the old one serves.
    let bad = format!("{second}bogus_top_level: 1\n").replace(
        "  - path: /{*rest}\n    upstream: app\n",
        "  - path: /{*rest}\n    upstream: nowhere\n",
    );
    let pos = |needle: &str| {
        let (i, l) = bad
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap();
        let col = l.find(needle).unwrap() + 1;
        format!("{}:{}:{col}:", g.config_path.display(), i + 1)
    };
    let (key, upstream) = (pos("bogus_top_level"), pos("nowhere"));
    vol.publish(&[("gate.yaml", bad.as_bytes())]);
    let logged = eventually(Duration::from_secs(5), || async {
        let log = g.stderr();
        [&key, &upstream].iter().all(|p| {
            log.lines()
                .any(|l| l.contains("reload refused") && l.contains(p.as_str()))
        })
    })
    .await;
    assert!(
        logged,
        "no `{key}` and `{upstream}` refusals:\n{}",
        g.stderr()
    );
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        reloads(&g, "failed").await,
        1,
        "a refused config is tried once"
    );
    assert_eq!(
        get(g.addr, "/blocked").await.status,
        405,
        "the old config serves"
    );
    assert_eq!(get(g.addr, "/hello").await.status, 200);

    // Fixed: applied again.
    vol.publish(&[("gate.yaml", first.as_bytes())]);
    let applied = eventually(Duration::from_secs(5), || async {
        get(g.addr, "/blocked").await.status == 404
    })
    .await;
    assert!(applied, "the fixed ConfigMap was not applied:\n{}", g.log());
    assert_eq!(reloads(&g, "ok").await, 2);
}

#[tokio::test]
async fn without_watch_a_configmap_swap_changes_nothing() {
    let w = Worker::start().await;
    let first = config(&w.sock, "");
    let g = Gate::start(&first).await;
    let mut vol = Volume::new(g.dir.path());
    vol.publish(&[("gate.yaml", config(&w.sock, POST_ONLY).as_bytes())]);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(get(g.addr, "/blocked").await.status, 404);
    assert_eq!(reloads(&g, "ok").await, 0);
}

// ---------------------------------------------------------------- TLS from a Secret

/// Accepts any server certificate (the test reads which one it got) but
/// checks handshake signatures.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate the gate's TLS listener presents now.
async fn served_cert(addr: SocketAddr) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the gate");
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

/// A fresh self-signed certificate and key (openssl CLI), as PEM bytes.
fn self_signed(dir: &Path, cn: &str) -> (Vec<u8>, Vec<u8>) {
    let (c, k) = (dir.join("new.crt"), dir.join("new.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .output()
        .expect("the openssl CLI (Debian package `openssl`) makes the test certificates");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (std::fs::read(&c).unwrap(), std::fs::read(&k).unwrap())
}

fn der(pem: &[u8]) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem)
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn a_renewed_certificate_in_a_secret_volume_is_served_and_a_broken_one_is_not() {
    let w = Worker::start().await;
    let tmp = tempdir();
    let mut secret = Volume::new(&tmp.path().join("tls"));
    let (cert1, key1) = self_signed(tmp.path(), "gate-one");
    secret.publish(&[("tls.crt", &cert1), ("tls.key", &key1)]);
    let yaml = format!(
        "listen:\n  - address: 127.0.0.1:0\n  - address: 127.0.0.1:0\n    tls: {{ cert: \"{0}/tls.crt\", key: \"{0}/tls.key\" }}\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{1}\"]\n\
         routes:\n  - path: /{{*rest}}\n    upstream: app\n",
        secret.dir.display(),
        w.sock.display()
    );
    let g = Gate::start_with(&yaml, &["--watch"], &[]).await;
    let tls = g.tls[0];
    assert_eq!(served_cert(tls).await, der(&cert1));

    // cert-manager renews the Secret: the new certificate is served.
    let (cert2, key2) = self_signed(tmp.path(), "gate-two");
    secret.publish(&[("tls.crt", &cert2), ("tls.key", &key2)]);
    let renewed = eventually(Duration::from_secs(5), || async {
        served_cert(tls).await == der(&cert2)
    })
    .await;
    assert!(
        renewed,
        "the renewed certificate is not served:\n{}",
        g.log()
    );

    // A key that does not parse: logged, the current certificate stays.
    secret.publish(&[("tls.crt", &cert2), ("tls.key", b"not a key")]);
    let logged = eventually(Duration::from_secs(5), || async {
        g.stderr()
            .contains("the previous certificate keeps serving")
    })
    .await;
    assert!(logged, "{}", g.stderr());
    assert_eq!(served_cert(tls).await, der(&cert2));
}
