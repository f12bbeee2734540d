//! SCSI, the command set every LUN speaks: CDBs, status and sense data, and
//! the parameter and response data of the commands ssv uses (SPC-4/SBC-3, as
//! summarised in `specs/iscsi-multipath.md` §2).
//!
//! Pure codecs, no I/O. The iSCSI initiator encodes CDBs and decodes
//! responses; the iSCSI target decodes CDBs and encodes responses; so every
//! format goes both ways. Integers are big-endian, as everywhere in SCSI.
//!
//! - Decoders take any bytes and never panic: what they cannot represent is a
//!   [`ScsiError`] that says which field held which value.
//! - Encoders of fixed layouts cannot fail. A field narrower than a byte is
//!   held in a `u8` and encoded through its mask, so only its low bits are
//!   written. Encoders of variable-length data fail ([`ScsiError::Unencodable`])
//!   when a length does not fit its field.
//! - Errors say where the bad bytes came from, because the target answers each
//!   kind with its own sense data ([`ScsiError::sense`]). Bad response data is
//!   the initiator's problem and has none.

pub mod capacity;
pub mod cdb;
pub mod inquiry;
pub mod pr;
pub mod sense;
pub mod unmap;

pub use capacity::CapacityData;
pub use cdb::{Cdb, DataDirection, PageControl};
pub use inquiry::{
    BlockLimits, Designator, DeviceIdentification, Provisioning, StandardInquiry, SupportedPages,
    UnitSerial,
};
pub use pr::{
    Capabilities, FullStatus, FullStatusDescriptor, PrInAction, PrOutAction, PrOutParams, PrType,
    ReadKeys, ReadReservation, Reservation, TransportId,
};
pub use sense::{classify, Action, Sense, Status};
pub use unmap::{UnmapDescriptor, UnmapParams};

/// Why bytes could not be decoded, or a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScsiError {
    /// A CDB whose operation code we do not implement.
    #[error("operation code {opcode:#04x} is not supported")]
    UnsupportedOpcode { opcode: u8 },
    /// A CDB that is too short, or has a field we do not accept.
    #[error("{command}: invalid {field} {value:#x} in the CDB")]
    InvalidCdbField {
        command: &'static str,
        field: &'static str,
        value: u64,
    },
    /// A parameter list (Data-Out) shorter than its format or its own header requires.
    #[error("{what}: parameter list of {len} bytes, {need} required")]
    ParameterListLength {
        what: &'static str,
        len: usize,
        need: usize,
    },
    /// A parameter list (Data-Out) with a field we do not accept.
    #[error("{what}: invalid {field} {value:#x} in the parameter list")]
    InvalidParameter {
        what: &'static str,
        field: &'static str,
        value: u64,
    },
    /// Response data cut short, typically by too small an allocation length.
    #[error("{what}: {len} bytes received, {need} needed (read again with an allocation length of at least {need})")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    /// Response data with a field we cannot interpret.
    #[error("{what}: invalid {field} {value:#x}")]
    InvalidData {
        what: &'static str,
        field: &'static str,
        value: u64,
    },
    /// A value that the format cannot carry.
    #[error("cannot encode {what}: {field} {problem}")]
    Unencodable {
        what: &'static str,
        field: &'static str,
        problem: String,
    },
}

impl ScsiError {
    /// The sense data a target returns (with CHECK CONDITION) for a CDB or a
    /// parameter list it could not decode; `None` for response-data and
    /// encoding errors, which a target never reports to an initiator.
    pub fn sense(&self) -> Option<Sense> {
        match self {
            ScsiError::UnsupportedOpcode { .. } => Some(Sense::INVALID_COMMAND_OPCODE),
            ScsiError::InvalidCdbField { .. } => Some(Sense::INVALID_FIELD_IN_CDB),
            ScsiError::ParameterListLength { .. } => Some(Sense::PARAMETER_LIST_LENGTH_ERROR),
            ScsiError::InvalidParameter { .. } => Some(Sense::INVALID_FIELD_IN_PARAMETER_LIST),
            ScsiError::Truncated { .. }
            | ScsiError::InvalidData { .. }
            | ScsiError::Unencodable { .. } => None,
        }
    }
}

// Big-endian field access. Callers check the length first; every decoder's
// length checks are exercised by the never-panic property tests.

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// The first `N` bytes of `data`, zero-filled past its end: for layouts whose
/// absent trailing fields mean "not reported".
fn padded<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = data.len().min(N);
    out[..n].copy_from_slice(&data[..n]);
    out
}

/// `len` as the value of a 16-bit length field, or why it does not fit.
fn len16(len: usize, what: &'static str, field: &'static str) -> Result<u16, ScsiError> {
    u16::try_from(len).map_err(|_| too_long(len, usize::from(u16::MAX), what, field))
}

/// `len` as the value of a 32-bit length field, or why it does not fit.
fn len32(len: usize, what: &'static str, field: &'static str) -> Result<u32, ScsiError> {
    u32::try_from(len).map_err(|_| too_long(len, u32::MAX as usize, what, field))
}

fn too_long(len: usize, max: usize, what: &'static str, field: &'static str) -> ScsiError {
    ScsiError::Unencodable {
        what,
        field,
        problem: format!("is {len} bytes, at most {max} fit"),
    }
}
