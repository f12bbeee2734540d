use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op} of {len} bytes at offset {offset} on {dev} failed: {source}")]
    Io {
        op: &'static str,
        dev: String,
        offset: u64,
        len: u64,
        source: std::io::Error,
    },
    #[error(
        "I/O of {len} bytes at offset {offset} is not aligned to the {sector}-byte logical sector"
    )]
    Misaligned { offset: u64, len: u64, sector: u32 },
    #[error("I/O of {len} bytes at offset {offset} is past the end of the device ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("invalid window: offset {offset} length {len} on a device of {size} bytes (must be sector-aligned and inside the device)")]
    BadWindow { offset: u64, len: u64, size: u64 },
    #[error("injected fault: {0}")]
    Injected(String),
}
