//! `ssvd`, the per-host service: pools on shared LUNs, thin volumes,
//! snapshots and clones in them, the growth service for writers, volumes
//! open for writing (holding their leases) and exported over NBD, events
//! and metrics, all behind a REST API on a Unix socket.
//!
//! - `config`: `ssv.toml`.
//! - `names` and `model`: how volumes live in LV names and tags.
//! - `leases`: the pool's lease area and ssvd's lockd connection.
//! - `mailbox`: hosts' pending extensions, combined into one commit.
//! - `pool`: one VG, changed under the pool lease; the growth service.
//! - `host`: the operations; `session`: open volumes; `vms`: volumes
//!   attached to VMMs, and the VMs ssvd runs.
//! - `api`: HTTP routes and the OpenAPI document.

pub mod api;
pub mod client;
pub mod clones;
pub mod config;
mod error;
pub mod events;
pub mod export;
mod growth;
pub mod host;
pub mod leases;
pub mod luns;
pub mod mailbox;
pub mod metrics;
pub mod model;
pub mod names;
pub mod pool;
mod restart;
pub mod session;
pub mod snapshots;
pub mod vms;
pub mod volumes;

pub use error::{Error, Result};
