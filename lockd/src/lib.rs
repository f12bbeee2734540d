//! `lockd`: leases on shared storage, so hosts with no network between them
//! never write the same metadata or volume at once.
//!
//! Two tiers, as in sanlock, whose on-disk records we write byte for byte
//! (`FORMAT.md`):
//! - [`delta`]: a host id lease per host in a lockspace, renewed every
//!   2·io_timeout; other hosts watch it change to know the host is alive.
//! - [`paxos`]: resource leases decided by Disk Paxos on the disk itself,
//!   exclusive or shared, never renewed: they live as long as their host's
//!   delta lease.
//!
//! All lease I/O goes through [`leaseio::LeaseDev`], which bounds each I/O
//! by io_timeout. [`timing`] derives every timeout from io_timeout and states
//! the fencing inequality.

pub mod client;
pub mod clock;
mod crc32c;
pub mod daemon;
pub mod delta;
pub mod direct;
mod error;
pub mod leaseio;
pub mod paxos;
pub mod proto;
pub mod record;
mod sync;
pub mod timing;

pub use error::{Error, Result};
