//! deploy/: the container image and the Kubernetes manifests, checked the
//! way a cluster would take them. The Dockerfile is linted (hadolint,
//! checkov); every overlay is rendered (`kubectl kustomize`), validated
//! against the Kubernetes schemas, scanned by checkov, and the gate.yaml of
//! each ConfigMap passes `asgi-gate check`. The tools come from
//! `.venv-deploy` (scripts/setup-deploy-tools.sh); a missing tool fails.
//!
//! Then a pod simulation: the rendered Deployment's containers are started
//! with their exact commands and env (the real gate binary, the test app
//! under the venv's uvicorn), volumes as temp dirs laid out as the kubelet
//! lays them, probes run as the manifest says, traffic sent to the port the
//! Service targets, and the pod stopped in the kubelet's order while
//! requests are in flight. What a cluster would provide is substituted, and
//! only that: mount paths, the pod's ports (each pod gets free loopback
//! ports) and the Redis Service's address.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;
use serde::Deserialize;
use serde_yaml::Value;

// ---------------------------------------------------------------- tools

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// A tool from `.venv-deploy`: missing is a failure, never a skip.
fn tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("ASGI_GATE_DEPLOY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv-deploy"));
    let p = venv.join("bin").join(name);
    assert!(
        p.exists(),
        "{} missing: run scripts/setup-deploy-tools.sh (or set ASGI_GATE_DEPLOY_VENV)",
        p.display()
    );
    p
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Out {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// checkov, offline (it would fetch guideline links), as JSON; returns
/// (failed check ids with their resource, skipped checks).
fn checkov(file: &Path, framework: &str) -> (Vec<String>, Vec<serde_json::Value>) {
    let out = run(Command::new(tool("checkov"))
        .arg("-f")
        .arg(file)
        .args(["--framework", framework, "--skip-download", "-o", "json"])
        .current_dir(file.parent().unwrap()));
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov output is not JSON ({e}):\n{}\n{}",
            out.stdout, out.stderr
        )
    });
    let results = &v["results"];
    assert!(
        v["summary"]["parsing_errors"].as_u64() == Some(0),
        "checkov could not parse {}: {v}",
        file.display()
    );
    assert!(
        v["summary"]["passed"].as_u64().unwrap_or(0) > 10,
        "checkov ran almost no checks on {}: {}",
        file.display(),
        v["summary"]
    );
    let failed = results["failed_checks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| format!("{} {} ({})", c["check_id"], c["resource"], c["check_name"]))
        .collect();
    let skipped = results["skipped_checks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (failed, skipped)
}

// ---------------------------------------------------------------- image

#[test]
fn the_dockerfile_lints_clean_and_builds_what_the_readme_builds() {
    let dockerfile = deploy_dir().join("Dockerfile");
    let out = run(Command::new(tool("hadolint")).arg(&dockerfile));
    assert!(
        out.ok && out.stdout.trim().is_empty(),
        "hadolint findings:\n{}{}",
        out.stdout,
        out.stderr
    );
    let (failed, skipped) = checkov(&dockerfile, "dockerfile");
    assert!(
        failed.is_empty(),
        "checkov Dockerfile findings: {failed:#?}"
    );
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    for s in &skipped {
        let id = s["check_id"].as_str().unwrap_or_default();
        let justified = text.lines().any(|l| {
            l.trim()
                .strip_prefix(&format!("# checkov:skip={id}:"))
                .is_some_and(|why| why.trim().len() > 10)
        });
        assert!(justified, "checkov skip {id} has no reason inline");
    }
    for needed in [
        "cargo build --release --locked -p asgi-gate",
        "ENTRYPOINT [\"asgi-gate\"]",
        "USER 65532:65532",
    ] {
        assert!(text.contains(needed), "Dockerfile lacks `{needed}`");
    }
    let ignore = std::fs::read_to_string(workspace_root().join(".dockerignore")).unwrap();
    for excluded in ["target", ".git", ".venv"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore lets `{excluded}` into the build context"
        );
    }
}

/// The image's ENTRYPOINT, which the manifests' gate container runs.
fn entrypoint() -> Vec<String> {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("Dockerfile has an ENTRYPOINT");
    serde_json::from_str(line).expect("ENTRYPOINT in exec (JSON) form")
}

// ---------------------------------------------------------------- manifests

const OVERLAYS: &[&str] = &["base", "overlays/plain-sidecar", "overlays/replicas"];

/// The oldest Kubernetes each overlay is for (native sidecars: 1.29), and
/// the newest schema kubernetes-validate bundles.
fn versions(overlay: &str) -> [&'static str; 2] {
    match overlay {
        "overlays/plain-sidecar" => ["1.25.0", "1.37.0"],
        _ => ["1.29.0", "1.37.0"],
    }
}

struct Rendered {
    yaml: String,
    docs: Vec<Value>,
}

fn render(overlay: &str) -> Rendered {
    let dir = deploy_dir().join("kubernetes").join(overlay);
    let out = run(Command::new(tool("kubectl")).arg("kustomize").arg(&dir));
    assert!(
        out.ok,
        "kubectl kustomize {overlay} failed:\n{}",
        out.stderr
    );
    let docs = serde_yaml::Deserializer::from_str(&out.stdout)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .collect();
    Rendered {
        yaml: out.stdout,
        docs,
    }
}

impl Rendered {
    fn find(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
    }

    fn kinds(&self) -> Vec<String> {
        self.docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or("?"),
                    d["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    fn pod(&self) -> &Value {
        &self.find("Deployment", "asgi-gate")["spec"]["template"]["spec"]
    }

    /// The gate container: a native sidecar (init container) or a plain one.
    fn gate(&self) -> (&Value, bool) {
        let pod = self.pod();
        if let Some(c) = named(&pod["initContainers"], "gate") {
            return (c, true);
        }
        (
            named(&pod["containers"], "gate").expect("a container named gate"),
            false,
        )
    }
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_sequence()?.iter().find(|c| c["name"] == name)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn write_temp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    let dir = tempdir();
    for overlay in OVERLAYS {
        let r = render(overlay);
        let file = write_temp(dir.path(), &overlay.replace('/', "-"), &r.yaml);
        for v in versions(overlay) {
            let out = run(Command::new(tool("kubernetes-validate"))
                .args(["--strict", "-k", v])
                .arg(&file));
            assert!(
                out.ok,
                "{overlay} is not valid Kubernetes {v}:\n{}{}",
                out.stdout, out.stderr
            );
            assert!(
                !out.stdout.contains("WARN") && !out.stderr.contains("WARN"),
                "{overlay} against {v}: {}{}",
                out.stdout,
                out.stderr
            );
        }
    }
}

#[test]
fn the_pods_are_shaped_as_the_issue_lists() {
    for overlay in OVERLAYS {
        let r = render(overlay);
        let pod = r.pod();
        let (gate, native) = r.gate();
        assert_eq!(native, *overlay != "overlays/plain-sidecar", "{overlay}");
        if native {
            assert_eq!(gate["restartPolicy"], "Always", "{overlay}: native sidecar");
        } else {
            assert!(pod["initContainers"].is_null(), "{overlay}");
        }
        let app = named(&pod["containers"], "app").expect("an app container");
        // Hardened alike, both containers.
        for c in [gate, app] {
            let sc = &c["securityContext"];
            assert_eq!(
                sc["runAsNonRoot"],
                true,
                "{overlay} {:?}",
                c["name"].as_str()
            );
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
            assert!(c["resources"]["requests"]["cpu"].is_string());
            assert!(c["resources"]["limits"]["memory"].is_string());
        }
        // The Service exposes the gate's traffic port and nothing else.
        let svc = r.find("Service", "asgi-gate");
        let ports = svc["spec"]["ports"].as_sequence().unwrap();
        assert_eq!(ports.len(), 1, "{overlay}: {ports:?}");
        assert_eq!(ports[0]["targetPort"], "http");
        // The socket directory is in memory and shared by the two only.
        let sockets = named(&pod["volumes"], "sockets").unwrap();
        assert_eq!(sockets["emptyDir"]["medium"], "Memory");
        // Probes on the admin port; Prometheus told where to scrape.
        assert_eq!(gate["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(gate["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(gate["startupProbe"]["httpGet"]["path"], "/healthz");
        let ann = &r.find("Deployment", "asgi-gate")["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(ann["prometheus.io/port"], "9901");
        r.find("PodDisruptionBudget", "asgi-gate");
        // The grace period covers preStop, uvicorn's drain and the gate's.
        let cfg = gate_yaml(&r);
        let grace = secs_after(&cfg, "shutdown_grace:");
        let pre_stop: u64 = strs(&app["lifecycle"]["preStop"]["exec"]["command"])[1]
            .parse()
            .unwrap();
        let args = strs(&app["command"]);
        let i = args
            .iter()
            .position(|a| a == "--timeout-graceful-shutdown")
            .expect("uvicorn is given a graceful shutdown timeout");
        let uvicorn: u64 = args[i + 1].parse().unwrap();
        let period = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            pre_stop + uvicorn + grace < period,
            "{overlay}: preStop {pre_stop} + uvicorn {uvicorn} + shutdown_grace {grace} >= {period}"
        );
        if *overlay == "overlays/replicas" {
            for k in [
                "HorizontalPodAutoscaler/asgi-gate",
                "NetworkPolicy/asgi-gate",
                "Deployment/redis",
                "Service/redis",
            ] {
                assert!(r.kinds().contains(&k.to_string()), "{overlay} lacks {k}");
            }
            let np = r.find("NetworkPolicy", "asgi-gate");
            let rules = np["spec"]["ingress"].as_sequence().unwrap();
            assert_eq!(rules.len(), 1);
            assert_eq!(rules[0]["ports"][0]["port"], "http");
            assert!(cfg.contains("redis: redis://redis:6379/0"));
            assert!(cfg.contains("shared: true"));
        }
    }
}

fn gate_yaml(r: &Rendered) -> String {
    r.find("ConfigMap", "asgi-gate-config")["data"]["gate.yaml"]
        .as_str()
        .expect("the ConfigMap holds gate.yaml")
        .to_string()
}

/// `key: 20s` → 20.
fn secs_after(text: &str, key: &str) -> u64 {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .unwrap_or_else(|| panic!("no `{key}`"));
    line.trim()
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{key}{line}` is not whole seconds"))
}

#[test]
fn checkov_finds_nothing_in_the_rendered_manifests() {
    let dir = tempdir();
    for overlay in OVERLAYS {
        let r = render(overlay);
        let file = write_temp(
            dir.path(),
            &format!("{}.yaml", overlay.replace('/', "-")),
            &r.yaml,
        );
        let (failed, skipped) = checkov(&file, "kubernetes");
        assert!(
            failed.is_empty(),
            "{overlay}: checkov findings: {failed:#?}"
        );
        // Every skip is an annotation with its reason.
        for s in &skipped {
            let id = s["check_id"].as_str().unwrap_or_default();
            let justified = r.yaml.lines().any(|l| {
                l.split_once(&format!("{id}="))
                    .is_some_and(|(k, why)| k.contains("checkov.io/skip") && why.len() > 10)
            });
            assert!(justified, "{overlay}: checkov skip {id} has no reason");
        }
    }
}

#[tokio::test]
async fn asgi_gate_check_accepts_the_gate_yaml_of_every_configmap() {
    let dir = tempdir();
    for overlay in OVERLAYS {
        let r = render(overlay);
        let file = write_temp(dir.path(), "gate.yaml", &gate_yaml(&r));
        let (gate, _) = r.gate();
        let env = secret_env(gate);
        let out = run(Command::new(gate_bin())
            .arg("check")
            .arg("-c")
            .arg(&file)
            .envs(env));
        assert!(out.ok, "{overlay}: asgi-gate check:\n{}", out.stderr);
    }
}

// ---------------------------------------------------------------- pod simulation

const JWT_SECRET: &str = "deploy-test-secret-that-is-at-least-32-bytes-long";
const ADMIN_TOKEN: &str = "deploy-test-admin-token";

/// The test's Secret `asgi-gate`, by key.
fn secret(name: &str, key: &str) -> &'static str {
    match (name, key) {
        ("asgi-gate", "jwt-secret") => JWT_SECRET,
        ("asgi-gate", "admin-token") => ADMIN_TOKEN,
        _ => panic!("the manifests name a secret the docs do not: {name}/{key}"),
    }
}

/// A container's env, Secret references resolved.
fn secret_env(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .map(|e| {
                    let name = e["name"].as_str().unwrap().to_string();
                    if let Some(v) = e["value"].as_str() {
                        return (name, v.to_string());
                    }
                    let r = &e["valueFrom"]["secretKeyRef"];
                    let v = secret(r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
                    (name, v.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An HS256 token for JWT_SECRET, minted by the venv's PyJWT.
fn token(sub: &str, jti: &str) -> String {
    let out = run(Command::new(venv().join("bin").join("python")).args([
        "-c",
        "import jwt, sys, time\n\
         print(jwt.encode({'sub': sys.argv[2], 'jti': sys.argv[3], 'exp': int(time.time()) + 3600}, \
         sys.argv[1], algorithm='HS256'))",
        JWT_SECRET,
        sub,
        jti,
    ]));
    assert!(out.ok, "{}", out.stderr);
    out.stdout.trim().to_string()
}

/// One simulated pod: its volumes as temp dirs, its ports mapped to free
/// loopback ports, its containers' processes.
struct Pod {
    _dir: tempfile::TempDir,
    /// mountPath → the temp dir standing in for it.
    mounts: Vec<(String, PathBuf)>,
    /// containerPort → loopback port.
    ports: HashMap<u64, u16>,
    /// port name → containerPort.
    port_names: HashMap<String, u64>,
    gate: Option<Proc>,
    app: Option<Proc>,
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0);
    }

    async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What the kubelet does with a ConfigMap volume: files in a timestamped
/// dir, `..data` → that dir, and each key a symlink through `..data`.
fn configmap_volume(dir: &Path, files: &[(&str, &str)]) {
    let stamp = dir.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir_all(&stamp).unwrap();
    for (name, text) in files {
        std::fs::write(stamp.join(name), text).unwrap();
    }
    std::os::unix::fs::symlink(stamp.file_name().unwrap(), dir.join("..data")).unwrap();
    for (name, _) in files {
        std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
    }
}

impl Pod {
    /// Volumes and ports for the rendered pod; `services` maps a Service
    /// address the config names (`redis:6379`) to where it runs here.
    fn new(r: &Rendered, services: &[(&str, String)]) -> Pod {
        let dir = tempdir();
        let pod = r.pod();
        let (gate, _) = r.gate();
        let mut ports = HashMap::new();
        let mut port_names = HashMap::new();
        for p in gate["ports"].as_sequence().unwrap() {
            let n = p["containerPort"].as_u64().unwrap();
            ports.insert(n, unused_port());
            port_names.insert(p["name"].as_str().unwrap().to_string(), n);
        }
        let mut mounts = Vec::new();
        let mut config = gate_yaml(r);
        // Ports first: a cluster gives each pod its own IP, here loopback.
        for (container, local) in &ports {
            let from = format!("0.0.0.0:{container}");
            assert_eq!(config.matches(&from).count(), 1, "gate.yaml binds {from}");
            config = config.replace(&from, &format!("127.0.0.1:{local}"));
        }
        for (from, to) in services {
            assert!(config.contains(from), "gate.yaml names {from}");
            config = config.replace(from, to);
        }
        // Mounts of both containers; the socket dir gets a short path.
        let containers = pod["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .chain(pod["containers"].as_sequence().unwrap());
        for c in containers {
            for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
                let path = m["mountPath"].as_str().unwrap().to_string();
                if mounts.iter().any(|(p, _)| *p == path) {
                    continue;
                }
                let vol = named(&pod["volumes"], m["name"].as_str().unwrap()).unwrap();
                let local = dir.path().join(m["name"].as_str().unwrap());
                std::fs::create_dir_all(&local).unwrap();
                mounts.push((path, local.clone()));
                if !vol["configMap"].is_null() {
                    assert_eq!(vol["configMap"]["name"], "asgi-gate-config");
                    // Written after every substitution, below.
                    continue;
                }
                assert!(!vol["emptyDir"].is_null(), "unexpected volume {vol:?}");
            }
        }
        let p = Pod {
            _dir: dir,
            mounts,
            ports,
            port_names,
            gate: None,
            app: None,
        };
        config = p.local_paths(&config);
        let cm = p
            .mounts
            .iter()
            .find(|(m, _)| m == "/etc/asgi-gate")
            .expect("the ConfigMap is mounted at /etc/asgi-gate")
            .1
            .clone();
        configmap_volume(&cm, &[("gate.yaml", &config)]);
        p
    }

    /// Mount paths in a string replaced by their temp dirs, in one pass
    /// (a temp dir under /tmp must not be rewritten again by `/tmp`).
    fn local_paths(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (i, (m, _)) in self.mounts.iter().enumerate() {
            s = s.replace(&format!("{m}/"), &format!("\u{0}{i}\u{0}/"));
            if s == *m {
                s = format!("\u{0}{i}\u{0}");
            }
        }
        for (i, (_, local)) in self.mounts.iter().enumerate() {
            s = s.replace(&format!("\u{0}{i}\u{0}"), &local.display().to_string());
        }
        s
    }

    fn port(&self, p: &Value) -> u16 {
        let container = match p {
            Value::String(name) => self.port_names[name.as_str()],
            v => v.as_u64().unwrap(),
        };
        self.ports[&container]
    }

    fn spawn(&self, c: &Value, program: PathBuf, args: Vec<String>, cwd: &Path) -> Proc {
        let name = c["name"].as_str().unwrap();
        let log = self._dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args.iter().map(|a| self.local_paths(a)))
            .current_dir(cwd)
            .envs(secret_env(c))
            .env("PATH", path_with_venv())
            .env("PYTHONUNBUFFERED", "1")
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        Proc {
            child: cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}")),
            log,
        }
    }

    /// The gate container: the image's ENTRYPOINT (the real binary) + args.
    fn start_gate(&mut self, c: &Value) {
        assert!(
            c["command"].is_null(),
            "the gate runs the image's ENTRYPOINT"
        );
        let ep = entrypoint();
        assert_eq!(ep, ["asgi-gate"]);
        let args = strs(&c["args"]);
        self.gate = Some(self.spawn(c, gate_bin(), args, &workspace_root()));
    }

    /// The app container: its command, with the test app as `app:app`.
    fn start_app(&mut self, c: &Value) {
        let mut cmd = strs(&c["command"]);
        cmd.extend(strs(&c["args"]));
        let program = venv().join("bin").join(cmd.remove(0));
        self.app = Some(self.spawn(c, program, cmd, &app_dir()));
    }

    /// One probe, as the kubelet runs it.
    async fn probe(&self, p: &Value) -> bool {
        if !p["httpGet"].is_null() {
            let port = self.port(&p["httpGet"]["port"]);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let path = p["httpGet"]["path"].as_str().unwrap();
            let r = req(Method::GET, addr, path).body(Full::default()).unwrap();
            return matches!(send_h1(addr, r).await, Ok(r) if (200..400).contains(&r.status.as_u16()));
        }
        let cmd = strs(&p["exec"]["command"]);
        assert!(!cmd.is_empty(), "a probe is httpGet or exec: {p:?}");
        Command::new(&cmd[0])
            .args(cmd[1..].iter().map(|a| self.local_paths(a)))
            .env("PATH", path_with_venv())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Probes until it passes, for at most failureThreshold × periodSeconds.
    async fn wait_probe(&self, what: &str, p: &Value) {
        let period = p["periodSeconds"].as_u64().unwrap_or(10);
        let tries = p["failureThreshold"].as_u64().unwrap_or(3);
        let deadline =
            Instant::now() + Duration::from_secs(period * tries).max(Duration::from_secs(30));
        while !self.probe(p).await {
            assert!(
                Instant::now() < deadline,
                "{what} probe never passed\ngate log:\n{}\napp log:\n{}",
                self.gate.as_ref().map(Proc::log).unwrap_or_default(),
                self.app.as_ref().map(Proc::log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the pod in the kubelet's order and waits until it is Ready.
    async fn start(&mut self, r: &Rendered) {
        let (gate, native) = r.gate();
        let app = named(&r.pod()["containers"], "app").unwrap();
        self.start_gate(gate);
        if native {
            // A native sidecar's startup probe passes before the app starts.
            self.wait_probe("gate startup", &gate["startupProbe"]).await;
        }
        self.start_app(app);
        self.wait_probe("app readiness", &app["readinessProbe"])
            .await;
        self.wait_probe("gate readiness", &gate["readinessProbe"])
            .await;
        self.wait_probe("gate liveness", &gate["livenessProbe"])
            .await;
        self.wait_probe("app liveness", &app["livenessProbe"]).await;
    }

    /// Where the Service sends traffic: its targetPort on this pod.
    fn service_addr(&self, r: &Rendered) -> SocketAddr {
        let svc = r.find("Service", "asgi-gate");
        let target = &svc["spec"]["ports"][0]["targetPort"];
        ([127, 0, 0, 1], self.port(target)).into()
    }

    fn admin_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.ports[&self.port_names["admin"]]).into()
    }

    fn logs(&self) -> String {
        format!(
            "gate log:\n{}\napp log:\n{}",
            self.gate.as_ref().map(Proc::log).unwrap_or_default(),
            self.app.as_ref().map(Proc::log).unwrap_or_default()
        )
    }

    /// Deletion as the kubelet does it for a native sidecar, first step:
    /// the app's preStop hook, while traffic still arrives (`during` runs
    /// until the hook has ended).
    async fn pre_stop<F: std::future::Future<Output = ()>>(
        &mut self,
        r: &Rendered,
        during: impl FnOnce(tokio::sync::watch::Receiver<bool>) -> F,
    ) {
        let app = named(&r.pod()["containers"], "app").unwrap();
        let pre_stop = strs(&app["lifecycle"]["preStop"]["exec"]["command"]);
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let traffic = during(done_rx);
        let hook = async {
            let st = tokio::process::Command::new(&pre_stop[0])
                .args(&pre_stop[1..])
                .status()
                .await
                .unwrap();
            assert!(st.success(), "preStop {pre_stop:?}");
            let _ = done_tx.send(true);
        };
        tokio::join!(traffic, hook);
    }

    /// Then SIGTERM to the app and, once it has exited, to the gate; both
    /// must exit 0 within the grace period.
    async fn terminate(&mut self, r: &Rendered) {
        let period = r.pod()["terminationGracePeriodSeconds"].as_u64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(period);
        let a = self.app.as_mut().unwrap();
        a.signal(libc::SIGTERM);
        let st = a.wait_exit(deadline - Instant::now()).await;
        assert!(
            st.is_some(),
            "uvicorn still running after SIGTERM\n{}",
            self.logs()
        );
        let g = self.gate.as_mut().unwrap();
        g.signal(libc::SIGTERM);
        let st = g
            .wait_exit(deadline.saturating_duration_since(Instant::now()))
            .await;
        assert_eq!(
            st.and_then(|s| s.code()),
            Some(0),
            "the gate did not exit 0 within the grace period\n{}",
            self.logs()
        );
    }
}

fn path_with_venv() -> String {
    format!(
        "{}:{}",
        venv().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

async fn call(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<Resp, BoxError> {
    let mut b = req(Method::GET, addr, path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send_h1(addr, b.body(Full::default()).unwrap()).await
}

async fn revoke(pod: &Pod, jti: &str) -> Resp {
    let body = serde_json::json!({"jti": jti, "exp": unix_now() + 3600}).to_string();
    let r = req(Method::POST, pod.admin_addr(), "/revocations")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send_h1(pod.admin_addr(), r).await.unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Through the Service's port: a public route, a JWT-protected one with and
/// without a token, the claim forwarded to the app.
async fn serves_as_configured(pod: &Pod, r: &Rendered, tok: &str) {
    let addr = pod.service_addr(r);
    let hello = call(addr, "/hello", None).await.unwrap();
    assert_eq!(hello.status, 200, "{}", pod.logs());
    let anon = call(addr, "/api/whoami", None).await.unwrap();
    assert_eq!(anon.status, 401);
    let me = call(addr, "/api/whoami", Some(tok)).await.unwrap();
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["sub"], "alice");
}

/// Slow requests in flight across the app's SIGTERM, and steady traffic
/// during the preStop sleep: none of them may fail.
async fn stop_under_load(pod: &mut Pod, r: &Rendered) {
    let addr = pod.service_addr(r);
    let during = |mut done: tokio::sync::watch::Receiver<bool>| async move {
        let mut sent = 0;
        while !*done.borrow() {
            let r = call(addr, "/hello", None).await;
            assert!(
                matches!(&r, Ok(r) if r.status == 200),
                "a request during preStop failed: {:?}",
                r.map(|r| r.status)
            );
            sent += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = done.changed() => {}
            }
        }
        assert!(sent > 10, "only {sent} requests during preStop");
    };
    pod.pre_stop(r, during).await;
    // In flight when the app is told to stop: they end in its drain.
    let slow: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { call(addr, "/slow?ms=2000", None).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sigterm = Instant::now();
    pod.terminate(r).await;
    for s in slow {
        let r = s.await.unwrap();
        assert!(
            matches!(&r, Ok(r) if r.status == 200),
            "an in-flight request failed in the drain: {:?}\n{}",
            r.map(|r| r.status),
            pod.logs()
        );
    }
    // The app waited for them: the requests really spanned its SIGTERM.
    assert!(sigterm.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test]
async fn base_pod_starts_serves_and_drains_as_the_kubelet_runs_it() {
    let r = render("base");
    let mut pod = Pod::new(&r, &[]);
    pod.start(&r).await;
    serves_as_configured(&pod, &r, &token("alice", "base-1")).await;
    stop_under_load(&mut pod, &r).await;
}

#[tokio::test]
async fn replicas_pods_share_revocations_through_redis_and_drain() {
    let r = render("overlays/replicas");
    let redis = Redis::start();
    let here = format!("127.0.0.1:{}", redis.port());
    let mut a = Pod::new(&r, &[("redis:6379", here.clone())]);
    let mut b = Pod::new(&r, &[("redis:6379", here)]);
    a.start(&r).await;
    b.start(&r).await;
    let tok = token("alice", "replicas-1");
    serves_as_configured(&a, &r, &tok).await;
    serves_as_configured(&b, &r, &tok).await;
    // The shared limit's bucket lives in Redis, one for both pods (it
    // expires once full again, burst/rate = 2 s).
    let keys = redis.cli(&["--scan", "--pattern", "asgi-gate:rl:*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");

    // Revoked on pod A's admin port, refused by pod B.
    let rv = revoke(&a, "replicas-1").await;
    assert_eq!(rv.status, 201, "{}", rv.text());
    let b_addr = b.service_addr(&r);
    let t = tok.as_str();
    let refused = eventually(Duration::from_secs(3), || async move {
        matches!(call(b_addr, "/api/whoami", Some(t)).await, Ok(r) if r.status == 401)
    })
    .await;
    assert!(
        refused,
        "pod B still accepts a token revoked on pod A\n{}",
        b.logs()
    );
    stop_under_load(&mut a, &r).await;
    stop_under_load(&mut b, &r).await;
}
