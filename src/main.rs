//! `hearth`: the one binary of Hearth. Node, coordinator and client commands.

mod bench;
mod cli;
mod client;
mod config;
mod demo;
mod jsonl;
mod keygen;
mod local;
mod models;
mod peers;
mod serve;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::{Cli, Command};
use crate::config::FileConfig;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let _ = error.print();
            return if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(error) => {
            // clap's message is several lines with a usage block; one clear line is enough here.
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first} (see hearth --help)");
            return ExitCode::from(2);
        }
    };
    if let Command::Bench(args) = &cli.command
        && let Some(threads) = args.threads
    {
        set_compute_threads(threads);
    }
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let file = FileConfig::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Keygen(args) => keygen::run(args, &file),
            Command::Node(args) => serve::node(args, file).await,
            Command::Coordinator(args) => serve::coordinator(args, file).await,
            Command::Peers(args) => peers::run(args, &file).await,
            Command::Local(args) => local::run(args, &file),
            Command::Bench(args) => bench::run(args, &file),
            Command::Models(args) => models::run(args, &file),
            Command::Demo(args) => demo::run(args, &file).await,
        }
    })
}

/// candle sizes its thread pools from `RAYON_NUM_THREADS` when they are first used, and offers no
/// other way to set them.
#[allow(unsafe_code)]
fn set_compute_threads(threads: u32) {
    // SAFETY: called first thing in main, before the runtime or any other thread exists, so no
    // other thread can be reading the environment.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
}

/// Diagnostics go to stderr through `tracing`; `HEARTH_LOG` (or `RUST_LOG`) filters them.
fn init_logging() {
    use tracing_subscriber::EnvFilter;

    let default = "warn,hearth=info,hearth_node=info,hearth_coordinator=info,hearth_net=info";
    let filter = std::env::var("HEARTH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("stopping");
}
