//! `hearth-core`: the decisions of a Hearth swarm as pure state machines.
//!
//! Nothing here does I/O, reads a clock or draws from the OS. Each core is
//! `handle(&mut self, now_ms, input) -> outputs`:
//!
//! - in: checked adverts and the passing of time ([`Registry`]); peers' requests for work, their
//!   deliveries (already signature-checked by the shell, which says so with marks), refusals, lost
//!   peers and ticks ([`Scheduler`], with the [`verifier`]'s rules and the [`Ledger`]); a route's
//!   candidates and each stage's results and failures ([`pipeline`]).
//! - out: who is online or lost; assignments, accepted and failed units, strikes and quarantines;
//!   steps to send, tokens to release, windows to check, peers to blame.
//! - randomness: every draw that matters for trust (spot checks, sampled windows, verifiers) comes
//!   from a seed the caller passes in ([`Policy::seed`], [`pipeline::Driver::sampled`]'s `seed`). The
//!   coordinator draws it from the OS and journals it; the simulator passes its own.
//!
//! `hearth-coordinator` drives these over libp2p, HTTP and its journal; `hearth-sim` drives the same
//! code against simulated peers on a virtual clock.

pub mod ledger;
pub mod limits;
mod peer_hash;
pub mod pipeline;
pub mod registry;
pub mod scheduler;
pub mod verifier;

pub use ledger::{Fault, Ledger, LedgerInput, LedgerOutput, Replication, Standing, Trust};
pub use peer_hash::{PeerHash, PeerMap};
pub use registry::Registry;
pub use scheduler::{
    Delivery, JobSpec, JobState, JobStatus, Offer, Policy, Scheduler, UnitSpec, UnitState,
    UnitStatus, deadline_ms, unit_size,
};
