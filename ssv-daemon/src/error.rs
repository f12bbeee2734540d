//! What ssvd operations fail with. Each kind maps to one HTTP status and one
//! `ssvctl` exit code, and every message says what to do next.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the caller (400).
    #[error("{0}")]
    Invalid(String),
    /// No such pool, volume, snapshot, LUN or job (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists: a different object under the
    /// same id, a volume in use, a layer other volumes depend on (409).
    #[error("{0}")]
    Conflict(String),
    /// The pool has no room (507).
    #[error("{0}")]
    NoSpace(String),
    /// A lease could not be had in time, or lockd is not there (503).
    #[error("{0}")]
    Unavailable(String),
    /// Storage or metadata failed underneath (500).
    #[error("{0}")]
    Storage(String),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::NoSpace(_) => "no_space",
            Error::Unavailable(_) => "unavailable",
            Error::Storage(_) => "storage",
        }
    }

    /// The same error with `what` in front of its message.
    pub fn context(self, what: impl std::fmt::Display) -> Error {
        let w = |m: String| format!("{what}: {m}");
        match self {
            Error::Invalid(m) => Error::Invalid(w(m)),
            Error::NotFound(m) => Error::NotFound(w(m)),
            Error::Conflict(m) => Error::Conflict(w(m)),
            Error::NoSpace(m) => Error::NoSpace(w(m)),
            Error::Unavailable(m) => Error::Unavailable(w(m)),
            Error::Storage(m) => Error::Storage(w(m)),
        }
    }
}

impl From<thin::Error> for Error {
    fn from(e: thin::Error) -> Self {
        let msg = e.to_string();
        match e.root() {
            thin::Error::InvalidArgument(_) | thin::Error::ChainTooDeep { .. } => {
                Error::Invalid(msg)
            }
            thin::Error::NoSpace(_) => Error::NoSpace(msg),
            thin::Error::NotFound(_) => Error::NotFound(msg),
            _ => Error::Storage(msg),
        }
    }
}

impl From<lvm::Error> for Error {
    fn from(e: lvm::Error) -> Self {
        let msg = e.to_string();
        match e {
            lvm::Error::NotFound { .. } => Error::NotFound(msg),
            lvm::Error::Exists { .. } => Error::Conflict(msg),
            lvm::Error::InvalidArgument(_)
            | lvm::Error::InvalidTag { .. }
            | lvm::Error::InvalidName { .. } => Error::Invalid(msg),
            lvm::Error::NoSpace { .. } => Error::NoSpace(msg),
            _ => Error::Storage(msg),
        }
    }
}

impl From<san::Error> for Error {
    fn from(e: san::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<lockd::Error> for Error {
    fn from(e: lockd::Error) -> Self {
        Error::Storage(format!("lease area: {e}"))
    }
}
