//! Loading real YAML: the design example, and one test per kind of error with
//! its exact line and column.

use std::path::Path;
use std::time::Duration;

use asgi_gate_config::{
    load, load_str, Coding, Config, ConfigErrors, KeySource, LoadOptions, RateKey, RouteCors,
    RouteTarget,
};

const DESIGN_EXAMPLE: &str = include_str!("fixtures/design-example.yaml");

/// A temp dir with the files the design example refers to.
fn files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["tls.crt", "tls.key", "key.pem", "jwks.json"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    std::fs::create_dir(dir.path().join("static")).unwrap();
    std::fs::write(dir.path().join("static/index.html"), "<p>hi</p>").unwrap();
    dir
}

fn env(name: &str) -> Option<String> {
    match name {
        "JWT_SECRET" => Some("s3cret-value-never-printed".to_string()),
        "GATE_ADMIN_TOKEN" => Some("admin-token".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn load_with(text: &str, opts: LoadOptions) -> Result<Config, ConfigErrors> {
    load_str(text, Path::new("gate.yaml"), opts, &env)
}

/// `(line, col, message)` of every error.
fn errors_opts(text: &str, opts: LoadOptions) -> Vec<(usize, usize, String)> {
    match load_with(text, opts) {
        Ok(_) => panic!("expected errors, config loaded:\n{text}"),
        Err(e) => {
            e.0.into_iter()
                .map(|e| (e.line, e.col, e.message))
                .collect()
        }
    }
}

fn errors(text: &str) -> Vec<(usize, usize, String)> {
    errors_opts(text, LoadOptions::default())
}

/// Exactly one error, at `line:col`, whose message contains `needle`.
#[track_caller]
fn one_error(text: &str, line: usize, col: usize, needle: &str) {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let (l, c, m) = &errs[0];
    assert_eq!((*l, *c), (line, col), "position of `{m}`");
    assert!(m.contains(needle), "`{m}` does not contain `{needle}`");
    assert!(!m.contains('\n'));
}

#[test]
fn design_example_loads() {
    let dir = files();
    let text = DESIGN_EXAMPLE.replace("{TMP}", &dir.path().display().to_string());
    let c = load_with(&text, LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(c.source, Path::new("gate.yaml"));
    assert_eq!(c.threads, 1);
    assert_eq!(c.listen.len(), 2);
    assert!(c.listen[1].tls.is_some());
    assert_eq!(c.admin.address.to_string(), "127.0.0.1:9901");
    assert_eq!(c.admin.token.as_deref(), Some("admin-token"));
    assert_eq!(c.trusted_proxies[0].to_string(), "10.0.0.0/8");

    let app = &c.upstreams["app"];
    assert_eq!(app.sockets, vec![Path::new("/run/app/app.sock")]);
    assert_eq!(app.pool.max_idle, 64);
    assert_eq!(app.pool.idle_timeout, Duration::from_secs(4));
    assert_eq!(app.health_check.as_ref().unwrap().path, "/healthz");

    let auth = &c.auth["default"];
    assert_eq!(auth.algorithms, vec!["HS256"]);
    assert!(matches!(&auth.key, KeySource::Secret { env, value }
        if env == "JWT_SECRET" && value == "s3cret-value-never-printed"));
    assert_eq!(auth.audience, vec!["my-api"]);
    assert_eq!(auth.leeway, Duration::from_secs(30));
    let fc: Vec<(&str, &str)> = auth
        .forward_claims
        .iter()
        .map(|(c, h)| (c.as_str(), h.as_str()))
        .collect();
    assert_eq!(
        fc,
        vec![("sub", "x-auth-subject"), ("scope", "x-auth-scope")]
    );

    let rev = c.revocation.as_ref().unwrap();
    assert_eq!(rev.redis.as_deref(), Some("redis://redis:6379/0"));

    assert_eq!(c.rate_limits.len(), 4);
    let per_ip = &c.rate_limits["per_ip"];
    assert_eq!(per_ip.key, RateKey::ClientIp);
    assert_eq!((per_ip.rate.count, per_ip.burst), (100, 200));
    assert_eq!(c.rate_limits["per_user"].key, RateKey::Claim("sub".into()));
    let per_key = &c.rate_limits["per_key"];
    assert!(matches!(&per_key.key, RateKey::Header(h) if h == "x-api-key"));
    assert_eq!(per_key.rate.per, Duration::from_secs(60));
    assert_eq!(per_key.burst, 1000);
    assert!(per_key.headers);
    assert!(c.rate_limits["global_user"].shared);
    assert_eq!(per_ip.max_keys, 1_000_000);

    let comp = c.compression.as_ref().unwrap();
    assert_eq!(comp.algorithms, vec![Coding::Br, Coding::Gzip]);
    assert_eq!(comp.levels[&Coding::Gzip], 6);
    assert_eq!(comp.levels[&Coding::Zstd], 3);

    let cors = c.cors.as_ref().unwrap();
    assert!(cors.allow_credentials);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
    assert_eq!(c.allowed_hosts.as_ref().unwrap().len(), 2);
    assert!(!c.https_redirect);
    let sh = c.security_headers.as_ref().unwrap();
    assert_eq!(sh.hsts, Some(Duration::from_secs(365 * 86400)));
    assert_eq!(sh.remove.len(), 2);
    assert_eq!(c.limits.max_body, 10 * 1024 * 1024);
    assert_eq!(c.limits.max_header_bytes, 16 * 1024);
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));

    assert_eq!(c.routes.len(), 5);
    assert_eq!(c.routes[0].rate_limits, vec!["per_ip"]);
    assert_eq!(c.routes[1].methods.as_ref().unwrap().len(), 4);
    assert_eq!(c.routes[1].scopes, vec!["api"]);
    let ws = c.routes[2].websocket.as_ref().unwrap();
    assert_eq!(ws.max_message, Some(1024 * 1024));
    assert_eq!(ws.idle_timeout, Some(Duration::from_secs(300)));
    assert!(matches!(&c.routes[3].target, RouteTarget::Static(s)
        if s.index.as_deref() == Some("index.html")));
    assert_eq!(c.routes[4].compression, Some(false));
    assert!(matches!(c.routes[4].cors, RouteCors::Inherit));
}

#[test]
fn design_example_supervised_rejects_app_sockets() {
    let dir = files();
    let text = DESIGN_EXAMPLE.replace("{TMP}", &dir.path().display().to_string());
    let errs = errors_opts(&text, LoadOptions { supervised: true });
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1), (14, 5));
    assert!(errs[0]
        .2
        .contains("the supervisor provides upstreams.app sockets"));
}

const MINIMAL: &str = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
routes:
  - path: /{*rest}
    upstream: app
";

#[test]
fn minimal_loads_with_defaults() {
    let c = load_with(MINIMAL, LoadOptions::default()).unwrap();
    assert_eq!(c.threads, 1);
    assert_eq!(c.admin.address.to_string(), "127.0.0.1:9901");
    let app = &c.upstreams["app"];
    assert_eq!(app.pool.max_connections, 256);
    assert_eq!(app.connect_timeout, Duration::from_secs(1));
    assert_eq!(app.read_timeout, Duration::from_secs(30));
    assert!(c.compression.is_none());
    assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.body_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.max_concurrent_streams, 100);
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.max_connections_per_ip, 256);
    assert_eq!(c.limits.websocket_idle_timeout, Duration::from_secs(600));
}

#[test]
fn slow_client_limits_are_checked_at_their_values() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
limits:
  body_timeout: 0s
  max_concurrent_streams: 0
  max_connections: 0
  max_connections_per_ip: 0
  websocket_idle_timeout: 0s
";
    let errs = errors(text);
    let at: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        at,
        [(4, 17), (5, 27), (6, 20), (7, 27), (8, 27)],
        "{errs:#?}"
    );
    assert!(errs[0].2.contains("body_timeout must be greater than zero"));
    assert!(errs[1]
        .2
        .contains("max_concurrent_streams must be between 1"));
    assert!(errs[4]
        .2
        .contains("websocket_idle_timeout must be greater than zero"));
    let ok = "\
listen:
  - address: 127.0.0.1:8080
limits: { body_timeout: 2s, max_concurrent_streams: 8, max_connections: 50, max_connections_per_ip: 5, websocket_idle_timeout: 1m }
";
    let c = load_with(ok, LoadOptions::default()).unwrap();
    assert_eq!(c.limits.body_timeout, Duration::from_secs(2));
    assert_eq!(c.limits.max_concurrent_streams, 8);
    assert_eq!(c.limits.max_connections, 50);
    assert_eq!(c.limits.max_connections_per_ip, 5);
    assert_eq!(c.limits.websocket_idle_timeout, Duration::from_secs(60));
}

#[test]
fn supervised_mode_adds_app() {
    let text = "\
listen: [{address: 127.0.0.1:8000}]
compression: true
routes:
  - path: /
    upstream: app
";
    let c = load_with(text, LoadOptions { supervised: true }).unwrap();
    assert!(c.upstreams["app"].sockets.is_empty());
    assert_eq!(c.upstreams["app"].pool.max_idle, 64);
    assert_eq!(c.compression.unwrap().levels[&Coding::Br], 4);
    // Without supervision, `app` is unknown.
    one_error(
        text,
        5,
        15,
        "unknown upstream `app`; no upstreams are defined",
    );
}

#[test]
fn supervised_app_without_sockets_is_fine_but_not_unsupervised() {
    let text = "\
listen: [{address: 127.0.0.1:8000}]
upstreams:
  app:
    read_timeout: 60s
";
    let c = load_with(text, LoadOptions { supervised: true }).unwrap();
    assert_eq!(c.upstreams["app"].read_timeout, Duration::from_secs(60));
    one_error(text, 4, 5, "upstream `app` has no `sockets`");
}

#[test]
fn syntax_error() {
    let text = "listen:\n  - address: 127.0.0.1:8080\nroutes: [\n  - path: /\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].2.starts_with("YAML syntax error"), "{}", errs[0].2);
    assert_eq!(errs[0].0, 4);
    let text = "listen:\n  - address: 127.0.0.1:8080\n bad: indent\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].0, 3);
}

#[test]
fn duplicate_key() {
    let text = format!("{MINIMAL}listen:\n  - address: 127.0.0.1:8081\n");
    one_error(&text, 9, 1, "duplicate key `listen`");
}

#[test]
fn empty_file() {
    one_error("", 1, 1, "empty");
    one_error("# nothing\n", 1, 1, "empty");
    one_error("- a\n", 1, 1, "top level must be a mapping");
}

#[test]
fn unknown_top_level_key() {
    let text = format!("{MINIMAL}listn: x\n");
    one_error(&text, 9, 1, "unknown top-level key `listn`");
}

#[test]
fn unknown_field_in_second_route() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
routes:
  - path: /a
    upstream: app
  - path: /b
    upstream: app
    metods: [GET]
";
    one_error(text, 11, 5, "unknown key `metods`; valid keys here:");
}

#[test]
fn bad_duration_at_value() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
    pool: { max_idle: 8, idle_timeout: 5x }
";
    one_error(
        text,
        6,
        40,
        "invalid duration `5x`: expected a number followed by ms, s, m, h or d",
    );
}

#[test]
fn bad_size_and_type() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
limits: { max_body: 10MB, max_header_bytes: 16kib }
threads: two
";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1), (3, 45));
    assert!(errs[0].2.starts_with("invalid size `16kib`"));
    assert_eq!((errs[1].0, errs[1].1), (4, 10));
    assert_eq!(errs[1].2, "expected a whole number, found string \"two\"");
}

#[test]
fn unknown_upstream_name() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
routes:
  - path: /{*rest}
    upstream: ap
";
    one_error(
        text,
        8,
        15,
        "unknown upstream `ap`; defined upstreams: `app`",
    );
}

#[test]
fn overlapping_routes() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
routes:
  - path: /users/{id}
    upstream: app
  - path: /users/{name}
    upstream: app
";
    one_error(
        text,
        9,
        11,
        "route path `/users/{name}` conflicts with `/users/{id}` at line 7",
    );
}

#[test]
fn same_path_needs_disjoint_methods() {
    let base = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
routes:
  - path: /items
    methods: [GET, POST]
    upstream: app
";
    let ok = format!("{base}  - path: /items\n    methods: [PUT, DELETE]\n    upstream: app\n");
    assert!(load_with(&ok, LoadOptions::default()).is_ok());
    let clash = format!("{base}  - path: /items\n    methods: [PUT, POST]\n    upstream: app\n");
    one_error(
        &clash,
        11,
        20,
        "POST /items is already routed by the route at line 7",
    );
    let all = format!("{base}  - path: /items\n    upstream: app\n");
    one_error(&all, 10, 11, "path `/items` is also routed at line 7");
}

#[test]
fn invalid_route_syntax_and_method() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
routes:
  - path: /a/{*rest}/b
    upstream: app
  - path: /c
    methods: [get]
    upstream: app
";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1), (7, 11));
    assert!(errs[0].2.contains("invalid route path"));
    assert_eq!((errs[1].0, errs[1].1), (10, 15));
    assert!(errs[1].2.contains("upper case: `GET`"));
}

const AUTH_BASE: &str = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
auth:
  default:
";

#[test]
fn missing_env_var_never_prints_values() {
    let text = format!("{AUTH_BASE}    algorithms: [HS256]\n    secret_env: NOPE\n");
    one_error(
        &text,
        9,
        17,
        "environment variable `NOPE` (auth.default.secret_env) is not set",
    );
    let text = format!("{AUTH_BASE}    algorithms: [HS256]\n    secret_env: EMPTY\n");
    one_error(&text, 9, 17, "is empty");
    let text = format!("{MINIMAL}admin: {{ token_env: MISSING_TOKEN }}\n");
    one_error(&text, 9, 21, "`MISSING_TOKEN` (admin.token_env) is not set");
    // A failing config must never echo a secret that was read.
    let text =
        format!("{AUTH_BASE}    algorithms: [HS256]\n    secret_env: JWT_SECRET\n    leeway: 1x\n");
    let e = load_with(&text, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(!e.contains("s3cret"));
}

#[test]
fn alg_none_is_refused() {
    let text = format!("{AUTH_BASE}    algorithms: [HS256, None]\n    secret_env: JWT_SECRET\n");
    one_error(&text, 8, 25, "algorithm `none`");
}

#[test]
fn hs_rs_mix_is_algorithm_confusion() {
    let text = format!("{AUTH_BASE}    algorithms: [HS256, RS256]\n    secret_env: JWT_SECRET\n");
    one_error(&text, 8, 17, "algorithm confusion");
}

#[test]
fn key_source_must_fit_algorithms() {
    let dir = files();
    let key = dir.path().join("key.pem").display().to_string();
    let text = format!("{AUTH_BASE}    algorithms: [RS256]\n    secret_env: JWT_SECRET\n");
    one_error(&text, 9, 5, "RS256 verifies with a public key");
    let text = format!("{AUTH_BASE}    algorithms: [HS512]\n    public_key_file: {key}\n");
    one_error(&text, 9, 5, "HS512 verifies with a shared secret");
    let text = format!("{AUTH_BASE}    algorithms: [RS256]\n    public_key_file: {key}\n    jwks_url: https://x/jwks\n");
    one_error(&text, 10, 5, "keep only one key source");
    let text = format!("{AUTH_BASE}    algorithms: [RS256, ES256]\n    public_key_file: {key}\n");
    one_error(&text, 8, 17, "one public_key_file cannot verify");
    let text = format!("{AUTH_BASE}    algorithms: [ES256]\n    public_key_file: {key}\n");
    assert!(load_with(&text, LoadOptions::default()).is_ok());
}

#[test]
fn missing_files() {
    let text =
        format!("{AUTH_BASE}    algorithms: [RS256]\n    public_key_file: /nonexistent/key.pem\n");
    one_error(&text, 9, 22, "file `/nonexistent/key.pem` does not exist");
    let text = "\
listen:
  - address: 0.0.0.0:8443
    tls: { cert: /nonexistent/c.pem, key: /nonexistent/k.pem }
routes:
  - path: /s/{*p}
    static: { dir: /nonexistent/static }
";
    let errs = errors(text);
    let pos: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(pos, vec![(3, 18), (3, 43), (6, 20)], "{errs:#?}");
}

#[test]
fn claim_rate_limit_needs_auth() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
rate_limits:
  per_ip: { key: client_ip, rate: 100/s }
  per_user: { key: \"claim:sub\", rate: 20/s }
routes:
  - path: /{*rest}
    upstream: app
    rate_limit: [per_ip, per_user]
";
    one_error(text, 12, 26, "keyed by claim `sub`");
    let single = text.replace("[per_ip, per_user]", "per_user");
    one_error(&single, 12, 17, "add `auth: POLICY` to this route");
}

#[test]
fn rate_limit_checks() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
rate_limits:
  a: { key: ip, rate: 100/s }
  b: { key: \"header:bad header\", rate: 0/s }
  c: { key: client_ip, rate: 5/s, shared: true }
";
    let errs = errors(text);
    let pos: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(pos, vec![(4, 13), (5, 13), (5, 40), (6, 43)], "{errs:#?}");
    assert!(errs[0].2.contains("client_ip, claim:NAME or header:NAME"));
    assert!(errs[3].2.contains("no Redis is configured"));
}

#[test]
fn compression_checks() {
    let text = format!(
        "{MINIMAL}compression:\n  algorithms: [br, gzip, br, deflate]\n  levels: {{ gzip: 10, br: 11, zstd: 0 }}\n"
    );
    let errs = errors(&text);
    let pos: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        pos,
        vec![(10, 26), (10, 30), (11, 19), (11, 37)],
        "{errs:#?}"
    );
    assert!(errs[2]
        .2
        .contains("gzip level 10 is out of range: use 1 to 9"));
}

#[test]
fn cors_credentials_with_star() {
    let text = format!(
        "{MINIMAL}cors:\n  allow_origins: [\"https://a.example\", \"*\"]\n  allow_credentials: true\n"
    );
    one_error(&text, 10, 40, "cannot be used with the \"*\" origin");
    // A route's own cors is checked the same way, and `cors: false` is fine.
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
routes:
  - path: /a
    upstream: app
    cors: false
  - path: /b
    upstream: app
    cors: { allow_origins: [\"*\"], allow_credentials: true, allow_methods: [GET] }
";
    one_error(text, 12, 29, "cannot be used with the \"*\" origin");
}

#[test]
fn addresses_proxies_and_headers() {
    let text = "\
listen:
  - address: localhost:8080
admin: { address: 127.0.0.1:99999 }
trusted_proxies: [10.0.0.0/8, 192.168.1.1, 10.0.0.0/33]
auth:
  p:
    algorithms: [HS256]
    secret_env: JWT_SECRET
    forward_claims: { sub: \"x auth\", role: host }
";
    let errs = errors(text);
    let pos: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        pos,
        vec![(2, 14), (3, 19), (4, 44), (9, 28), (9, 44)],
        "{errs:#?}"
    );
}

#[test]
fn upstream_checks() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: []
    pool: { max_idle: 10, max_connections: 5 }
    connect_timeout: 0s
    health_check: { path: healthz }
";
    let errs = errors(text);
    let pos: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(pos, vec![(5, 14), (6, 23), (7, 22), (8, 27)], "{errs:#?}");
}

#[test]
fn route_target_checks() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
routes:
  - path: nope
    upstream: app
    scopes: [api]
  - path: /b
  - path: /c
    upstream: app
    static: { dir: /tmp }
";
    let errs = errors(text);
    let pos: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(pos, vec![(7, 11), (9, 5), (10, 5), (13, 5)], "{errs:#?}");
}

#[test]
fn static_dotfiles_is_a_bool_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let route = |extra: &str| {
        format!(
            "listen:\n  - address: 127.0.0.1:8080\nroutes:\n  - path: /s/{{*p}}\n    static: {{ dir: {}{extra} }}\n",
            dir.path().display()
        )
    };
    let dotfiles =
        |text: &str| match &load_with(text, LoadOptions::default()).unwrap().routes[0].target {
            RouteTarget::Static(s) => s.dotfiles,
            other => panic!("{other:?}"),
        };
    assert!(!dotfiles(&route("")));
    assert!(dotfiles(&route(", dotfiles: true")));
    assert!(!dotfiles(&route(", dotfiles: false")));
    let errs = errors(&route(", dotfiles: sometimes"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].0, 5, "{errs:#?}");
    assert!(errs[0].2.contains("expected true or false"), "{errs:#?}");
}

#[test]
fn static_precompressed_is_a_bool_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let route = |extra: &str| {
        format!(
            "listen:\n  - address: 127.0.0.1:8080\nroutes:\n  - path: /s/{{*p}}\n    static: {{ dir: {}{extra} }}\n",
            dir.path().display()
        )
    };
    let precompressed =
        |text: &str| match &load_with(text, LoadOptions::default()).unwrap().routes[0].target {
            RouteTarget::Static(s) => s.precompressed,
            other => panic!("{other:?}"),
        };
    assert!(!precompressed(&route("")));
    assert!(precompressed(&route(", precompressed: true")));
    assert!(!precompressed(&route(", precompressed: false")));
    let errs = errors(&route(", precompressed: br"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].2.contains("expected true or false"), "{errs:#?}");
}

#[test]
fn serde_errors_inside_one_entry_are_all_reported() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
routes:
  - path: /{*rest}
    upstrem: app
    compression: maybe
";
    let errs = errors(text);
    let pos: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    // The missing `upstream` is also found, once the typo'd key is set aside.
    assert_eq!(pos, vec![(7, 5), (8, 5), (9, 18)], "{errs:#?}");
    assert!(errs[1].2.starts_with("unknown key `upstrem`"));
    assert_eq!(
        errs[2].2,
        "expected true, false or { sse: true }, found string \"maybe\""
    );
}

#[test]
fn three_planted_errors_in_one_run() {
    let text = "\
threads: 1
listen:
  - address: 0.0.0.0:8080
upstreams:
  app:
    sockets: [/run/app/app.sock]
    read_timeout: 30 seconds
auth:
  default:
    algorithms: [none]
    secret_env: JWT_SECRET
routes:
  - path: /{*rest}
    upstream: app
    auth: defualt
";
    let err = load_with(text, LoadOptions::default()).unwrap_err();
    let printed = err.to_string();
    assert_eq!(
        printed,
        "gate.yaml:7:19: invalid duration `30 seconds`: expected a number followed by ms, s, m, h or d\n\
         gate.yaml:10:18: algorithm `none` accepts unsigned tokens and is never allowed: remove it\n\
         gate.yaml:15:11: unknown auth policy `defualt`; defined policies: `default`"
    );
}

#[test]
fn file_is_printed_as_given() {
    let err = load_str(
        "",
        Path::new("./conf/../gate.yaml"),
        LoadOptions::default(),
        &env,
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("./conf/../gate.yaml:1:1: "));
    let err = load(Path::new("/nonexistent/gate.yaml"), LoadOptions::default()).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("/nonexistent/gate.yaml:1:1: cannot read config file"));
}

#[test]
fn anchors_and_merge_keys() {
    let text = "\
x-upstream: &up
  sockets: [/run/app.sock]
  read_timeout: 5s
listen: [{address: 127.0.0.1:8080}]
upstreams:
  app:
    <<: *up
    read_timeout: 60s
  other: *up
routes:
  - path: /{*rest}
    upstream: other
";
    let c = load_with(text, LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.upstreams["app"].read_timeout, Duration::from_secs(60));
    assert_eq!(c.upstreams["other"].read_timeout, Duration::from_secs(5));
    assert_eq!(c.upstreams["app"].sockets, c.upstreams["other"].sockets);
}

#[test]
fn hostile_input_is_an_error_not_a_crash() {
    let deep = format!("listen: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(errors(&deep).len(), 1);
    for text in [
        "\t",
        "{",
        "a: *nope\n",
        "? [a]\n: b\n",
        "listen: !!binary aGk=\n",
        "---\n---\n",
    ] {
        let _ = load_with(text, LoadOptions::default());
    }
}

#[test]
fn default_max_idle_shrinks_to_a_small_max_connections() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
    pool: { max_connections: 4 }
";
    let c = load_with(text, LoadOptions::default()).unwrap();
    assert_eq!(c.upstreams["app"].pool.max_idle, 4);
    assert_eq!(c.upstreams["app"].pool.max_connections, 4);
}

#[test]
fn route_compression_switch_or_sse_opt_in() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
compression: true
routes:
  - path: /events
    upstream: app
    compression: { sse: true }
  - path: /raw
    upstream: app
    compression: false
  - path: /{*rest}
    upstream: app
";
    let c = load_with(text, LoadOptions::default()).unwrap();
    assert_eq!(c.routes[0].compression, Some(true));
    assert!(c.routes[0].compress_event_stream);
    assert_eq!(c.routes[1].compression, Some(false));
    assert!(!c.routes[1].compress_event_stream);
    assert_eq!(c.routes[2].compression, None);
}

#[test]
fn cache_section_and_route_opt_in() {
    let text = "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
auth:
  users:
    algorithms: [HS256]
    secret_env: JWT_SECRET
cache:
  max_size: 16MiB
  lock_timeout: 2s
routes:
  - path: /items
    upstream: app
    cache: true
  - path: /me
    upstream: app
    auth: users
    cache: { authorized: true, key_claim: sub }
  - path: /{*rest}
    upstream: app
";
    let c = load_with(text, LoadOptions::default()).unwrap();
    let cache = c.cache.unwrap();
    assert_eq!(cache.max_size, 16 * 1024 * 1024);
    assert_eq!(cache.max_entry_size, 1024 * 1024);
    assert_eq!(cache.lock_timeout, std::time::Duration::from_secs(2));
    assert_eq!(c.routes[0].cache, Some(Default::default()));
    let me = c.routes[1].cache.as_ref().unwrap();
    assert!(me.authorized);
    assert_eq!(me.key_claim.as_deref(), Some("sub"));
    assert_eq!(c.routes[2].cache, None);
}

#[test]
fn cache_checks() {
    let text =
        format!("{MINIMAL}cache:\n  max_size: 0\n  max_entry_size: 2MiB\n  lock_timeout: 0s\n");
    let errs = errors(&text);
    let pos: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(pos, vec![(10, 13), (11, 19), (12, 17)], "{errs:#?}");
    assert!(errs[0].2.contains("max_size must be greater than zero"));
    assert!(errs[1].2.contains("larger than max_size"));
    assert!(errs[2].2.contains("lock_timeout must be greater than zero"));
    one_error(
        &format!("{MINIMAL}cache:\n  max_size: lots\n"),
        10,
        13,
        "lots",
    );
    one_error(
        &format!("{MINIMAL}cache:\n  ttl: 5s\n"),
        10,
        3,
        "unknown key `ttl`",
    );
}

#[test]
fn route_cache_checks() {
    let dir = files();
    let text = format!(
        "\
listen:
  - address: 127.0.0.1:8080
upstreams:
  app:
    sockets: [/run/app.sock]
routes:
  - path: /files/{{*p}}
    static: {{ dir: {} }}
    cache: true
  - path: /ws
    upstream: app
    websocket: {{ max_message: 1MiB }}
    cache: true
  - path: /me
    upstream: app
    cache: {{ key_claim: sub }}
  - path: /x
    upstream: app
    cache: {{ ttl: 5 }}
",
        dir.path().display()
    );
    let errs = errors(&text);
    let pos: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(pos, vec![(9, 5), (13, 5), (16, 25), (19, 14)], "{errs:#?}");
    assert!(errs[0].2.contains("static route"));
    assert!(errs[1].2.contains("WebSocket"));
    assert!(errs[2].2.contains("add `auth: POLICY`"));
    assert!(errs[3].2.contains("unknown key `ttl`"));
}

#[test]
fn concurrency_min_work_is_off_by_default_and_takes_a_duration() {
    let c = load_with(MINIMAL, LoadOptions::default()).unwrap();
    let conc = c.upstreams["app"].concurrency.as_ref().unwrap();
    assert_eq!(conc.min_work, Duration::ZERO);
    for (value, want) in [("0", Duration::ZERO), ("5ms", Duration::from_millis(5))] {
        let text = MINIMAL.replace(
            "    sockets: [/run/app.sock]\n",
            &format!("    sockets: [/run/app.sock]\n    concurrency: {{ min_work: {value} }}\n"),
        );
        let c = load_with(&text, LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.upstreams["app"].concurrency.as_ref().unwrap().min_work,
            want
        );
    }
    let text = MINIMAL.replace(
        "    sockets: [/run/app.sock]\n",
        "    sockets: [/run/app.sock]\n    concurrency: { min_work: soon }\n",
    );
    one_error(&text, 6, 30, "invalid duration");
}
