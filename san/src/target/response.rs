//! A finished command's answer as PDUs: Data-In cut to the initiator's
//! MaxRecvDataSegmentLength with F at every MaxBurstLength and the status
//! collapsed into the last one when GOOD, otherwise a SCSI Response (with
//! sense), and the residual against the expected data transfer length.
//! Data-In segments are borrowed from the outcome, never copied.

use super::book::{Job, Window};
use super::scsi::Outcome;
use super::sender::{Stat, Tx};
use super::ConnError;
use crate::iscsi::pdu::{self, Opcode, Pdu, RESERVED_TAG};
use crate::scsi::Status;

// Data-In and SCSI Response byte 1.
const DATA_IN_STATUS: u8 = 0x01;
const RESIDUAL_UNDERFLOW: u8 = 0x02;
const RESIDUAL_OVERFLOW: u8 = 0x04;

/// What the initiator accepts per PDU and per Data-In sequence.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_segment: usize,
    pub max_burst: usize,
}

/// Writes the answer to `job`; `w` is the window it carries.
pub(crate) fn send(
    tx: &mut Tx,
    w: Window,
    job: &Job,
    out: &Outcome,
    limits: Limits,
) -> Result<(), ConnError> {
    let need = out.data.len() as u64 + out.wanted_out as u64;
    let edtl = u64::from(job.edtl);
    let (residual_flag, residual) = if need > edtl {
        (RESIDUAL_OVERFLOW, need - edtl)
    } else if need < edtl {
        (RESIDUAL_UNDERFLOW, edtl - need)
    } else {
        (0, 0)
    };
    let residual = u32::try_from(residual).unwrap_or(u32::MAX);
    let send: &[u8] = if job.read {
        &out.data[..out.data.len().min(job.edtl as usize)]
    } else {
        &[]
    };
    let collapse = !send.is_empty() && out.status == Status::GOOD && out.sense.is_none();
    // Both limits are at least 512 after negotiation; max() keeps a zero
    // from looping forever all the same.
    let max_seg = limits.max_segment.max(1);
    let max_burst = limits.max_burst.max(1);
    let lun = pdu::encode_lun(job.lun);
    let mut offset = 0usize;
    let mut data_sn = 0u32;
    while offset < send.len() {
        let n = max_seg
            .min(send.len() - offset)
            .min(max_burst - offset % max_burst);
        let last = offset + n == send.len();
        let mut d = Pdu::new(Opcode::DataIn);
        let mut flags = 0;
        if last || (offset + n) % max_burst == 0 {
            flags |= pdu::FLAG_FINAL;
        }
        let status_here = last && collapse;
        if status_here {
            flags |= DATA_IN_STATUS | residual_flag;
            d.bhs[pdu::OFF_B3] = out.status;
            d.set_u32(pdu::OFF_44, residual);
        }
        d.set_flags(flags);
        d.set_lun(lun);
        d.set_itt(job.itt);
        d.set_u32(pdu::OFF_20, RESERVED_TAG);
        d.set_u32(pdu::OFF_36, data_sn);
        d.set_u32(pdu::OFF_40, offset as u32);
        let stat = if status_here { Stat::Take } else { Stat::Skip };
        tx.stamp(&mut d.bhs, w, stat);
        tx.send_parts(&d.bhs, &send[offset..offset + n])?;
        offset += n;
        data_sn += 1;
    }
    if collapse {
        return Ok(());
    }
    let mut r = Pdu::new(Opcode::ScsiResponse);
    r.set_flags(pdu::FLAG_FINAL | residual_flag);
    r.bhs[pdu::OFF_B3] = out.status;
    r.set_itt(job.itt);
    r.set_u32(pdu::OFF_36, data_sn);
    r.set_u32(pdu::OFF_44, residual);
    if let Some(s) = out.sense {
        let sense = s.encode();
        r.data = (sense.len() as u16).to_be_bytes().to_vec();
        r.data.extend_from_slice(&sense);
    }
    tx.stamp(&mut r.bhs, w, Stat::Take);
    tx.send(&r)
}
