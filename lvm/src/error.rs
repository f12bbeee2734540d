pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the LVM engine. Each says what was wrong and, where the operator
/// can act, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} on {dev}: {source}")]
    Io {
        what: &'static str,
        dev: String,
        source: san::Error,
    },
    #[error("{dev}: no LVM2 label in the first 4 sectors (not a physical volume; format it with `ssvadm pv format`)")]
    NoLabel { dev: String },
    #[error("{dev}: bad PV label: {reason}")]
    BadLabel { dev: String, reason: String },
    #[error("{dev}: bad metadata area header at byte {start}: {reason}")]
    BadMdaHeader {
        dev: String,
        start: u64,
        reason: String,
    },
    #[error("{dev}: bad metadata text in the area at byte {start}: {reason}")]
    BadText {
        dev: String,
        start: u64,
        reason: String,
    },
    #[error("VG metadata: {0}")]
    Metadata(String),
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag { tag: String, reason: &'static str },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    Exists { kind: &'static str, name: String },
    #[error("not enough free extents in VG {vg}: need {needed}, {free} free (add a LUN to the pool, or free space)")]
    NoSpace { vg: String, needed: u64, free: u64 },
    #[error("metadata of {len} bytes does not fit the {area} byte metadata area on {dev} (at most {max} bytes); re-create the PV with a larger metadata area")]
    MetadataTooLarge {
        dev: String,
        len: u64,
        max: u64,
        area: u64,
    },
    #[error(
        "VG {vg} changed on disk since it was read ({detail}); re-read it and retry the change"
    )]
    Stale { vg: String, detail: String },
    #[error("refusing to write VG {vg}: {reason}")]
    Refused { vg: String, reason: String },
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, dev: &dyn san::BlockDev, source: san::Error) -> Self {
        Error::Io {
            what,
            dev: dev.identity().to_string(),
            source,
        }
    }
}
