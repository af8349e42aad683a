//! `asgi-gate`: the binary. Parses the command line, loads the config (bad
//! config: every error with its position, exit 64), builds the runtime
//! (1 thread by default, leaving the cores to Python) and serves, or, with
//! `run`, starts the workers first and stops them after the drain.
// `deny`, not `forbid`: supervisor/pdeathsig.rs and memory.rs hold the allowed `unsafe`.
#![deny(unsafe_code)]

// Top to bottom, as they import each other: a module names only those
// below it (DEVELOPERS.md "Layout"; `scripts/check-module-cycles.py`).
mod accesslog;
mod admin;
mod body;
mod clock;
mod cluster;
mod gate;
mod json;
mod memory;
mod metrics;
mod pipeline;
mod reject;
mod server;
mod steps;
mod supervisor;
mod tls_client;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use asgi_gate_config::{Config, LoadOptions};
use clap::{Parser, Subcommand};

/// Exit code for a config that cannot be served (sysexits EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;
/// How long `run` waits for every worker's socket to answer at start.
const WORKER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The upstream `run` fills with its workers' sockets.
const SUPERVISED_UPSTREAM: &str = "app";

#[derive(Parser)]
#[command(
    name = "asgi-gate",
    // The commit comes from build.rs ("unknown" outside a git checkout).
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ASGI_GATE_COMMIT"), ")"),
    about = "Reverse proxy in front of Python ASGI workers on Unix sockets",
    after_help = "Examples:\n  asgi-gate -c gate.yaml            serve\n  asgi-gate check -c gate.yaml      validate the config and print every error\n  asgi-gate run -- uvicorn app:app  start uvicorn workers and serve them on 127.0.0.1:8000"
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
    /// Reload when the config file or a TLS listener's certificate changes,
    /// watching their directories (a Kubernetes ConfigMap or Secret volume).
    #[arg(long = "watch", global = true)]
    watch: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config: silent exit 0, or every error as FILE:LINE:COL and exit 1.
    Check,
    /// Supervisor mode: start N workers on private Unix sockets and serve them.
    #[command(
        after_help = "The worker's socket: every `{socket}` in CMD ARGS is replaced by its path; \
        without one, uvicorn (also `python -m uvicorn`) gets `--uds PATH` and gunicorn \
        `--bind unix:PATH`; any other program needs `{socket}`.\n\n\
        Examples:\n  asgi-gate run -- uvicorn app:app\n  \
        asgi-gate run -c gate.yaml --workers 4 -- hypercorn app:app --bind 'unix:{socket}'"
    )]
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Worker processes [default: the number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// The worker command line, after `--`.
    #[arg(last = true, required = true, value_name = "CMD ARGS")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // redis-rs builds its rustls config (rediss://) on the process default
    // provider: make it aws-lc, like every other TLS config here.
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    if let Some(Command::Run(args)) = cli.command {
        return run(cli.config.as_deref(), args, cli.watch);
    }
    let Some(path) = cli.config else {
        eprintln!("asgi-gate: a config file is required: asgi-gate -c gate.yaml");
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    match cli.command {
        Some(Command::Run(_)) => ExitCode::FAILURE, // returned above
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
            let code = serve(&path, cli.watch);
            accesslog::flush();
            code
        }
    }
}

fn serve(path: &std::path::Path, watch: bool) -> ExitCode {
    init_logging();
    let cfg = match asgi_gate_config::load(path, LoadOptions::default()) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let Some(runtime) = build_runtime(cfg.threads) else {
        return ExitCode::FAILURE;
    };
    let source = server::ConfigSource {
        path: Some(path.to_path_buf()),
        opts: LoadOptions::default(),
        adjust: Box::new(|_| {}),
        watch,
    };
    match runtime.block_on(server::serve(cfg, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("asgi-gate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `asgi-gate run`: the config (built-in without `-c`), then the workers,
/// then the server; on SIGTERM/SIGINT the server drains before the workers stop.
fn run(path: Option<&Path>, args: RunArgs, watch: bool) -> ExitCode {
    init_logging();
    if let Err(e) = supervisor::check_command(&args.command) {
        eprintln!("asgi-gate: {e}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let cfg = match path {
        Some(path) => match asgi_gate_config::load(path, LoadOptions { supervised: true }) {
            Ok(cfg) => cfg,
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        },
        None => Config::supervised_default(),
    };
    let workers = args.workers.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let Some(runtime) = build_runtime(cfg.threads) else {
        return ExitCode::FAILURE;
    };
    let path = path.map(Path::to_path_buf);
    runtime.block_on(supervised(cfg, path, args.command, workers, watch))
}

async fn supervised(
    mut cfg: Config,
    path: Option<PathBuf>,
    command: Vec<String>,
    workers: usize,
    watch: bool,
) -> ExitCode {
    // One signal watcher for the whole run, so a signal during start-up is not lost.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // A SIGHUP before serving starts must not kill the gate (the default
    // action): once tokio has a handler installed, it stays for the process.
    if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tracing::warn!(error = %e, "cannot handle SIGHUP");
    }
    tokio::spawn(async move {
        server::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grace = cfg.shutdown_grace;
    let mut sup = match supervisor::Supervisor::start(&command, workers).await {
        Ok(sup) => sup,
        Err(e) => {
            eprintln!("asgi-gate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ready = tokio::select! {
        r = sup.wait_ready(WORKER_READY_TIMEOUT) => r,
        _ = stopped(stop.clone()) => {
            sup.shutdown(grace).await;
            return ExitCode::SUCCESS;
        }
    };
    if let Err(e) = ready {
        eprintln!("asgi-gate: {e}");
        sup.shutdown(grace).await;
        return ExitCode::FAILURE;
    }
    match cfg.upstreams.get_mut(SUPERVISED_UPSTREAM) {
        Some(up) => up.sockets = sup.sockets().to_vec(),
        // load(supervised) and supervised_default() always have it.
        None => {
            eprintln!("asgi-gate: the config has no upstream `{SUPERVISED_UPSTREAM}`");
            sup.shutdown(grace).await;
            return ExitCode::FAILURE;
        }
    }
    let sockets = sup.sockets().to_vec();
    let source = server::ConfigSource {
        path,
        opts: LoadOptions { supervised: true },
        // A reloaded config gets the same workers.
        adjust: Box::new(move |cfg: &mut Config| {
            if let Some(up) = cfg.upstreams.get_mut(SUPERVISED_UPSTREAM) {
                up.sockets = sockets.clone();
            }
        }),
        watch,
    };
    let served = server::serve_until(cfg, source, stopped(stop)).await;
    sup.shutdown(grace).await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("asgi-gate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build_runtime(threads: usize) -> Option<tokio::runtime::Runtime> {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    match runtime {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("asgi-gate: cannot start the runtime: {e}");
            None
        }
    }
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
