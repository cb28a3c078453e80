//! The `slo-hub` binary: parse the command line, load the settings, start the
//! hub, wait for Ctrl-C or SIGTERM, shut down gracefully. Everything else is
//! in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use slo_hub::Hub;
use slo_hub::config::{Config, LogFormat, Mode, Overrides, StoreKind};

/// Single-logout push hub. Without a subcommand it starts in dev mode:
/// 127.0.0.1:8080, dev issuer, demo apps.
#[derive(Parser)]
#[command(name = "slo-hub", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Production mode: settings from a TOML file, overridden by SLO_HUB_* env and flags.
    Serve {
        /// The TOML config file.
        #[arg(long, env = "SLO_HUB_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Print a new random API key and the SHA-256 that goes into the config.
    GenApiKey,
    /// Load and validate a config file (with SLO_HUB_* env), say what it
    /// configures, and exit: 0 if the hub would start with it, 2 if not.
    Check {
        #[arg(long, env = "SLO_HUB_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Args, Default)]
struct CommonArgs {
    /// Address to listen on (dev default 127.0.0.1:8080).
    #[arg(long, env = "SLO_HUB_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for keys and the embedded store (default ./data).
    #[arg(long, env = "SLO_HUB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Do not serve the demo apps.
    #[arg(long)]
    no_demo: bool,
    /// Port of demo app A (default: listen port + 1).
    #[arg(long)]
    demo_a_port: Option<u16>,
    /// Port of demo app B (default: listen port + 2).
    #[arg(long)]
    demo_b_port: Option<u16>,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Where revocation state lives.
    #[arg(long, value_parser = ["embedded", "memory"])]
    store: Option<String>,
    /// Redis URL shared by several hub nodes (redis://host:port).
    #[arg(long)]
    cluster: Option<String>,
}

impl CommonArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            no_demo: self.no_demo,
            demo_a_port: self.demo_a_port,
            demo_b_port: self.demo_b_port,
            log_format: self.log_format.as_deref().map(|f| match f {
                "json" => LogFormat::Json,
                _ => LogFormat::Text,
            }),
            store: self.store.as_deref().map(|s| match s {
                "memory" => StoreKind::Memory,
                _ => StoreKind::Embedded,
            }),
            cluster: self.cluster.clone(),
        }
    }
}

/// jemalloc, chosen by measurement (slo-bench, 15,000 idle sockets, runs
/// alternated on one machine): 0.90 KiB of RSS per idle socket against 1.25
/// with mimalloc and 0.98 with glibc's malloc, and the trigger path as fast
/// as with mimalloc (glibc's was about a third slower). valgrind's massif
/// counts about 830 bytes of live heap per idle socket; the rest of each
/// figure is what the allocator keeps around it.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (mode, file, common) = match cli.command {
        Some(Command::GenApiKey) => {
            let (key, hash) = slo_hub::auth::api_keys::generate();
            println!("key:    {key}");
            println!("sha256: {hash}");
            println!(
                "\n[[api_keys]]\nname = \"backend\"\nsha256 = \"{hash}\"\nscopes = [\"logout:any\"]"
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::Check { config }) => {
            return match Config::load(Mode::Production, Some(&config), &Overrides::default()) {
                Ok(c) => {
                    println!("{}: {}", config.display(), c.summary());
                    if let Some(w) = c.idle_warning() {
                        println!("warning: {w}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("slo-hub: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Serve { config, common }) => (Mode::Production, Some(config), common),
        None => (Mode::Dev, None, cli.common),
    };
    let config = match Config::load(mode, file.as_deref(), &common.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("slo-hub: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slo-hub: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let hub = match Hub::start(config).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("slo-hub: {e}");
            return ExitCode::from(2);
        }
    };
    // The handlers go in before the banner: whoever reads the banner may
    // signal at once, and an uninstalled handler would mean a hard kill.
    let signal = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("slo-hub: installing signal handlers: {e}");
            hub.shutdown(Duration::from_secs(1)).await;
            return ExitCode::from(1);
        }
    };
    tracing::info!(addr = %hub.addr, url = %hub.url(), "listening");
    print_banner(&hub);
    signal.await;
    tracing::info!("shutting down: closing sockets with 1012, finishing requests");
    hub.shutdown(Duration::from_secs(10)).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Prints every URL once. Written in one piece with errors ignored: a closed
/// stdout (a supervisor that stopped reading) must not take the hub down.
fn print_banner(hub: &Hub) {
    use std::io::Write as _;
    let app = hub.app();
    let url = hub.url();
    let ws = format!("{}/v1/ws", url.replacen("http", "ws", 1));
    let mode = if app.config.is_dev() {
        "dev mode"
    } else {
        "production mode"
    };
    let mut lines = vec![
        format!("slo-hub {} — {mode}", env!("CARGO_PKG_VERSION")),
        format!("  listening    {}", hub.addr),
        format!("  hub          {url}"),
        format!("  websocket    {ws}"),
    ];
    for (name, addr) in &hub.demos {
        lines.push(format!("  demo {name}   http://{addr}"));
    }
    lines.push(format!("  client lib   {url}/static/slo-client.js"));
    lines.push(format!("  health       {url}/healthz  {url}/readyz"));
    let ops = hub
        .operator_addr
        .map_or_else(|| url.clone(), |a| format!("http://{a}"));
    lines.push(format!("  metrics      {ops}/metrics"));
    if app.config.console.enabled {
        lines.push(format!("  console      {ops}/console"));
    }
    if app.hub_issuers.dev.is_some() {
        lines.push(format!(
            "  dev token    curl -s -XPOST {url}/dev/token -H 'content-type: application/json' -d '{{\"sub\":\"alice\"}}'"
        ));
    }
    if app.hub_issuers.dev.is_some() && app.config.dev.demo {
        lines.push(format!("  native app   {url}/demo/native-sim/"));
    }
    if let Some(path) = &app.dev_api_key_file {
        lines.push(format!(
            "  dev API key  in {} (every scope: logout:any, revoke, audit:read, admin)",
            path.display()
        ));
    }
    let problems = app.problems();
    if problems.is_empty() {
        lines.push("  ready        Ctrl-C or SIGTERM stops the hub gracefully".into());
    } else {
        // /readyz answers 503 until these are solved; say so, not "ready".
        lines.push(format!(
            "  ready        not yet: {} (see /readyz); Ctrl-C or SIGTERM stops the hub",
            problems.join("; ")
        ));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Installs the SIGTERM and Ctrl-C handlers now and returns a future that
/// resolves on the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours for a person at a terminal, not for a log file or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
