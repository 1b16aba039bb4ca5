//! `hearth node` and `hearth coordinator`: merge flags, environment and config, then run until a
//! signal.

use hearth_coordinator::CoordinatorConfig;
use hearth_net::libp2p::Multiaddr;
use hearth_node::NodeConfig;

use crate::cli::{CoordinatorArgs, NodeArgs};
use crate::config::{FileConfig, default_data_dir, pick};
use crate::shutdown_signal;

pub(crate) async fn node(args: NodeArgs, file: FileConfig) -> anyhow::Result<()> {
    let models_dir = args.models.resolve(&file)?;
    let data_dir = pick(args.data_dir, file.node.data_dir, || {
        default_data_dir("node")
    })?;
    let mut config = NodeConfig::new(data_dir, models_dir);
    config.join = non_empty(args.join).or(file.node.join).unwrap_or_default();
    if let Some(listen) = non_empty(args.listen).or(file.node.listen) {
        config.net.listen = multiaddrs(&listen)?;
    }
    config.net.mdns = !args.no_mdns && file.node.mdns.unwrap_or(true);
    config.net.relay = args.relay;
    config.behind_nat = args.behind_nat;
    config.threads = args.max_threads.or(file.node.max_threads);
    if config.threads == Some(0) {
        anyhow::bail!("--max-threads must be at least 1");
    }
    config.max_concurrent = args.max_concurrent;
    config.idle_only = args.idle_only;
    config.max_memory = args.max_memory;
    if args.max_upload_rate == Some(0) {
        anyhow::bail!("--max-upload-rate must be more than 0 (leave it out for no limit)");
    }
    config.max_upload_rate = args.max_upload_rate;
    config.max_disk = args.max_disk;
    if args.coop_cert.len() > hearth_net::coop::COOPS_MAX {
        anyhow::bail!(
            "--coop-cert given {} times: a node may be in at most {} co-ops",
            args.coop_cert.len(),
            hearth_net::coop::COOPS_MAX
        );
    }
    for path in &args.coop_cert {
        let cert: hearth_protocol::coop::Membership = crate::coop::read_armored(path)?;
        if config
            .coop_certs
            .iter()
            .any(|c| c.body.coop == cert.body.coop)
        {
            anyhow::bail!(
                "{} is a second certificate of co-op {}: give one certificate per co-op (the newest, if one was renewed)",
                path.display(),
                cert.body.coop.peer_id()
            );
        }
        config.coop_certs.push(cert);
    }
    // A forced kernel path this CPU lacks is refused at start, not at the first unit of work.
    if hearth_kernels::compute_device().is_cpu() {
        hearth_kernels::cpu_kernels()?;
    }
    #[cfg(feature = "fault-injection")]
    {
        if let Some(hearth_node::Fault::Delay(ms)) = args.fault {
            config.net.send_delay = Some(std::time::Duration::from_millis(ms.into()));
        }
        config.fault = args.fault;
    }
    hearth_node::run(config, shutdown_signal()).await?;
    Ok(())
}

pub(crate) async fn coordinator(args: CoordinatorArgs, file: FileConfig) -> anyhow::Result<()> {
    let models_dir = args.models.resolve(&file)?;
    let data_dir = pick(args.data_dir, file.coordinator.data_dir, || {
        default_data_dir("coordinator")
    })?;
    let mut config = CoordinatorConfig::new(data_dir);
    if let Some(listen) = non_empty(args.listen).or(file.coordinator.listen) {
        config.net.listen = multiaddrs(&listen)?;
    }
    if let Some(http) = args.http.or(file.coordinator.http) {
        config.http = http;
    }
    config.net.mdns = !args.no_mdns && file.coordinator.mdns.unwrap_or(true);
    config.net.relay = !args.no_relay;
    config.replicas = args.replicas;
    config.peers_max = args.peers_max;
    config.models_dir = Some(models_dir);
    config.open = args.open;
    config.insecure_http = args.insecure_http;
    config.tls = args.tls_cert.zip(args.tls_key);
    // The dashboard's page at `/`, beside the API it reads.
    config.routes = Some(hearth_dashboard::router());
    config.coop = args.coop;
    config.group = match &args.group_file {
        Some(path) => read_group_file(path)?,
        None => args.group,
    };
    if args.group_join && config.group.is_empty() {
        anyhow::bail!("--group-join needs the group's members: give --group or --group-file");
    }
    config.group_join = args.group_join;
    #[cfg(feature = "fault-injection")]
    match args.fault {
        None => {}
        Some(hearth_node::Fault::Delay(ms)) => {
            tracing::warn!(
                ms,
                "fault injection on: everything this coordinator sends waits {ms} ms"
            );
            config.net.send_delay = Some(std::time::Duration::from_millis(ms.into()));
        }
        Some(other) => {
            anyhow::bail!("a coordinator takes only --fault delay=MS, not {other}");
        }
    }
    hearth_coordinator::run(config, shutdown_signal()).await?;
    Ok(())
}

/// A group file: one member's group address per line; blank lines and `#` comments skipped.
fn read_group_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--group-file {}: {e}", path.display()))?;
    let members: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if members.is_empty() {
        anyhow::bail!(
            "--group-file {}: no member addresses in it (one per line, each ending in /p2p/PEER_ID)",
            path.display()
        );
    }
    Ok(members)
}

fn non_empty(values: Vec<String>) -> Option<Vec<String>> {
    (!values.is_empty()).then_some(values)
}

fn multiaddrs(values: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    values
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|e| anyhow::anyhow!("--listen {v:?}: not a multiaddr ({e})"))
        })
        .collect()
}
