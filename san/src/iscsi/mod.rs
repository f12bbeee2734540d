//! A userspace iSCSI initiator (RFC 7143 subset: ERL 0, one connection per
//! session, multipath by sessions). Hosts without a kernel initiator reach
//! their LUNs through it; `pdu` and `text` are shared with our target.

pub mod login;
pub mod lun;
pub mod multipath;
pub mod pdu;
mod reservations;
pub mod session;
pub mod text;
pub mod uri;

pub use login::{discover, login, Chap, Connection, DiscoveredTarget, LoginOptions};
pub use lun::{IscsiLun, PendingRead};
pub use multipath::{Multipath, MultipathOptions, PathConfig, PathEvent, PathStatus, Selector};
pub use pdu::{Digests, Opcode, Pdu, PduError};
pub use session::{Completion, DataPhase, Owned, Pending, Session, SessionOptions};
pub use uri::{
    initiator_name, is_iscsi_uri, lockd_initiator_name, open_uri, open_uri_with,
    ssvd_initiator_name, IscsiUri, UriError, LOCKD_ISID_QUALIFIER,
};

use crate::scsi::{ScsiError, Sense, Status};
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum IscsiError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pdu(#[from] PduError),
    #[error("login parameters: {0}")]
    Text(#[from] text::TextError),
    #[error("login to {addr} refused: {}", login_status(*class, *detail))]
    LoginRejected {
        addr: SocketAddr,
        class: u8,
        detail: u8,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("path to {addr} is down: {why}")]
    PathDown { addr: SocketAddr, why: String },
    #[error("the target at {addr} failed the command (iSCSI response {response:#04x})")]
    TargetFailure { addr: SocketAddr, response: u8 },
    #[error("{lun}: {command}: {}", scsi_status(*status, sense))]
    Scsi {
        lun: String,
        command: &'static str,
        status: u8,
        sense: Option<Sense>,
    },
    #[error("bad SCSI data from the target: {0}")]
    Decode(ScsiError),
}

fn scsi_status(status: u8, sense: &Option<Sense>) -> String {
    match (status, sense) {
        (Status::RESERVATION_CONFLICT, _) => {
            "RESERVATION CONFLICT: this host is not registered for the LUN (fenced?)".into()
        }
        (Status::BUSY, _) => "target BUSY".into(),
        (Status::TASK_SET_FULL, _) => "TASK SET FULL".into(),
        (_, Some(s)) => format!("CHECK CONDITION, {s}"),
        (st, None) => format!("SCSI status {st:#04x}"),
    }
}

/// RFC 7143 §11.13.5, with what the operator should do.
fn login_status(class: u8, detail: u8) -> String {
    let what = match (class, detail) {
        (1, 1) => "target moved temporarily",
        (1, 2) => "target moved permanently",
        (2, 1) => "authentication failed: check the CHAP user and secret",
        (2, 2) => "forbidden: the target does not allow this initiator (check its ACL)",
        (2, 3) => "target not found: check the target name",
        (2, 4) => "target removed",
        (2, 5) => "unsupported iSCSI version",
        (2, 6) => "too many connections",
        (2, 7) => "missing parameter",
        (2, 8) => "cannot include in session",
        (2, 9) => "session type not supported",
        (2, 10) => "session does not exist",
        (2, 11) => "invalid request during login",
        (3, 1) => "target error (retry later)",
        (3, 2) => "service unavailable (retry later)",
        (3, 3) => "target out of resources (retry later)",
        _ => "unknown status",
    };
    format!("{what} (status {class:#04x}/{detail:#04x})")
}
