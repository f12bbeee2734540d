//! I_T nexus identity (SAM-5 §4.6.4, RFC 7143 §4.4.2): the initiator port
//! (iSCSI name + ISID) and the target port (target portal group). Unit
//! attentions and persistent reservations belong to a nexus, not to a TCP
//! connection, so they survive a reconnect with the same ISID.

use std::fmt;

/// An iSCSI initiator port: name and ISID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct InitiatorPort {
    pub name: String,
    pub isid: [u8; 6],
}

/// An I_T nexus: an initiator port and the target portal group it reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Nexus {
    pub port: InitiatorPort,
    pub tpgt: u16,
}

impl fmt::Display for Nexus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},i,0x", self.port.name)?;
        for b in self.port.isid {
            write!(f, "{b:02x}")?;
        }
        write!(f, " via tpgt {}", self.tpgt)
    }
}
