//! `hearth`: the one binary of Hearth. Node, coordinator and client commands.

mod apikey;
mod bench;
mod bench_fetch;
mod bench_pipeline;
mod bench_swarm;
mod children;
mod cli;
mod client;
mod config;
mod coop;
mod demo;
mod generate;
mod jobs;
mod jsonl;
mod keygen;
mod local;
mod models;
mod peers;
mod serve;
mod sim;
mod swarm_fetch;

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
    let file = match FileConfig::load(cli.config.as_deref()) {
        Ok(file) => file,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            return ExitCode::FAILURE;
        }
    };
    configure_kernels(match &cli.command {
        // The pipeline benchmark compares with one thread, as each of its nodes has.
        Command::Bench(args) => args.threads.or(match args.command {
            cli::BenchCommand::Pipeline { .. } => Some(1),
            _ => None,
        }),
        // A node computes on the threads it advertises: the flag, the config, else the free cores.
        Command::Node(args) => Some(
            args.max_threads
                .or(file.node.max_threads)
                .unwrap_or_else(hearth_kernels::free_cores),
        ),
        _ => None,
    });
    init_logging();
    match run(cli, file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: an error that already quotes its
/// source (`{path}: {source}`) is not followed by the source again.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn run(cli: Cli, file: FileConfig) -> anyhow::Result<()> {
    // A client command's output piped into `head` ends quietly when the pipe closes, as `cat`
    // does, rather than panicking in println!. (Not for the daemons, whose output is their log.)
    if !matches!(
        cli.command,
        Command::Node(_)
            | Command::Coordinator(_)
            | Command::Demo(_)
            | Command::Bench(_)
            | Command::Sim(_)
    ) {
        default_sigpipe();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Keygen(args) => keygen::run(args, &file),
            Command::Node(args) => serve::node(args, file).await,
            Command::Coordinator(args) => serve::coordinator(args, file).await,
            Command::Apikey(args) => apikey::run(args, &file).await,
            Command::Coop(args) => coop::run(args, &file).await,
            Command::Peers(args) => peers::run(args, &file).await,
            Command::Group(args) => peers::group(args, &file).await,
            Command::Local(args) => local::run(args, &file),
            Command::Bench(args) => bench::run(args, &file).await,
            Command::Models(args) => models::run(args, &file).await,
            Command::Demo(args) => demo::run(args, &file).await,
            Command::Generate(args) => generate::run(args, &file).await,
            Command::Embed(args) => jobs::embed(args, &file).await,
            Command::Batch(args) => jobs::batch(args, &file).await,
            Command::Jobs(args) => jobs::list(args, &file).await,
            Command::Job(args) => jobs::job(args, &file).await,
            Command::Verify(args) => jobs::verify(args),
            Command::Sim(args) => sim::run(args),
        }
    })
}

/// How long candle's matmul threads spin waiting for each other before they sleep, unless
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` says otherwise. candle's default (25,000) collapses when another
/// process holds a core, as on any volunteer's machine: measured here at 2 threads with one core busy,
/// decode fell from 20.0 to 4.2 tokens/s, and 1,000 brought it to 9.5; on a quiet machine 1,000 costs
/// about 7% (19.9 → 18.5).
const KERNEL_SPIN_LIMIT: &str = "1000";

/// candle reads its thread count (`RAYON_NUM_THREADS`) and spin limit from the environment when its
/// pools first start, and offers no other way to set them.
#[allow(unsafe_code)]
fn configure_kernels(threads: Option<u32>) {
    // SAFETY: called first thing in main, before the runtime or any other thread exists, so no
    // other thread can be reading the environment.
    unsafe {
        if let Some(threads) = threads {
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        }
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", KERNEL_SPIN_LIMIT);
        }
    }
}

/// Let SIGPIPE end the process (Rust ignores it, so a write to a closed pipe is an error that
/// println! turns into a panic).
#[allow(unsafe_code)]
fn default_sigpipe() {
    #[cfg(unix)]
    {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: resetting a signal to its default disposition installs no handler code.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
}

/// Diagnostics go to stderr through `tracing`; `HEARTH_LOG` (or `RUST_LOG`) filters them.
fn init_logging() {
    use tracing_subscriber::EnvFilter;

    // openraft logs every lost heartbeat to an absent group member (several a second) at warn and
    // error; the group says what matters itself (roles taken, members unreachable in `/v1/group`).
    let default =
        "warn,openraft=off,hearth=info,hearth_node=info,hearth_coordinator=info,hearth_net=info";
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
