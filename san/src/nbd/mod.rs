//! Our NBD server: any [`BlockDev`](crate::BlockDev) as named exports over
//! the NBD protocol (fixed newstyle handshake, simple replies), on a Unix
//! socket and/or TCP, so QEMU's tools (`qemu-img`, `qemu-io`, `qemu-nbd
//! -c`) reach ssv's volumes. `NBD.md` beside this crate says what is
//! supported and what is refused.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use san::{FileDev, OpenOptions};
//! # use san::nbd::{NbdConfig, NbdServer};
//! let server = NbdServer::start(NbdConfig::new().unix("/run/ssv/nbd.sock"))?;
//! let dev = FileDev::open("/srv/disk.img", &OpenOptions::new())?;
//! server.add_export("disk", Arc::new(dev), false)?;
//! // qemu-img info 'nbd+unix:///disk?socket=/run/ssv/nbd.sock'
//! server.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Threads: one listener per socket; one thread per connection that runs
//! the handshake, then reads requests (and write payloads) and queues
//! them; per connection a pool of workers (started on demand, at most
//! [`NbdConfig::workers`]) that run requests concurrently against the
//! device and send their replies. Byte ranges need not be aligned: reads
//! and writes are widened to whole logical sectors in aligned buffers, with
//! a read-modify-write of partial edge sectors. Everything from the network
//! is untrusted: malformed input gets an error reply or ends that
//! connection with a log line, nothing else.

mod connection;
mod export;
mod handshake;
mod ops;
pub mod proto;
mod queue;
mod registry;
mod server;
mod stream;

pub use registry::NbdStats;
pub use server::NbdServer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Most workers a connection may have.
pub const MAX_WORKERS: usize = 64;

/// Where a server listens and how much it runs at once.
#[derive(Clone, Debug)]
pub struct NbdConfig {
    /// A Unix socket path to create (it must not exist).
    pub unix: Option<PathBuf>,
    /// A TCP address; port 0 picks a free port.
    pub tcp: Option<SocketAddr>,
    /// Requests one connection runs at once (1..=[`MAX_WORKERS`]; default 8).
    pub workers: usize,
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            unix: None,
            tcp: None,
            workers: 8,
        }
    }
}

impl NbdConfig {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn unix(mut self, path: impl Into<PathBuf>) -> Self {
        self.unix = Some(path.into());
        self
    }
    pub fn tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp = Some(addr);
        self
    }
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
}

/// Why the server could not start, or an export could not be added.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("invalid NBD server configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start an NBD server thread: {0}")]
    Spawn(std::io::Error),
    #[error("NBD export {0:?} already exists")]
    ExportExists(String),
    #[error("invalid NBD export name {0:?} (at most 4096 bytes, no NUL)")]
    BadExportName(String),
}

/// Why one connection ended; logged, never returned to a caller.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Proto(#[from] proto::ProtoError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("handshake not completed within {0:?}")]
    Timeout(Duration),
    #[error("cannot start a worker thread: {0}")]
    Spawn(std::io::Error),
}
