//! Status and sense data: how a target says a command failed, and what the
//! multipath layer does about it ([`classify`], the table in spec §1.6).
//!
//! Sense data comes in two formats. Targets such as tgtd send the fixed one;
//! the descriptor one is the only way to carry a 64-bit INFORMATION field.
//! Both are decoded the way Linux does (`scsi_normalize_sense`): what the
//! additional sense length or the buffer leaves out reads as zero.

use std::fmt;

use super::{be32, be64, padded, put32, put64, ScsiError};

/// Sense keys (SPC-4 §4.5.6).
pub const NO_SENSE: u8 = 0x0;
pub const RECOVERED_ERROR: u8 = 0x1;
pub const NOT_READY: u8 = 0x2;
pub const MEDIUM_ERROR: u8 = 0x3;
pub const HARDWARE_ERROR: u8 = 0x4;
pub const ILLEGAL_REQUEST: u8 = 0x5;
pub const UNIT_ATTENTION: u8 = 0x6;
pub const DATA_PROTECT: u8 = 0x7;
pub const ABORTED_COMMAND: u8 = 0xB;
pub const MISCOMPARE: u8 = 0xE;

/// Byte 0: response code, and VALID (fixed format: INFORMATION is set).
const RESPONSE_CODE_MASK: u8 = 0x7F;
const VALID: u8 = 0x80;
const FIXED_CURRENT: u8 = 0x70;
const FIXED_DEFERRED: u8 = 0x71;
const DESCRIPTOR_CURRENT: u8 = 0x72;
const DESCRIPTOR_DEFERRED: u8 = 0x73;
const KEY_MASK: u8 = 0x0F;

/// Fixed format: 18 bytes as we send it.
const FIXED_LEN: usize = 18;
const FIXED_KEY: usize = 2;
const FIXED_INFO: usize = 3;
const FIXED_INFO_END: usize = 7;
const FIXED_ADDITIONAL_LEN: usize = 7;
const FIXED_ASC: usize = 12;
const FIXED_ASCQ: usize = 13;
/// Fewest bytes that still carry the sense key.
const FIXED_MIN: usize = FIXED_KEY + 1;

/// Descriptor format: an 8-byte header, then descriptors of 2 + length bytes.
const DESC_HEADER_LEN: usize = 8;
const DESC_KEY: usize = 1;
const DESC_ASC: usize = 2;
const DESC_ASCQ: usize = 3;
const DESC_ADDITIONAL_LEN: usize = 7;
const DESC_MIN: usize = DESC_KEY + 1;
/// The information descriptor: type 0, length 0x0A, VALID in byte 2, the
/// 64-bit INFORMATION at 4-11.
const INFO_DESC_TYPE: u8 = 0x00;
const INFO_DESC_ADDITIONAL_LEN: u8 = 0x0A;
const INFO_DESC_LEN: usize = 12;
const INFO_DESC_VALID: usize = 2;
const INFO_DESC_VALUE: usize = 4;

/// Sense data: key, additional sense code and qualifier, INFORMATION.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sense {
    /// The sense key, 4 bits.
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field when VALID: e.g. the offset of the first
    /// differing byte of a COMPARE AND WRITE miscompare, or a failing LBA.
    pub info: Option<u64>,
    /// A deferred error (0x71/0x73): it belongs to an earlier command, and the
    /// one that got it was not performed.
    pub deferred: bool,
}

impl Sense {
    /// 02/04/01: logical unit is in process of becoming ready.
    pub const BECOMING_READY: Sense = Sense::new(NOT_READY, 0x04, 0x01);
    /// 02/04/0A: asymmetric access state transition (ALUA).
    pub const ALUA_TRANSITIONING: Sense = Sense::new(NOT_READY, 0x04, 0x0A);
    /// 02/04/0B: target port in standby state (ALUA).
    pub const ALUA_STANDBY: Sense = Sense::new(NOT_READY, 0x04, 0x0B);
    /// 02/04/0C: target port in unavailable state (ALUA).
    pub const ALUA_UNAVAILABLE: Sense = Sense::new(NOT_READY, 0x04, 0x0C);
    /// 03/11/00: unrecovered read error.
    pub const READ_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x11, 0x00);
    /// 03/0C/00: write error.
    pub const WRITE_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x0C, 0x00);
    /// 05/1A/00: parameter list length error.
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(ILLEGAL_REQUEST, 0x1A, 0x00);
    /// 05/20/00: invalid command operation code.
    pub const INVALID_COMMAND_OPCODE: Sense = Sense::new(ILLEGAL_REQUEST, 0x20, 0x00);
    /// 05/21/00: logical block address out of range.
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(ILLEGAL_REQUEST, 0x21, 0x00);
    /// 05/24/00: invalid field in CDB.
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(ILLEGAL_REQUEST, 0x24, 0x00);
    /// 05/25/00: logical unit not supported.
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(ILLEGAL_REQUEST, 0x25, 0x00);
    /// 05/26/00: invalid field in parameter list.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense = Sense::new(ILLEGAL_REQUEST, 0x26, 0x00);
    /// 06/29/00: power on, reset, or bus device reset occurred.
    pub const POWER_ON_RESET: Sense = Sense::new(UNIT_ATTENTION, 0x29, 0x00);
    /// 06/2A/03: reservations preempted.
    pub const RESERVATIONS_PREEMPTED: Sense = Sense::new(UNIT_ATTENTION, 0x2A, 0x03);
    /// 06/2A/04: reservations released.
    pub const RESERVATIONS_RELEASED: Sense = Sense::new(UNIT_ATTENTION, 0x2A, 0x04);
    /// 06/2A/05: registrations preempted.
    pub const REGISTRATIONS_PREEMPTED: Sense = Sense::new(UNIT_ATTENTION, 0x2A, 0x05);
    /// 06/2A/06: asymmetric access state changed (ALUA).
    pub const ALUA_STATE_CHANGED: Sense = Sense::new(UNIT_ATTENTION, 0x2A, 0x06);
    /// 06/2A/09: capacity data has changed.
    pub const CAPACITY_CHANGED: Sense = Sense::new(UNIT_ATTENTION, 0x2A, 0x09);
    /// 06/3F/03: inquiry data has changed.
    pub const INQUIRY_DATA_CHANGED: Sense = Sense::new(UNIT_ATTENTION, 0x3F, 0x03);
    /// 06/3F/0E: reported LUNs data has changed.
    pub const REPORTED_LUNS_CHANGED: Sense = Sense::new(UNIT_ATTENTION, 0x3F, 0x0E);
    /// 0B/00/00: aborted command, no additional sense.
    pub const ABORTED: Sense = Sense::new(ABORTED_COMMAND, 0x00, 0x00);
    /// 0E/1D/00: miscompare during verify (COMPARE AND WRITE); INFORMATION
    /// holds the offset of the first differing byte ([`Sense::with_info`]).
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(MISCOMPARE, 0x1D, 0x00);

    /// A current (not deferred) condition without INFORMATION.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            deferred: false,
        }
    }

    /// The same condition with INFORMATION set.
    pub const fn with_info(self, info: u64) -> Sense {
        Sense {
            info: Some(info),
            ..self
        }
    }

    /// Whether key, ASC and ASCQ are those of `other` (INFORMATION and
    /// deferral aside): how callers test for a named condition.
    pub fn is(&self, other: Sense) -> bool {
        (self.key, self.asc, self.ascq) == (other.key, other.asc, other.ascq)
    }

    /// Decodes fixed (0x70/0x71) or descriptor (0x72/0x73) sense data.
    pub fn decode(data: &[u8]) -> Result<Sense, ScsiError> {
        let Some(&first) = data.first() else {
            return Err(truncated(0, FIXED_MIN));
        };
        match first & RESPONSE_CODE_MASK {
            code @ (FIXED_CURRENT | FIXED_DEFERRED) => {
                if data.len() < FIXED_MIN {
                    return Err(truncated(data.len(), FIXED_MIN));
                }
                // The additional sense length bounds what follows byte 7.
                let end = match data.get(FIXED_ADDITIONAL_LEN) {
                    Some(&n) => data.len().min(FIXED_ADDITIONAL_LEN + 1 + usize::from(n)),
                    None => data.len(),
                };
                let b: [u8; FIXED_LEN] = padded(&data[..end]);
                let info = (first & VALID != 0 && data.len() >= FIXED_INFO_END)
                    .then(|| u64::from(be32(data, FIXED_INFO)));
                Ok(Sense {
                    key: b[FIXED_KEY] & KEY_MASK,
                    asc: b[FIXED_ASC],
                    ascq: b[FIXED_ASCQ],
                    info,
                    deferred: code == FIXED_DEFERRED,
                })
            }
            code @ (DESCRIPTOR_CURRENT | DESCRIPTOR_DEFERRED) => {
                if data.len() < DESC_MIN {
                    return Err(truncated(data.len(), DESC_MIN));
                }
                let b: [u8; DESC_HEADER_LEN] = padded(data);
                let end = data
                    .len()
                    .min(DESC_HEADER_LEN + usize::from(b[DESC_ADDITIONAL_LEN]));
                Ok(Sense {
                    key: b[DESC_KEY] & KEY_MASK,
                    asc: b[DESC_ASC],
                    ascq: b[DESC_ASCQ],
                    info: data
                        .get(DESC_HEADER_LEN..end)
                        .and_then(information_descriptor),
                    deferred: code == DESCRIPTOR_DEFERRED,
                })
            }
            code => Err(ScsiError::InvalidData {
                what: "sense data",
                field: "response code",
                value: code.into(),
            }),
        }
    }

    /// Encodes fixed-format sense data (18 bytes), with VALID and INFORMATION
    /// when `info` is set. An `info` wider than 32 bits does not fit the fixed
    /// format, so that sense goes out in descriptor format with an
    /// information descriptor (20 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let info32 = match self.info {
            None => None,
            Some(i) => match u32::try_from(i) {
                Ok(i) => Some(i),
                Err(_) => return self.encode_descriptor(i),
            },
        };
        let mut b = vec![0u8; FIXED_LEN];
        b[0] = if self.deferred {
            FIXED_DEFERRED
        } else {
            FIXED_CURRENT
        };
        if let Some(i) = info32 {
            b[0] |= VALID;
            put32(&mut b, FIXED_INFO, i);
        }
        b[FIXED_KEY] = self.key & KEY_MASK;
        b[FIXED_ADDITIONAL_LEN] = (FIXED_LEN - FIXED_ADDITIONAL_LEN - 1) as u8;
        b[FIXED_ASC] = self.asc;
        b[FIXED_ASCQ] = self.ascq;
        b
    }

    fn encode_descriptor(&self, info: u64) -> Vec<u8> {
        let mut b = vec![0u8; DESC_HEADER_LEN + INFO_DESC_LEN];
        b[0] = if self.deferred {
            DESCRIPTOR_DEFERRED
        } else {
            DESCRIPTOR_CURRENT
        };
        b[DESC_KEY] = self.key & KEY_MASK;
        b[DESC_ASC] = self.asc;
        b[DESC_ASCQ] = self.ascq;
        b[DESC_ADDITIONAL_LEN] = INFO_DESC_LEN as u8;
        let d = DESC_HEADER_LEN;
        b[d] = INFO_DESC_TYPE;
        b[d + 1] = INFO_DESC_ADDITIONAL_LEN;
        b[d + INFO_DESC_VALID] = VALID;
        put64(&mut b, d + INFO_DESC_VALUE, info);
        b
    }

    /// What the multipath layer does about this CHECK CONDITION (spec §1.6).
    pub fn classify(&self) -> Action {
        if self.deferred {
            // The earlier command's failure is reported; this one was not run.
            return Action::Retry;
        }
        match (self.key, self.asc, self.ascq) {
            (RECOVERED_ERROR, _, _) => Action::Complete,
            (NO_SENSE, _, _) => Action::Retry,
            (NOT_READY, 0x04, 0x01 | 0x0A) => Action::RetryAfterDelay,
            // Standby, unavailable, and any other not-ready state of this
            // path (what multipath's tur checker reports as down).
            (NOT_READY, _, _) => Action::PathDown,
            (UNIT_ATTENTION, 0x2A, 0x09) | (UNIT_ATTENTION, 0x3F, 0x03 | 0x0E) => {
                Action::RetryRescan
            }
            (UNIT_ATTENTION, 0x2A, 0x03..=0x05) => Action::RetryPrLost,
            (UNIT_ATTENTION, 0x2A, 0x06) => Action::RetryRegroup,
            (UNIT_ATTENTION, _, _) => Action::Retry,
            (ILLEGAL_REQUEST, 0x25, 0x00) => Action::PathDown,
            (ABORTED_COMMAND, _, _) => Action::RetryAnyPath,
            // ILLEGAL REQUEST, MEDIUM ERROR, HARDWARE ERROR, DATA PROTECT,
            // MISCOMPARE and the rest: the same on every path.
            _ => Action::TargetError,
        }
    }
}

/// INFORMATION from the first valid information descriptor, if any. A
/// malformed descriptor ends the walk: key, ASC and ASCQ are what count.
fn information_descriptor(mut descriptors: &[u8]) -> Option<u64> {
    while let [kind, len, ..] = *descriptors {
        let total = 2 + usize::from(len);
        let d = descriptors.get(..total)?;
        if kind == INFO_DESC_TYPE && d.len() >= INFO_DESC_LEN && d[INFO_DESC_VALID] & VALID != 0 {
            return Some(be64(d, INFO_DESC_VALUE));
        }
        descriptors = &descriptors[total..];
    }
    None
}

fn truncated(len: usize, need: usize) -> ScsiError {
    ScsiError::Truncated {
        what: "sense data",
        len,
        need,
    }
}

/// The name of a sense key, for messages.
pub fn key_name(key: u8) -> &'static str {
    match key {
        NO_SENSE => "NO SENSE",
        RECOVERED_ERROR => "RECOVERED ERROR",
        NOT_READY => "NOT READY",
        MEDIUM_ERROR => "MEDIUM ERROR",
        HARDWARE_ERROR => "HARDWARE ERROR",
        ILLEGAL_REQUEST => "ILLEGAL REQUEST",
        UNIT_ATTENTION => "UNIT ATTENTION",
        DATA_PROTECT => "DATA PROTECT",
        ABORTED_COMMAND => "ABORTED COMMAND",
        MISCOMPARE => "MISCOMPARE",
        _ => "sense key",
    }
}

/// `ILLEGAL REQUEST 05/20/00`, plus INFORMATION and deferral when present.
impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:02x}/{:02x}/{:02x}",
            key_name(self.key),
            self.key,
            self.asc,
            self.ascq
        )?;
        if let Some(i) = self.info {
            write!(f, " information {i:#x}")?;
        }
        if self.deferred {
            f.write_str(" (deferred)")?;
        }
        Ok(())
    }
}

/// SCSI status (SAM-5 §5.3), the byte of the iSCSI SCSI Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Good,
    /// Sense data follows.
    CheckCondition,
    ConditionMet,
    Busy,
    /// This I_T nexus is not registered or not allowed by the reservation.
    ReservationConflict,
    TaskSetFull,
    AcaActive,
    TaskAborted,
    /// A status byte this codec has no name for.
    Other(u8),
}

impl Status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

impl From<u8> for Status {
    fn from(b: u8) -> Status {
        match b {
            Status::GOOD => Status::Good,
            Status::CHECK_CONDITION => Status::CheckCondition,
            Status::CONDITION_MET => Status::ConditionMet,
            Status::BUSY => Status::Busy,
            Status::RESERVATION_CONFLICT => Status::ReservationConflict,
            Status::TASK_SET_FULL => Status::TaskSetFull,
            Status::ACA_ACTIVE => Status::AcaActive,
            Status::TASK_ABORTED => Status::TaskAborted,
            other => Status::Other(other),
        }
    }
}

impl From<Status> for u8 {
    fn from(s: Status) -> u8 {
        match s {
            Status::Good => Status::GOOD,
            Status::CheckCondition => Status::CHECK_CONDITION,
            Status::ConditionMet => Status::CONDITION_MET,
            Status::Busy => Status::BUSY,
            Status::ReservationConflict => Status::RESERVATION_CONFLICT,
            Status::TaskSetFull => Status::TASK_SET_FULL,
            Status::AcaActive => Status::ACA_ACTIVE,
            Status::TaskAborted => Status::TASK_ABORTED,
            Status::Other(b) => b,
        }
    }
}

/// What the multipath layer does with a completed command (spec §1.6).
/// Whether a command may be replayed at all (CAW, PR OUT and UNMAP may not,
/// blindly) is the caller's decision; this only says where and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Done: GOOD, CONDITION MET, or RECOVERED ERROR.
    Complete,
    /// Retry at once on the same path: unit attentions such as 06/29/xx
    /// (tgtd sends it to the first command of every new I_T nexus).
    Retry,
    /// Retry, then re-read what changed: capacity (06/2A/09), INQUIRY data
    /// (06/3F/03) or the LUN inventory (06/3F/0E).
    RetryRescan,
    /// Retry, but this host's registration or reservation is gone (06/2A/03,
    /// 06/2A/04, 06/2A/05): mark the PR state lost.
    RetryPrLost,
    /// Re-read REPORT TARGET PORT GROUPS, regroup the paths, retry (06/2A/06).
    RetryRegroup,
    /// Retry on the same path after a delay: 02/04/01, 02/04/0A, BUSY.
    RetryAfterDelay,
    /// TASK SET FULL: retry on the same path after a delay, and lower the
    /// path's queue depth.
    QueueFull,
    /// Retry on any path: ABORTED COMMAND, or CHECK CONDITION without sense.
    RetryAnyPath,
    /// This path cannot reach the LU (02/04/0B standby, 02/04/0C
    /// unavailable, other NOT READY, 05/25/00): use another path or group.
    PathDown,
    /// The LU itself failed the command (ILLEGAL REQUEST, MEDIUM ERROR,
    /// DATA PROTECT, MISCOMPARE, ...): fail the I/O, never fail over.
    TargetError,
    /// RESERVATION CONFLICT: this host is fenced. Never retry, never fail
    /// over; tell the lock and fencing layer.
    Fenced,
}

/// What to do with a command that completed with `status` and, for CHECK
/// CONDITION, `sense` (decode sense data only for CHECK CONDITION: tgtd
/// sometimes attaches stale sense to GOOD).
pub fn classify(status: Status, sense: Option<&Sense>) -> Action {
    match status {
        Status::Good | Status::ConditionMet => Action::Complete,
        Status::CheckCondition => sense.map_or(Action::RetryAnyPath, Sense::classify),
        Status::Busy => Action::RetryAfterDelay,
        Status::TaskSetFull => Action::QueueFull,
        Status::ReservationConflict => Action::Fenced,
        Status::AcaActive | Status::TaskAborted => Action::Retry,
        Status::Other(_) => Action::TargetError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_fixed_sense_reads_missing_codes_as_zero() {
        // Additional sense length 0: ASC/ASCQ lie outside even though present.
        let mut b = Sense::INVALID_FIELD_IN_CDB.encode();
        b[FIXED_ADDITIONAL_LEN] = 0;
        let s = Sense::decode(&b).unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (ILLEGAL_REQUEST, 0, 0));
        assert_eq!(Sense::decode(&b[..2]), Err(truncated(2, FIXED_MIN)));
    }

    #[test]
    fn information_descriptor_after_another_descriptor() {
        // A sense-key-specific descriptor (type 2, 6 bytes) before the info one.
        let mut b = vec![0x72, MISCOMPARE, 0x1D, 0x00, 0, 0, 0, 20];
        b.extend_from_slice(&[0x02, 0x06, 0x80, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0x00, 0x0A, 0x80, 0, 0, 0, 0, 1, 0, 0, 0, 7]);
        let s = Sense::decode(&b).unwrap();
        assert_eq!(s.info, Some(0x1_0000_0007));
        // Cut inside the information descriptor: no INFORMATION, codes kept.
        let s = Sense::decode(&b[..20]).unwrap();
        assert_eq!((s.key, s.asc, s.info), (MISCOMPARE, 0x1D, None));
    }
}
