//! `hearth sim`: one scenario, or a sweep of one of its parameters with a plot.

use crate::cli;

/// `hearth sim`: run a scenario, write its report, print the summary and the wall time.
pub(crate) fn run(args: cli::SimArgs) -> anyhow::Result<()> {
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
    let mut report = hearth_sim::run(&scenario, seed);
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
        let mut report = hearth_sim::run(&variant, seed);
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
    hearth_sim::plot::tradeoff(&scenario.name, &points, &svg)?;
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
        let mut report = hearth_sim::run(variant, seed);
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
        )?;
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
        )?;
    }
    println!(
        "wall time {:.1} s; plots in {}",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
