//! overlay-agent binary: parse the command line, set up logging, run, map errors to
//! exit codes (0 ok, 1 runtime failure, 2 bad usage or config).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use overlay_agent::cli::{Cli, Command};
use overlay_agent::config::{Config, LogConfig, LogFormat};
use overlay_agent::server::web_config::WebConfigFile;
use overlay_agent::{cmd, daemon};

fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OVERLAY_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return match Config::load(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match cli.effective_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("overlay-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let web = match WebConfigFile::from_file(config.web.config_file.as_deref()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("overlay-agent: web config: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    if let Some(Command::Check { json }) = &cli.command {
        return match cmd::check::run(&config, *json, &mut std::io::stdout().lock()) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                tracing::error!("writing the report: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Explain { url, prometheus, since, all }) = &cli.command {
        let port = config.web.listen_address.0.port();
        let source = cmd::explain::Source::new(url.as_deref(), prometheus.as_deref(), *since, port);
        let shown = if *all { cmd::explain::Shown::All } else { cmd::explain::Shown::WorthAChange };
        return explain(&source, shown);
    }
    if matches!(cli.command, None | Some(Command::Serve)) {
        raise_open_files_limit();
        overlay_agent::memory::tune_malloc();
    }
    match run(&cli, config, web) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logged once, through the configured log format (stderr).
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Soft RLIMIT_NOFILE up to the hard limit, as Go programs do: the HTTP
/// connection cap is sized from it (overlay_agent::rlimit).
fn raise_open_files_limit() {
    use overlay_agent::rlimit::{raise_nofile, Raised};
    match raise_nofile() {
        Ok(Raised::To { from, to }) => {
            tracing::debug!(?from, ?to, "open files limit raised to the hard limit")
        }
        Ok(Raised::AlreadyMax(_)) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// `overlay-agent explain`: its exit code (cmd::explain), 1 when the metrics cannot be read.
fn explain(source: &cmd::explain::Source, shown: cmd::explain::Shown) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("overlay-agent explain: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cmd::explain::run(source, shown, &mut std::io::stdout().lock())) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("overlay-agent explain: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, config: Config, web: WebConfigFile) -> anyhow::Result<()> {
    match &cli.command {
        None | Some(Command::Serve) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(daemon::serve(cli, config, web))?;
        }
        Some(Command::Once) => cmd::once::run(&config, &mut std::io::stdout().lock())?,
        Some(Command::Trace { min_latency }) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(cmd::trace::run(&config, *min_latency, &mut std::io::stdout().lock()))?;
        }
        Some(Command::Mounts { json }) => {
            let view = daemon::discover(&config)?;
            let mut out = std::io::stdout().lock();
            cmd::mounts::mounts(&view.table, &view.identities, *json, &mut out)
                .context("writing the mount list")?;
        }
        Some(Command::CheckConfig { .. }) => unreachable!("handled before logging starts"),
        Some(Command::Check { .. }) => unreachable!("handled before the run"),
        Some(Command::Explain { .. }) => unreachable!("handled before the run"),
    }
    Ok(())
}
