//! `asgi-gate`: the binary. Parses the command line, loads the config (bad
//! config: every error with its position, exit 64), builds the runtime
//! (1 thread by default, leaving the cores to Python) and serves.
#![forbid(unsafe_code)]

mod accesslog;
mod admin;
mod auth;
mod body;
mod compress;
mod gate;
mod metrics;
mod pipeline;
mod reject;
mod router;
mod server;
mod upstream;
mod websocket;

use std::path::PathBuf;
use std::process::ExitCode;

use asgi_gate_config::{Config, LoadOptions, RouteCors, RouteTarget};
use clap::{Parser, Subcommand};

/// Exit code for a config that cannot be served (sysexits EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "asgi-gate",
    version,
    about = "Reverse proxy in front of Python ASGI workers on Unix sockets",
    after_help = "Examples:\n  asgi-gate -c gate.yaml          serve\n  asgi-gate check -c gate.yaml    validate the config and print every error"
)]
struct Cli {
    /// Config file (YAML).
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Access log format on stdout (default: json when stdout is not a terminal, else text).
    #[arg(long = "log-format", global = true, value_enum)]
    log_format: Option<accesslog::Format>,
    /// No access log (metrics are still counted).
    #[arg(long = "no-access-log", global = true)]
    no_access_log: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config: silent exit 0, or every error as FILE:LINE:COL and exit 1.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(path) = cli.config else {
        eprintln!("asgi-gate: a config file is required: asgi-gate -c gate.yaml");
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    match cli.command {
        Some(Command::Check) => match asgi_gate_config::load(&path, LoadOptions::default()) {
            Ok(_) => ExitCode::SUCCESS,
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
        },
        None => {
            if !cli.no_access_log {
                let format = cli.log_format.unwrap_or(
                    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                        accesslog::Format::Text
                    } else {
                        accesslog::Format::Json
                    },
                );
                accesslog::init(format);
            }
            let code = serve(&path);
            accesslog::flush();
            code
        }
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    init_logging();
    let cfg = match asgi_gate_config::load(path, LoadOptions::default()) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let missing = not_built_yet(&cfg);
    if !missing.is_empty() {
        for (section, lands_with) in missing {
            eprintln!(
                "{}: `{section}` is not supported by this build yet (it lands with {lands_with}); remove it to serve",
                path.display()
            );
        }
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let runtime = if cfg.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("asgi-gate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = server::ConfigSource {
        path: Some(path.to_path_buf()),
        opts: LoadOptions::default(),
        adjust: Box::new(|_| {}),
    };
    match runtime.block_on(server::serve(cfg, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("asgi-gate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Config sections whose feature is not in this build: refusing them beats
/// serving without a policy the user asked for.
fn not_built_yet(cfg: &Config) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    let mut flag = |used: bool, section, lands_with| {
        if used {
            out.push((section, lands_with));
        }
    };
    flag(
        cfg.revocation.as_ref().is_some_and(|r| r.redis.is_some()),
        "revocation.redis",
        "Redis-shared revocations",
    );
    flag(
        cfg.rate_limits.values().any(|l| l.shared),
        "rate_limits.*.shared",
        "Redis-shared limits",
    );
    flag(
        cfg.cors.is_some()
            || cfg
                .routes
                .iter()
                .any(|r| matches!(r.cors, RouteCors::Own(_))),
        "cors",
        "CORS",
    );
    flag(
        cfg.allowed_hosts.is_some(),
        "allowed_hosts",
        "host filtering",
    );
    flag(cfg.https_redirect, "https_redirect", "TLS listeners");
    flag(
        cfg.security_headers.is_some(),
        "security_headers",
        "security headers",
    );
    flag(
        cfg.listen.iter().any(|l| l.tls.is_some()),
        "listen[].tls",
        "TLS listeners",
    );
    flag(
        cfg.routes
            .iter()
            .any(|r| matches!(r.target, RouteTarget::Static(_))),
        "routes[].static",
        "static files",
    );
    flag(
        cfg.routes.iter().any(|r| r.websocket.is_some()),
        "routes[].websocket",
        "WebSocket message limits",
    );
    out
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
