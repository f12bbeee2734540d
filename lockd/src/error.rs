use std::time::Duration;

use crate::record::RecordError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Lease errors. [`Error::code`] gives sanlock's number for the same
/// condition, so operators who know sanlock's logs recognise them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lease I/O on {dev} at offset {offset}: {source}")]
    Io {
        dev: String,
        offset: u64,
        source: san::Error,
    },
    #[error("lease I/O on {dev} at offset {offset} took longer than {limit:?}; check the storage path (multipath, SAN latency)")]
    Timeout {
        dev: String,
        offset: u64,
        limit: Duration,
    },
    #[error("{what} at {dev} offset {offset}: {source}; run `lockd direct dump` to inspect, `lockd direct init` only if the area is unused")]
    BadRecord {
        what: &'static str,
        dev: String,
        offset: u64,
        source: RecordError,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("host id {host_id} in lockspace {space} is in use by host {owner:?}; pick a free host id or wait until that host is gone")]
    HostIdBusy {
        space: String,
        host_id: u64,
        owner: String,
    },
    #[error("our delta lease in lockspace {space} was overwritten ({what}); another host may use host id {host_id}")]
    RenewCorrupt {
        space: String,
        host_id: u64,
        what: String,
    },
    #[error("lockspace {space}: our host id lease is no longer valid (not renewed for {since:?}); no lease writes are allowed")]
    LeaseExpired { space: String, since: Duration },
    #[error("resource {resource} is held by live host {owner_id} (generation {owner_generation})")]
    HeldByLiveHost {
        resource: String,
        owner_id: u64,
        owner_generation: u64,
    },
    #[error("resource {resource} is held by host {owner_id}, {}; if that host is dead the lease can be taken over in {remaining:?} (acquire with wait)", if *seen_renewing { "which stopped renewing" } else { "whose renewals we have not watched long enough" })]
    OwnedRetry {
        resource: String,
        owner_id: u64,
        remaining: Duration,
        seen_renewing: bool,
    },
    #[error("resource {resource} lease version {lver} went to host {owner_id}")]
    AcquiredByOther {
        resource: String,
        lver: u64,
        owner_id: u64,
    },
    #[error("resource {resource} is held shared by live hosts {hosts:?}")]
    SharedHeld { resource: String, hosts: Vec<u64> },
    #[error("resource {resource}: ballot for lease version {lver} kept losing to other hosts ({attempts} attempts)")]
    Contended {
        resource: String,
        lver: u64,
        attempts: u32,
    },
    #[error("resource {resource}: we do not hold lease version {lver} any more (leader now lver {now_lver}, owner {now_owner})")]
    NotOwner {
        resource: String,
        lver: u64,
        now_lver: u64,
        now_owner: u64,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// sanlock's return code for the same condition (`sanlock_rv.h`).
    pub fn code(&self) -> i32 {
        match self {
            Error::Io { .. } => -5,
            Error::Timeout { .. } => -202,
            Error::BadRecord { source, .. } => match source {
                RecordError::Magic { .. } | RecordError::Cleared => -223,
                RecordError::Version { .. } => -224,
                RecordError::Checksum { .. } => -228,
                _ => -229,
            },
            Error::InvalidArgument(_) => -22,
            Error::HostIdBusy { .. } => -262,
            Error::RenewCorrupt { .. } => -260,
            Error::LeaseExpired { .. } => -210,
            Error::HeldByLiveHost { .. } => -243,
            Error::OwnedRetry { .. } => -247,
            Error::AcquiredByOther { .. } => -245,
            Error::SharedHeld { .. } => -11,
            Error::Contended { .. } => -213,
            Error::NotOwner { .. } => -251,
            Error::Cancelled => -125,
            Error::Internal(_) => -1,
        }
    }

    /// Worth retrying later: someone else holds or is taking the lease.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            Error::HeldByLiveHost { .. }
                | Error::OwnedRetry { .. }
                | Error::AcquiredByOther { .. }
                | Error::SharedHeld { .. }
                | Error::Contended { .. }
        )
    }
}
