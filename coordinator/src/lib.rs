//! The Hearth coordinator.
//!
//! Flow: nodes' signed adverts arrive on gossip → the swarm loop checks them ([`hearth_net::Gossip`])
//! → the sans-IO [`Registry`] keeps each peer's capabilities and decides who is online → the HTTP API
//! reads the registry through the loop (`GET /v1/peers`, `GET /v1/swarm`).
//!
//! Sharded jobs: nodes ask for work over the work protocol → the [`Scheduler`] (with its verifier and
//! [`Ledger`]) assigns units, judges what comes back and accepts a unit once a quorum agrees → each
//! input and decision is committed to the journal (redb) before the node hears back. Pipelined
//! generation: the sessions shell plans a route and runs a [`pipeline::Driver`] per session.
//!
//! The decisions live in [`hearth_core`]'s pure state machines (`handle(now_ms, input) -> outputs`),
//! so the simulator and tests drive them without sockets or clocks; this crate is the shell around
//! them ([`run`]): the swarm, the HTTP and OpenAI APIs, the journal, keys and co-op files. The seed
//! behind every random check is drawn from the OS when a journal is new and kept in it.

mod coop;
mod error;
mod feed;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
mod headers;
mod http;
pub mod journal;
pub mod keys;
mod limits;
mod models;
pub(crate) mod openai;
mod service;
mod sessions;
mod tls;
mod work;

pub use hearth_core::{ledger, pipeline, registry, scheduler, verifier};

pub use error::{Error, Result};
pub use hearth_core::ledger::{Fault, Ledger, LedgerInput, LedgerOutput, Replication, Standing};
pub use hearth_core::registry::{Input, Output, Registry};
pub use hearth_core::scheduler::{
    Delivery, JobSpec, JobState, JobStatus, Offer, Policy, Scheduler, UnitSpec, UnitState,
    UnitStatus, deadline_ms, unit_size,
};
pub use limits::*;
pub use service::{API_URL_FILE, CoordinatorConfig, run};
pub use sessions::{Correction, GenerateRequest, HopTimes, SessionEvent, Summary, Trail};
pub use work::{JobInput, JobView, Refused, SubmitJob, Unavailable, UnitView, output_lines};
