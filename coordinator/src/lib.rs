//! The Hearth coordinator.
//!
//! Flow: nodes' signed adverts arrive on gossip → the swarm loop checks them ([`hearth_net::Gossip`])
//! → the sans-IO [`Registry`] keeps each peer's capabilities and decides who is online → the HTTP API
//! reads the registry through the loop (`GET /v1/peers`, `GET /v1/swarm`).
//!
//! The [`Ledger`] (trust per peer and numeric class, strikes, quarantine, credit) is the first core
//! of sharded jobs; the scheduler and verifier that feed it come next.
//!
//! The decisions live in pure state machines (`handle(now_ms, input) -> outputs`) so the simulator and
//! tests drive them without sockets or clocks; [`run`] is the thin shell around them.

mod coop;
mod error;
mod feed;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod http;
pub mod journal;
pub mod keys;
mod ledger;
mod limits;
pub(crate) mod openai;
pub mod pipeline;
mod registry;
pub mod scheduler;
mod service;
mod sessions;
mod tls;
pub mod verifier;
mod work;

pub use error::{Error, Result};
pub use ledger::{Fault, Ledger, LedgerInput, LedgerOutput, Replication, Standing};
pub use limits::*;
pub use registry::{Input, Output, Registry};
pub use scheduler::{
    Delivery, JobSpec, JobState, JobStatus, Offer, Policy, Scheduler, UnitSpec, UnitState,
    UnitStatus, deadline_ms, unit_size,
};
pub use service::{API_URL_FILE, CoordinatorConfig, run};
pub use sessions::{GenerateRequest, SessionEvent};
pub use work::{JobInput, SubmitJob, Unavailable, output_lines};
