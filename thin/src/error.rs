pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a qcow2 image (no QFI\\xfb magic)")]
    NotQcow2,
    #[error("corrupt qcow2 image: {0}")]
    Corrupt(String),
    #[error("unsupported qcow2 image: {0}")]
    Unsupported(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("{0}")]
    Lvm(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error(
        "the chain under {top} is deeper than {limit} layers; delete (merge) a snapshot first"
    )]
    ChainTooDeep { top: String, limit: usize },
    #[error("{0}")]
    Dev(#[from] san::Error),
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

impl From<lvm::Error> for Error {
    fn from(e: lvm::Error) -> Self {
        Error::Lvm(e.to_string())
    }
}

impl Error {
    /// Says where the error happened, keeping its kind reachable via [`Error::root`].
    pub fn context(self, what: &str) -> Error {
        Error::Context {
            context: what.to_string(),
            source: Box::new(self),
        }
    }

    /// The error under any context.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            e => e,
        }
    }
}
