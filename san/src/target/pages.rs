//! Response data the `scsi` codecs do not encode: the full standard INQUIRY
//! (with version descriptors), VPD 0x83 as this target builds it, VPD 0xB1,
//! MODE SENSE pages, REPORT LUNS and READ CAPACITY(10) data.

use super::lu::LogicalUnit;
use crate::iscsi::pdu::encode_lun;
use crate::scsi::inquiry::{
    ascii_field, ASSOCIATION_LU, ASSOCIATION_TARGET_DEVICE, ASSOCIATION_TARGET_PORT,
    CODE_SET_BINARY, CODE_SET_UTF8, DESIGNATOR_NAA, DESIGNATOR_RELATIVE_PORT, DESIGNATOR_SCSI_NAME,
    DEVICE_TYPE_DISK, DEVICE_TYPE_UNKNOWN, QUALIFIER_CONNECTED, QUALIFIER_NO_LU, VERSION_SPC4,
};
use crate::scsi::pr::PROTOCOL_ISCSI;
use crate::scsi::{
    Designator, DeviceIdentification, PageControl, ScsiError, Sense, StandardInquiry,
};

/// Standard INQUIRY: 36 bytes, vendor-specific 36-55, reserved 56-57,
/// eight version descriptors at 58-73, reserved to 96.
const INQUIRY_LEN: usize = 96;
const INQUIRY_ADDITIONAL_LEN: usize = 4;
const INQUIRY_MULTIP_BYTE: usize = 6;
const MULTIP: u8 = 0x10;
const VERSION_DESCRIPTORS: usize = 58;
/// SAM-5, iSCSI (no version claimed), SPC-4, SBC-3.
const VERSIONS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];

const VENDOR: &str = "SSV";
const PRODUCT: &str = "ssv-target";
const REVISION: &str = "0001";

/// VPD 0xB1 Block Device Characteristics (SBC-3 §6.6.2): 64 bytes.
pub(crate) const VPD_BLOCK_CHARACTERISTICS: u8 = 0xB1;
const B1_LEN: usize = 64;
const B1_ROTATION: usize = 4;
/// Medium rotation rate 1: a non-rotating medium.
const NON_ROTATING: u16 = 1;

/// Standard INQUIRY data; `present` is false for a LUN with no LU behind it.
pub(crate) fn standard_inquiry(present: bool) -> Vec<u8> {
    let (qualifier, device_type) = if present {
        (QUALIFIER_CONNECTED, DEVICE_TYPE_DISK)
    } else {
        (QUALIFIER_NO_LU, DEVICE_TYPE_UNKNOWN)
    };
    let std = StandardInquiry {
        qualifier,
        device_type,
        removable: false,
        version: VERSION_SPC4,
        hisup: true,
        tpgs: 0,
        cmdque: true,
        vendor: ascii_field(VENDOR),
        product: ascii_field(PRODUCT),
        revision: ascii_field(REVISION),
    };
    let mut b = std.encode().to_vec();
    b.resize(INQUIRY_LEN, 0);
    b[INQUIRY_ADDITIONAL_LEN] = (INQUIRY_LEN - INQUIRY_ADDITIONAL_LEN - 1) as u8;
    b[INQUIRY_MULTIP_BYTE] |= MULTIP;
    for (i, v) in VERSIONS.iter().enumerate() {
        let at = VERSION_DESCRIPTORS + 2 * i;
        b[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    b
}

/// A SCSI name string designator: the name, NUL-terminated, padded to 4.
fn scsi_name(association: u8, name: &str) -> Designator {
    let mut value = name.as_bytes().to_vec();
    value.push(0);
    value.resize(value.len().next_multiple_of(4), 0);
    Designator {
        protocol: PROTOCOL_ISCSI,
        code_set: CODE_SET_UTF8,
        piv: true,
        association,
        designator_type: DESIGNATOR_SCSI_NAME,
        value,
    }
}

/// VPD 0x83: the LU's NAA-6 name, the target port (relative port and
/// iSCSI name ",t,0x<tpgt>") and the target device name.
pub(crate) fn device_identification(
    lu: &LogicalUnit,
    iqn: &str,
    tpgt: u16,
) -> Result<Vec<u8>, ScsiError> {
    let mut rel = vec![0, 0];
    rel.extend_from_slice(&tpgt.to_be_bytes());
    DeviceIdentification {
        designators: vec![
            Designator {
                protocol: 0,
                code_set: CODE_SET_BINARY,
                piv: false,
                association: ASSOCIATION_LU,
                designator_type: DESIGNATOR_NAA,
                value: lu.naa.to_vec(),
            },
            Designator {
                protocol: PROTOCOL_ISCSI,
                code_set: CODE_SET_BINARY,
                piv: true,
                association: ASSOCIATION_TARGET_PORT,
                designator_type: DESIGNATOR_RELATIVE_PORT,
                value: rel,
            },
            scsi_name(ASSOCIATION_TARGET_PORT, &format!("{iqn},t,0x{tpgt:04x}")),
            scsi_name(ASSOCIATION_TARGET_DEVICE, iqn),
        ],
    }
    .encode()
}

pub(crate) fn block_characteristics() -> Vec<u8> {
    let mut b = vec![0u8; B1_LEN];
    b[1] = VPD_BLOCK_CHARACTERISTICS;
    b[2..4].copy_from_slice(&((B1_LEN - 4) as u16).to_be_bytes());
    b[B1_ROTATION..B1_ROTATION + 2].copy_from_slice(&NON_ROTATING.to_be_bytes());
    b
}

// MODE SENSE (SPC-4 §7.5): header, optional short block descriptor, pages.
const PAGE_CACHING: u8 = 0x08;
const CACHING_LEN: usize = 20;
const CACHING_FLAGS: usize = 2;
/// Write cache enabled: a write is durable only after SYNCHRONIZE CACHE or FUA.
const WCE: u8 = 0x04;
const PAGE_CONTROL: u8 = 0x0A;
const CONTROL_LEN: usize = 12;
/// Byte 3: queue algorithm modifier 1 (unrestricted reordering allowed).
const CONTROL_QAM: usize = 3;
const QAM_UNRESTRICTED: u8 = 0x10;
/// Byte 5: TAS, tasks aborted by another nexus end with TASK ABORTED.
const CONTROL_TAS_BYTE: usize = 5;
const TAS: u8 = 0x40;
const PAGE_ALL: u8 = 0x3F;
const SUBPAGE_ALL: u8 = 0xFF;
/// Device-specific parameter: write protected, DPO and FUA supported.
const DEVSPEC_WP: u8 = 0x80;
const DEVSPEC_DPOFUA: u8 = 0x10;
const HEADER6_LEN: usize = 4;
const HEADER10_LEN: usize = 8;
/// 05/39/00: SAVING PARAMETERS NOT SUPPORTED.
const SAVING_NOT_SUPPORTED: Sense = Sense::new(crate::scsi::sense::ILLEGAL_REQUEST, 0x39, 0x00);

/// A MODE SENSE request, (6) or (10).
pub(crate) struct ModeSense {
    pub ten: bool,
    pub dbd: bool,
    pub pc: PageControl,
    pub page: u8,
    pub subpage: u8,
}

fn caching_page(changeable: bool) -> Vec<u8> {
    let mut p = vec![0u8; CACHING_LEN];
    p[0] = PAGE_CACHING;
    p[1] = (CACHING_LEN - 2) as u8;
    if !changeable {
        p[CACHING_FLAGS] = WCE;
    }
    p
}

fn control_page(changeable: bool) -> Vec<u8> {
    let mut p = vec![0u8; CONTROL_LEN];
    p[0] = PAGE_CONTROL;
    p[1] = (CONTROL_LEN - 2) as u8;
    if !changeable {
        p[CONTROL_QAM] = QAM_UNRESTRICTED;
        p[CONTROL_TAS_BYTE] = TAS;
    }
    p
}

/// MODE SENSE data (nothing is changeable: we have no MODE SELECT).
pub(crate) fn mode_sense(lu: &LogicalUnit, r: &ModeSense) -> Result<Vec<u8>, Sense> {
    if r.pc == PageControl::Saved {
        return Err(SAVING_NOT_SUPPORTED);
    }
    let changeable = r.pc == PageControl::Changeable;
    let pages = match (r.page, r.subpage) {
        (PAGE_CACHING, 0) => caching_page(changeable),
        (PAGE_CONTROL, 0) => control_page(changeable),
        (PAGE_ALL, 0 | SUBPAGE_ALL) => {
            [caching_page(changeable), control_page(changeable)].concat()
        }
        _ => return Err(Sense::INVALID_FIELD_IN_CDB),
    };
    let mut bd = Vec::new();
    if !r.dbd {
        let blocks = u32::try_from(lu.blocks()).unwrap_or(u32::MAX);
        bd.extend_from_slice(&blocks.to_be_bytes());
        bd.push(0);
        bd.extend_from_slice(&lu.block_size().to_be_bytes()[1..]);
    }
    let devspec = DEVSPEC_DPOFUA | if lu.read_only { DEVSPEC_WP } else { 0 };
    let mut b = if r.ten {
        let mut h = vec![0u8; HEADER10_LEN];
        h[3] = devspec;
        h[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
        h
    } else {
        let mut h = vec![0u8; HEADER6_LEN];
        h[2] = devspec;
        h[3] = bd.len() as u8;
        h
    };
    b.extend_from_slice(&bd);
    b.extend_from_slice(&pages);
    // The mode data length counts the bytes after itself.
    if r.ten {
        let n = u16::try_from(b.len() - 2).unwrap_or(u16::MAX);
        b[0..2].copy_from_slice(&n.to_be_bytes());
    } else {
        b[0] = u8::try_from(b.len() - 1).unwrap_or(u8::MAX);
    }
    Ok(b)
}

/// REPORT LUNS data: the list length, 4 reserved bytes, 8 bytes per LUN.
pub(crate) fn report_luns(luns: impl Iterator<Item = u16>) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    for l in luns {
        b.extend_from_slice(&encode_lun(l));
    }
    let n = u32::try_from(b.len() - 8).unwrap_or(u32::MAX);
    b[0..4].copy_from_slice(&n.to_be_bytes());
    b
}

/// READ CAPACITY(10) data: the last LBA (all ones when it does not fit,
/// telling the initiator to use READ CAPACITY(16)) and the block length.
pub(crate) fn read_capacity10(lu: &LogicalUnit) -> Vec<u8> {
    let last = lu.blocks().saturating_sub(1);
    let last = u32::try_from(last).unwrap_or(u32::MAX);
    [last.to_be_bytes(), lu.block_size().to_be_bytes()].concat()
}
