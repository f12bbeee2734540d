//! Our own iSCSI target (RFC 7143, ERL 0, one connection per session):
//! any [`BlockDev`](crate::BlockDev) as LUNs on several portals, with
//! COMPARE AND WRITE, SPC-3 persistent reservations (PREEMPT AND ABORT and
//! READ FULL STATUS included) and fault hooks for tests. `TARGET.md` beside
//! this crate says what is implemented and what is not.
//!
//! Threads: one listener per portal, one thread per connection that reads
//! its PDUs and gathers each command's data, and per connection a pool of
//! workers (started on demand, at most 16) that run its commands
//! concurrently and send their answers. Everything from the network is
//! untrusted: a malformed PDU ends that connection with a log line and
//! nothing else.

mod book;
mod buf;
mod chap;
mod config;
mod connection;
mod faults;
mod login;
mod lu;
mod negotiate;
mod nexus;
mod pages;
mod pool;
mod pr;
mod registry;
mod response;
mod scsi;
mod sender;
mod server;
mod wire;

pub use config::{LunConfig, TargetConfig, TargetParams};
pub use faults::{Faults, Injection};
pub use registry::ServerStats;
pub use server::TargetServer;

use crate::iscsi::pdu::PduError;
use crate::iscsi::text::TextError;
use std::net::SocketAddr;
use std::time::Duration;

/// Why the target could not start.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid target configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a target thread: {0}")]
    Spawn(std::io::Error),
}

/// Why one connection ended; logged, never returned to a caller.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error(transparent)]
    Pdu(#[from] PduError),
    #[error("bad text data: {0}")]
    Text(#[from] TextError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("login refused with status {class:#04x}/{detail:#04x}: {why}")]
    LoginRefused { class: u8, detail: u8, why: String },
    #[error("login not completed within {0:?}")]
    LoginTimeout(Duration),
    #[error("no answer to our NOP-In within {0:?}")]
    NopTimeout(Duration),
    #[error("closed by the target: {0}")]
    Closed(&'static str),
    #[error("cannot start a worker thread: {0}")]
    Worker(std::io::Error),
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> ConnError {
        ConnError::Pdu(PduError::from(e))
    }
}

/// How often blocked reads wake up to look at stop requests and faults.
pub(crate) const TICK: Duration = Duration::from_millis(50);
