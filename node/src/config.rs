//! The node's configuration, with its defaults in one place.

use std::path::PathBuf;
use std::time::Duration;

use hearth_net::NetConfig;

use crate::limits::HEARTBEAT_INTERVAL;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Folder holding the identity key and the node's state.
    pub data_dir: PathBuf,
    /// Coordinators (or other peers) to join: multiaddrs, or a coordinator's HTTP URL.
    pub join: Vec<String>,
    /// Folder of model files the node holds.
    pub models_dir: PathBuf,
    /// Transports, listen addresses, mDNS.
    pub net: NetConfig,
    /// Interval between adverts.
    pub heartbeat_interval: Duration,
    /// Threads the node will use for work; defaults to all the cores it may use.
    pub threads: Option<u32>,
    /// Units the node runs at once.
    pub max_concurrent: u32,
    /// Take work only while the host's owner is not using the CPU (`--idle-only`).
    pub idle_only: bool,
    /// Most memory for models and caches, bytes (`--max-memory`): advertised as the node's memory,
    /// so the coordinator plans within it, and enforced when a stage loads.
    pub max_memory: Option<u64>,
    /// Most bytes a second served to peers fetching model files (`--max-upload-rate`).
    pub max_upload_rate: Option<u64>,
    /// Most disk the layers fetched from peers take in the models folder (`--max-disk`).
    pub max_disk: Option<u64>,
    /// Behind a NAT: reserve a slot on the relay of each coordinator joined (`--behind-nat`).
    pub behind_nat: bool,
    /// This node's co-op membership certificates (`--coop-cert`, one per co-op, at most
    /// [`hearth_net::coop::COOPS_MAX`]): presented to the swarm; a coordinator must show a
    /// certificate of one of these co-ops.
    pub coop_certs: Vec<hearth_protocol::coop::Membership>,
    /// Misbehave on purpose, to show the swarm catching it.
    #[cfg(feature = "fault-injection")]
    pub fault: Option<crate::Fault>,
}

impl NodeConfig {
    /// A configuration with Hearth's defaults for everything but the data folder.
    pub fn new(data_dir: PathBuf, models_dir: PathBuf) -> Self {
        Self {
            data_dir,
            join: Vec::new(),
            models_dir,
            net: NetConfig {
                agent: format!("hearth-node/{}", env!("CARGO_PKG_VERSION")),
                ..NetConfig::default()
            },
            heartbeat_interval: HEARTBEAT_INTERVAL,
            threads: None,
            max_concurrent: 1,
            idle_only: false,
            max_memory: None,
            max_upload_rate: None,
            max_disk: None,
            behind_nat: false,
            coop_certs: Vec::new(),
            #[cfg(feature = "fault-injection")]
            fault: None,
        }
    }
}
