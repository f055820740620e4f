//! atlas-sim: the Atlas link-token API simulator (see docs/atlas-sim.md).

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use atlas_sim::{SimConfig, SimListen, SimServer};
use clap::Parser;

/// The source port `--demo` serves when `--source-listen` is not given.
const DEMO_SOURCE_PORT: u16 = 8092;

#[derive(Debug, Parser)]
#[command(
    name = "atlas-sim",
    version,
    about = "Simulator of the MongoDB Atlas link-token API"
)]
struct Args {
    /// Address of the Atlas API (port 0 picks a free port).
    #[arg(long, env = "ATLAS_SIM_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Address of the admin API.
    #[arg(long, env = "ATLAS_SIM_ADMIN_LISTEN", default_value = "127.0.0.1:8091")]
    admin_listen: SocketAddr,
    /// Address of the Cloud Manager / Ops Manager (source) API; off unless given or --demo
    /// (then 127.0.0.1:8092).
    #[arg(long, env = "ATLAS_SIM_SOURCE_LISTEN")]
    source_listen: Option<SocketAddr>,
    /// YAML configuration (orgs, apiKeys, serviceAccounts, sourceOrgs, sourceApiKeys, ...).
    #[arg(long, env = "ATLAS_SIM_CONFIG", conflicts_with = "demo")]
    config: Option<PathBuf>,
    /// Use the built-in demo configuration.
    #[arg(long, env = "ATLAS_SIM_DEMO")]
    demo: bool,
    /// Override the default per-org bucket capacity.
    #[arg(long, env = "ATLAS_SIM_RATE_LIMIT_CAPACITY")]
    rate_limit_capacity: Option<u32>,
    /// Override the default per-org refill (tokens per minute).
    #[arg(long, env = "ATLAS_SIM_RATE_LIMIT_REFILL_PER_MINUTE")]
    rate_limit_refill_per_minute: Option<u32>,
}

/// The source port: as given, else 127.0.0.1:8092 with `--demo`, else off.
fn source_listen(args: &Args) -> Option<SocketAddr> {
    args.source_listen.or_else(|| {
        args.demo
            .then(|| SocketAddr::from(([127, 0, 0, 1], DEMO_SOURCE_PORT)))
    })
}

fn load_config(args: &Args) -> Result<SimConfig, String> {
    let mut config = match (&args.config, args.demo) {
        (Some(path), _) => SimConfig::from_yaml_file(path).map_err(|e| e.to_string())?,
        (None, true) => SimConfig::demo(),
        (None, false) => SimConfig::default(),
    };
    if let Some(c) = args.rate_limit_capacity {
        config.rate_limit.capacity = c;
    }
    if let Some(r) = args.rate_limit_refill_per_minute {
        config.rate_limit.refill_per_minute = r;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// SIGTERM and SIGINT, registered before the ready line is printed: a script or test that
/// stops atlas-sim right after reading that line must get a clean shutdown, not the default
/// action of a signal nobody listens to yet.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn register() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr; stdout carries only the "ready" line that scripts wait for.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("atlas-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let orgs = config.orgs.len();
    let listen = SimListen {
        atlas: args.listen,
        admin: args.admin_listen,
        source: source_listen(&args),
    };
    let handle = match SimServer::start_listen(config, listen, None).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("atlas-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut signals = match ShutdownSignals::register() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("atlas-sim: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = handle
        .source_url()
        .map(|u| format!(" source_url={u}"))
        .unwrap_or_default();
    println!(
        "atlas-sim ready atlas_url={} admin_url={} orgs={orgs}{source}",
        handle.atlas_url, handle.admin_url
    );
    signals.wait().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_of(argv: &[&str]) -> Option<SocketAddr> {
        let args = Args::try_parse_from(std::iter::once("atlas-sim").chain(argv.iter().copied()))
            .expect("parses");
        source_listen(&args)
    }

    #[test]
    fn source_port_is_off_unless_asked_for_or_demo() {
        assert_eq!(source_of(&[]), None);
        assert_eq!(source_of(&["--demo"]), "127.0.0.1:8092".parse().ok());
        assert_eq!(
            source_of(&["--demo", "--source-listen", "127.0.0.1:0"]),
            "127.0.0.1:0".parse().ok()
        );
        assert_eq!(
            source_of(&["--source-listen", "0.0.0.0:9092"]),
            "0.0.0.0:9092".parse().ok()
        );
    }
}
