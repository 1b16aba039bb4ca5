//! The Hearth node daemon.
//!
//! A node loads (or creates) its identity, measures its hardware, joins the swarm through the
//! coordinator it was given (a multiaddr, or the coordinator's HTTP URL from which it learns the
//! multiaddrs), and publishes a signed [`hearth_protocol::Advert`] at start and on every heartbeat.
//! One event loop owns the swarm ([`run`]); it stops when the shutdown future resolves.

mod advert;
mod chain;
mod config;
mod error;
mod event_loop;
#[cfg(feature = "fault-injection")]
mod fault;
mod governor;
mod join;
mod limits;
mod prepare;
mod stages;
mod store;
mod weights;
mod worker;

pub use advert::capabilities;
pub use config::NodeConfig;
pub use error::{Error, Result};
pub use event_loop::run;
#[cfg(feature = "fault-injection")]
pub use fault::{FAULT_DELAY_MS_MAX, Fault};
pub use join::{JoinTarget, resolve};
pub use limits::*;
pub use store::scan_models;
pub use worker::OUTBOX_FILE;
