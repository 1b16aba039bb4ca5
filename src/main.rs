//! `hearth`: the one binary of Hearth. Node, coordinator and client commands.

mod apikey;
mod bench;
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
            eprintln!("error: {error:#}");
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
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, file: FileConfig) -> anyhow::Result<()> {
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
            Command::Local(args) => local::run(args, &file),
            Command::Bench(args) => bench::run(args, &file).await,
            Command::Models(args) => models::run(args, &file),
            Command::Demo(args) => demo::run(args, &file).await,
            Command::Generate(args) => generate::run(args, &file).await,
            Command::Embed(args) => jobs::embed(args, &file).await,
            Command::Batch(args) => jobs::batch(args, &file).await,
            Command::Jobs(args) => jobs::list(args, &file).await,
            Command::Job(args) => jobs::job(args, &file).await,
            Command::Verify(args) => jobs::verify(args),
            Command::Sim(args) => sim(args),
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

/// `hearth sim`: run a scenario, write its report, print the summary and the wall time.
fn sim(args: cli::SimArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.scenario)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.scenario.display()))?;
    let scenario = hearth_sim::Scenario::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.scenario.display()))?;
    let seed = args.seed.unwrap_or(scenario.seed);
    if !args.sweep_replicas.is_empty() {
        return sim_sweep(&args, &scenario, seed);
    }
    if !args.sweep_liars.is_empty() || !args.sweep_churn.is_empty() {
        return sim_sweep_population(&args, &scenario, seed);
    }
    let started = std::time::Instant::now();
    let mut report = hearth_sim::run(&scenario, seed).map_err(|e| anyhow::anyhow!(e))?;
    report.seed = seed;
    let wall = started.elapsed();
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("{}", report.summary());
    println!(
        "wall time {:.1} s ({} events); report in {}",
        wall.as_secs_f64(),
        report.events,
        path.display()
    );
    Ok(())
}

/// `hearth sim --sweep-replicas`: the same scenario at each replication setting, plotted.
fn sim_sweep(
    args: &cli::SimArgs,
    scenario: &hearth_sim::Scenario,
    seed: u64,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut points = Vec::new();
    let mut reports = Vec::new();
    for setting in &args.sweep_replicas {
        let replicas = match setting.as_str() {
            "adaptive" => None,
            n => Some(
                n.parse::<u32>()
                    .ok()
                    .filter(|r| (1..=8).contains(r))
                    .ok_or_else(|| anyhow::anyhow!("--sweep-replicas {n:?}: 1..=8 or adaptive"))?,
            ),
        };
        let mut variant = scenario.clone();
        variant.workload.replicas = replicas;
        let mut report = hearth_sim::run(&variant, seed).map_err(|e| anyhow::anyhow!(e))?;
        report.seed = seed;
        let label = replicas.map_or("adaptive".to_string(), |r| format!("replicas {r}"));
        let wrong_rate = report.wrong_accepted as f64 / report.units_accepted.max(1) as f64;
        println!(
            "{label:<12} executions per unit {:.3}  wrong accepted {} ({wrong_rate:.2e})",
            report.executions_per_accepted_unit, report.wrong_accepted
        );
        points.push(hearth_sim::plot::Point {
            label,
            executions_per_unit: report.executions_per_accepted_unit,
            wrong_rate,
        });
        reports.push(report);
    }
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("sweep.json");
    std::fs::write(&json, serde_json::to_string_pretty(&reports)? + "\n")?;
    let svg = args.out.join("tradeoff.svg");
    hearth_sim::plot::tradeoff(&scenario.name, &points, &svg).map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "wall time {:.1} s; {} and {}",
        started.elapsed().as_secs_f64(),
        json.display(),
        svg.display()
    );
    Ok(())
}

/// `hearth sim --sweep-liars` / `--sweep-churn`: the population varied, a plot of what it costs.
fn sim_sweep_population(
    args: &cli::SimArgs,
    scenario: &hearth_sim::Scenario,
    seed: u64,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&args.out)?;
    let total: u32 = scenario.population.iter().map(|g| g.count).sum();
    let run = |variant: &hearth_sim::Scenario| -> anyhow::Result<hearth_sim::Report> {
        let mut report = hearth_sim::run(variant, seed).map_err(|e| anyhow::anyhow!(e))?;
        report.seed = seed;
        Ok(report)
    };
    if !args.sweep_liars.is_empty() {
        let (mut points, mut reports) = (Vec::new(), Vec::new());
        for &fraction in &args.sweep_liars {
            if !(0.0..1.0).contains(&fraction) {
                anyhow::bail!("--sweep-liars {fraction}: a fraction in [0, 1)");
            }
            let liars = (f64::from(total) * fraction).round() as u32;
            let mut variant = scenario.clone();
            let mut honest = variant.population[0].clone();
            honest.behaviour = hearth_sim::Behaviour::Honest;
            honest.count = total - liars;
            let mut liar = honest.clone();
            liar.behaviour = hearth_sim::Behaviour::Liar { probability: 1.0 };
            liar.count = liars;
            variant.population = vec![honest];
            if liars > 0 {
                variant.population.push(liar);
            }
            let report = run(&variant)?;
            println!(
                "liars {:>5.1}%  executions per unit {:.3}  wrong accepted {}  failed {}",
                fraction * 100.0,
                report.executions_per_accepted_unit,
                report.wrong_accepted,
                report.units_failed
            );
            points.push((
                fraction * 100.0,
                report.executions_per_accepted_unit,
                format!("wrong {}", report.wrong_accepted),
            ));
            reports.push(report);
        }
        std::fs::write(
            args.out.join("byzantine.json"),
            serde_json::to_string_pretty(&reports)? + "\n",
        )?;
        hearth_sim::plot::line(
            &format!(
                "{}: overhead against liars (labels: wrong results accepted)",
                scenario.name
            ),
            "peers that always lie (%)",
            "executions per accepted unit",
            &points,
            &args.out.join("byzantine.svg"),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
    }
    if !args.sweep_churn.is_empty() {
        let (mut points, mut reports) = (Vec::new(), Vec::new());
        for &online in &args.sweep_churn {
            if online <= 0.0 {
                anyhow::bail!("--sweep-churn {online}: seconds online must be positive");
            }
            let mut variant = scenario.clone();
            for group in &mut variant.population {
                group.mean_online_s = Some(online);
                group.mean_offline_s = 10.0;
            }
            let report = run(&variant)?;
            println!(
                "online {online:>7.1} s  {:.1} units/s  lost {}  wrong {}",
                report.throughput_units_per_s,
                report.units - report.units_accepted - report.units_failed,
                report.wrong_accepted
            );
            points.push((online, report.throughput_units_per_s, format!("{online} s")));
            reports.push(report);
        }
        std::fs::write(
            args.out.join("churn.json"),
            serde_json::to_string_pretty(&reports)? + "\n",
        )?;
        hearth_sim::plot::line(
            &format!("{}: throughput against churn", scenario.name),
            "mean seconds a peer stays online",
            "units accepted per second",
            &points,
            &args.out.join("churn.svg"),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
    }
    println!(
        "wall time {:.1} s; plots in {}",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
