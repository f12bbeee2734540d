//! INQUIRY data: the standard data and the vital product data pages ssv
//! uses (spec §2 "VPD pages").
//!
//! Paths are grouped into LUs by the VPD 0x83 designator, so the choice of
//! designator and the WWID string follow udev (`scsi_id`), whose WWIDs are
//! what dm-multipath users know. Pages whose truncation would change that
//! answer (0x00, 0x80, 0x83) must arrive whole: a cut page is
//! [`ScsiError::Truncated`] with the length to ask for. The fixed-layout
//! pages (0xB0, 0xB2) decode what arrived, since an absent field there
//! reads as zero, "not reported" (SBC-2 devices send a shorter 0xB0).

use super::{be16, be32, be64, len16, padded, put16, put32, put64, ScsiError};

// Standard INQUIRY data, the 36 bytes every device returns.
pub const STANDARD_INQUIRY_LEN: usize = 36;
const PERIPHERAL: usize = 0;
const QUALIFIER_SHIFT: u8 = 5;
const DEVICE_TYPE_MASK: u8 = 0x1F;
const RMB_BYTE: usize = 1;
const RMB: u8 = 0x80;
const VERSION: usize = 2;
const FORMAT_BYTE: usize = 3;
const HISUP: u8 = 0x10;
/// Response data format 2, the only one since SCSI-3.
const RESPONSE_DATA_FORMAT: u8 = 0x02;
const ADDITIONAL_LEN: usize = 4;
const TPGS_BYTE: usize = 5;
const TPGS_SHIFT: u8 = 4;
const TPGS_MASK: u8 = 0x03;
const CMDQUE_BYTE: usize = 7;
const CMDQUE: u8 = 0x02;
const VENDOR: usize = 8;
const PRODUCT: usize = 16;
const REVISION: usize = 32;

/// Peripheral device types and qualifiers.
pub const DEVICE_TYPE_DISK: u8 = 0x00;
/// With [`QUALIFIER_NO_LU`]: no LU at this LUN (the 0x7F of INQUIRY to a
/// LUN that does not exist).
pub const DEVICE_TYPE_UNKNOWN: u8 = 0x1F;
pub const QUALIFIER_CONNECTED: u8 = 0x0;
pub const QUALIFIER_NO_LU: u8 = 0x3;
/// VERSION: SPC-4.
pub const VERSION_SPC4: u8 = 0x06;

/// Standard INQUIRY data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StandardInquiry {
    /// Peripheral qualifier, 3 bits.
    pub qualifier: u8,
    /// Peripheral device type, 5 bits.
    pub device_type: u8,
    pub removable: bool,
    pub version: u8,
    /// Hierarchical LUN addressing supported.
    pub hisup: bool,
    /// ALUA support, 2 bits: 0 none (tgtd), 1 implicit, 2 explicit, 3 both.
    pub tpgs: u8,
    /// Command queueing: Linux queues more than one command only when set.
    pub cmdque: bool,
    /// ASCII, space-padded ([`ascii_field`]).
    pub vendor: [u8; 8],
    pub product: [u8; 16],
    pub revision: [u8; 4],
}

impl StandardInquiry {
    const WHAT: &'static str = "standard INQUIRY data";

    pub fn encode(&self) -> [u8; STANDARD_INQUIRY_LEN] {
        let mut b = [0u8; STANDARD_INQUIRY_LEN];
        b[PERIPHERAL] = (self.qualifier << QUALIFIER_SHIFT) | (self.device_type & DEVICE_TYPE_MASK);
        b[RMB_BYTE] = if self.removable { RMB } else { 0 };
        b[VERSION] = self.version;
        b[FORMAT_BYTE] = RESPONSE_DATA_FORMAT | if self.hisup { HISUP } else { 0 };
        b[ADDITIONAL_LEN] = (STANDARD_INQUIRY_LEN - ADDITIONAL_LEN - 1) as u8;
        b[TPGS_BYTE] = (self.tpgs & TPGS_MASK) << TPGS_SHIFT;
        b[CMDQUE_BYTE] = if self.cmdque { CMDQUE } else { 0 };
        b[VENDOR..PRODUCT].copy_from_slice(&self.vendor);
        b[PRODUCT..REVISION].copy_from_slice(&self.product);
        b[REVISION..].copy_from_slice(&self.revision);
        b
    }

    /// Decodes the first 36 bytes (what follows, e.g. version descriptors, is
    /// not used).
    pub fn decode(data: &[u8]) -> Result<StandardInquiry, ScsiError> {
        let Some(b) = data.get(..STANDARD_INQUIRY_LEN) else {
            return Err(ScsiError::Truncated {
                what: Self::WHAT,
                len: data.len(),
                need: STANDARD_INQUIRY_LEN,
            });
        };
        let mut inq = StandardInquiry {
            qualifier: b[PERIPHERAL] >> QUALIFIER_SHIFT,
            device_type: b[PERIPHERAL] & DEVICE_TYPE_MASK,
            removable: b[RMB_BYTE] & RMB != 0,
            version: b[VERSION],
            hisup: b[FORMAT_BYTE] & HISUP != 0,
            tpgs: (b[TPGS_BYTE] >> TPGS_SHIFT) & TPGS_MASK,
            cmdque: b[CMDQUE_BYTE] & CMDQUE != 0,
            vendor: [0; 8],
            product: [0; 16],
            revision: [0; 4],
        };
        inq.vendor.copy_from_slice(&b[VENDOR..PRODUCT]);
        inq.product.copy_from_slice(&b[PRODUCT..REVISION]);
        inq.revision.copy_from_slice(&b[REVISION..]);
        Ok(inq)
    }
}

/// `s` as a space-padded ASCII field of `N` bytes (longer text is cut).
pub fn ascii_field<const N: usize>(s: &str) -> [u8; N] {
    let mut f = [b' '; N];
    let n = s.len().min(N);
    f[..n].copy_from_slice(&s.as_bytes()[..n]);
    f
}

/// An ASCII field as text, without its padding (spaces or NULs).
pub fn ascii_text(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

// VPD pages: byte 1 page code, 2-3 page length (bytes after the header).
pub const VPD_SUPPORTED_PAGES: u8 = 0x00;
pub const VPD_UNIT_SERIAL: u8 = 0x80;
pub const VPD_DEVICE_IDENTIFICATION: u8 = 0x83;
pub const VPD_BLOCK_LIMITS: u8 = 0xB0;
pub const VPD_PROVISIONING: u8 = 0xB2;
const VPD_PAGE_CODE: usize = 1;
const VPD_PAGE_LEN: usize = 2;
const VPD_HEADER_LEN: usize = 4;

/// A page around `body`; peripheral byte 0 (a connected disk).
fn vpd_encode(page: u8, body: &[u8], what: &'static str) -> Result<Vec<u8>, ScsiError> {
    let mut b = vec![0u8; VPD_HEADER_LEN];
    b[VPD_PAGE_CODE] = page;
    put16(&mut b, VPD_PAGE_LEN, len16(body.len(), what, "page")?);
    b.extend_from_slice(body);
    Ok(b)
}

/// The header of a fixed-size page of `N` bytes.
fn vpd_fixed<const N: usize>(page: u8) -> [u8; N] {
    let mut b = [0u8; N];
    b[VPD_PAGE_CODE] = page;
    put16(&mut b, VPD_PAGE_LEN, (N - VPD_HEADER_LEN) as u16);
    b
}

/// Checks the header; returns the page's whole length as it claims.
fn vpd_header(data: &[u8], page: u8, what: &'static str) -> Result<usize, ScsiError> {
    if data.len() < VPD_HEADER_LEN {
        return Err(ScsiError::Truncated {
            what,
            len: data.len(),
            need: VPD_HEADER_LEN,
        });
    }
    if data[VPD_PAGE_CODE] != page {
        return Err(ScsiError::InvalidData {
            what,
            field: "page code",
            value: data[VPD_PAGE_CODE].into(),
        });
    }
    Ok(VPD_HEADER_LEN + usize::from(be16(data, VPD_PAGE_LEN)))
}

/// The body of a page that must arrive whole.
fn vpd_body<'a>(data: &'a [u8], page: u8, what: &'static str) -> Result<&'a [u8], ScsiError> {
    let total = vpd_header(data, page, what)?;
    data.get(VPD_HEADER_LEN..total).ok_or(ScsiError::Truncated {
        what,
        len: data.len(),
        need: total,
    })
}

/// As much of a fixed-layout page (header included) as both the page
/// length and the data allow, zero-filled to `N` bytes.
fn vpd_available<const N: usize>(
    data: &[u8],
    page: u8,
    what: &'static str,
) -> Result<[u8; N], ScsiError> {
    let total = vpd_header(data, page, what)?;
    Ok(padded(&data[..total.min(data.len())]))
}

/// VPD 0x00: the pages the device supports, ascending.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SupportedPages {
    pub pages: Vec<u8>,
}

impl SupportedPages {
    const WHAT: &'static str = "VPD page 0x00";

    pub fn encode(&self) -> Result<Vec<u8>, ScsiError> {
        vpd_encode(VPD_SUPPORTED_PAGES, &self.pages, Self::WHAT)
    }

    pub fn decode(data: &[u8]) -> Result<SupportedPages, ScsiError> {
        Ok(SupportedPages {
            pages: vpd_body(data, VPD_SUPPORTED_PAGES, Self::WHAT)?.to_vec(),
        })
    }
}

/// VPD 0x80: the unit serial number, ASCII as the device sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UnitSerial {
    pub serial: Vec<u8>,
}

impl UnitSerial {
    const WHAT: &'static str = "VPD page 0x80";

    pub fn encode(&self) -> Result<Vec<u8>, ScsiError> {
        vpd_encode(VPD_UNIT_SERIAL, &self.serial, Self::WHAT)
    }

    pub fn decode(data: &[u8]) -> Result<UnitSerial, ScsiError> {
        Ok(UnitSerial {
            serial: vpd_body(data, VPD_UNIT_SERIAL, Self::WHAT)?.to_vec(),
        })
    }
}

// VPD 0x83 designators: a 4-byte header, then the value.
const DESIG_CODE_SET_BYTE: usize = 0;
const PROTOCOL_SHIFT: u8 = 4;
const CODE_SET_MASK: u8 = 0x0F;
const DESIG_TYPE_BYTE: usize = 1;
const PIV: u8 = 0x80;
const ASSOCIATION_SHIFT: u8 = 4;
const ASSOCIATION_MASK: u8 = 0x03;
const DESIGNATOR_TYPE_MASK: u8 = 0x0F;
const DESIG_LEN: usize = 3;
const DESIG_HEADER_LEN: usize = 4;
/// NAA designators carry their format in the value's top nibble.
const NAA_SHIFT: u8 = 4;

pub const CODE_SET_BINARY: u8 = 1;
pub const CODE_SET_ASCII: u8 = 2;
pub const CODE_SET_UTF8: u8 = 3;
pub const ASSOCIATION_LU: u8 = 0;
pub const ASSOCIATION_TARGET_PORT: u8 = 1;
pub const ASSOCIATION_TARGET_DEVICE: u8 = 2;
pub const DESIGNATOR_T10_VENDOR: u8 = 1;
pub const DESIGNATOR_EUI64: u8 = 2;
pub const DESIGNATOR_NAA: u8 = 3;
pub const DESIGNATOR_RELATIVE_PORT: u8 = 4;
pub const DESIGNATOR_TARGET_PORT_GROUP: u8 = 5;
pub const DESIGNATOR_SCSI_NAME: u8 = 8;
pub const NAA_LOCAL: u8 = 3;
pub const NAA_IEEE_REGISTERED: u8 = 5;
pub const NAA_IEEE_REGISTERED_EXTENDED: u8 = 6;

/// One designator of VPD 0x83.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Designator {
    /// Protocol identifier, 4 bits; meaningful when `piv` (5 = iSCSI).
    pub protocol: u8,
    /// Code set, 4 bits: binary, ASCII or UTF-8.
    pub code_set: u8,
    pub piv: bool,
    /// Association, 2 bits: LU, target port or target device.
    pub association: u8,
    /// Designator type, 4 bits.
    pub designator_type: u8,
    /// At most 255 bytes.
    pub value: Vec<u8>,
}

impl Designator {
    /// The NAA format of an NAA designator (the value's top nibble).
    pub fn naa(&self) -> Option<u8> {
        match (self.designator_type, self.value.first()) {
            (DESIGNATOR_NAA, Some(&b)) => Some(b >> NAA_SHIFT),
            _ => None,
        }
    }

    /// Preference as an LU name, lowest first (spec §2): NAA IEEE Registered
    /// Extended, NAA IEEE Registered, EUI-64, other NAA (locally assigned),
    /// SCSI name string, T10 vendor ID. `None` for designators that do not
    /// name the LU.
    fn rank(&self) -> Option<u8> {
        if self.association != ASSOCIATION_LU || self.value.is_empty() {
            return None;
        }
        match self.designator_type {
            DESIGNATOR_NAA => Some(match self.naa() {
                Some(NAA_IEEE_REGISTERED_EXTENDED) => 0,
                Some(NAA_IEEE_REGISTERED) => 1,
                _ => 3,
            }),
            DESIGNATOR_EUI64 => Some(2),
            DESIGNATOR_SCSI_NAME => Some(4),
            DESIGNATOR_T10_VENDOR => Some(5),
            _ => None,
        }
    }

    /// The udev-style WWID: the designator type as one hex digit, then the
    /// value, binary as lowercase hex (NAA-6 gives "36…"), text as udev's
    /// ID_SERIAL has it (to the first NUL, outer whitespace dropped, inner
    /// runs of it and characters udev does not allow as '_').
    pub fn wwid(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::new();
        s.push(char::from(
            HEX[usize::from(self.designator_type & DESIGNATOR_TYPE_MASK)],
        ));
        if self.code_set == CODE_SET_BINARY {
            for b in &self.value {
                s.push(char::from(HEX[usize::from(b >> 4)]));
                s.push(char::from(HEX[usize::from(b & 0x0F)]));
            }
            return s;
        }
        let text = self.value.split(|&b| b == 0).next().unwrap_or_default();
        let text = String::from_utf8_lossy(text);
        let mut space = false;
        for c in text.trim().chars() {
            if c.is_whitespace() {
                space = true;
                continue;
            }
            if space {
                s.push('_');
                space = false;
            }
            let allowed = c.is_ascii_alphanumeric()
                || "#+-.:=@_".contains(c)
                || (!c.is_ascii() && c != char::REPLACEMENT_CHARACTER);
            s.push(if allowed { c } else { '_' });
        }
        s
    }
}

/// VPD 0x83: the designators of the LU, the target port and the target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DeviceIdentification {
    pub designators: Vec<Designator>,
}

impl DeviceIdentification {
    const WHAT: &'static str = "VPD page 0x83";

    pub fn encode(&self) -> Result<Vec<u8>, ScsiError> {
        let mut body = Vec::new();
        for d in &self.designators {
            let len = u8::try_from(d.value.len()).map_err(|_| ScsiError::Unencodable {
                what: Self::WHAT,
                field: "designator",
                problem: format!("is {} bytes, at most 255 fit", d.value.len()),
            })?;
            body.push((d.protocol << PROTOCOL_SHIFT) | (d.code_set & CODE_SET_MASK));
            body.push(
                (if d.piv { PIV } else { 0 })
                    | ((d.association & ASSOCIATION_MASK) << ASSOCIATION_SHIFT)
                    | (d.designator_type & DESIGNATOR_TYPE_MASK),
            );
            body.push(0);
            body.push(len);
            body.extend_from_slice(&d.value);
        }
        vpd_encode(VPD_DEVICE_IDENTIFICATION, &body, Self::WHAT)
    }

    pub fn decode(data: &[u8]) -> Result<DeviceIdentification, ScsiError> {
        let mut rest = vpd_body(data, VPD_DEVICE_IDENTIFICATION, Self::WHAT)?;
        let mut designators = Vec::new();
        while !rest.is_empty() {
            let bad_len = ScsiError::InvalidData {
                what: Self::WHAT,
                field: "designator length",
                value: rest.len() as u64,
            };
            let h = rest.get(..DESIG_HEADER_LEN).ok_or(bad_len.clone())?;
            let end = DESIG_HEADER_LEN + usize::from(h[DESIG_LEN]);
            let value = rest.get(DESIG_HEADER_LEN..end).ok_or(bad_len)?;
            designators.push(Designator {
                protocol: h[DESIG_CODE_SET_BYTE] >> PROTOCOL_SHIFT,
                code_set: h[DESIG_CODE_SET_BYTE] & CODE_SET_MASK,
                piv: h[DESIG_TYPE_BYTE] & PIV != 0,
                association: (h[DESIG_TYPE_BYTE] >> ASSOCIATION_SHIFT) & ASSOCIATION_MASK,
                designator_type: h[DESIG_TYPE_BYTE] & DESIGNATOR_TYPE_MASK,
                value: value.to_vec(),
            });
            rest = &rest[end..];
        }
        Ok(DeviceIdentification { designators })
    }

    /// The designator that names the LU, by the preference of spec §2; the
    /// first of equals wins.
    pub fn preferred_lu_designator(&self) -> Option<&Designator> {
        self.designators
            .iter()
            .filter_map(|d| Some((d.rank()?, d)))
            .min_by_key(|&(rank, _)| rank)
            .map(|(_, d)| d)
    }

    /// The LU's WWID ([`Designator::wwid`] of the preferred designator).
    pub fn wwid(&self) -> Option<String> {
        self.preferred_lu_designator().map(Designator::wwid)
    }
}

// VPD 0xB0 Block Limits (SBC-3 §6.6.4), 64 bytes.
pub const BLOCK_LIMITS_LEN: usize = 64;
const BL_MAX_COMPARE_WRITE: usize = 5;
const BL_OPT_GRANULARITY: usize = 6;
const BL_MAX_TRANSFER: usize = 8;
const BL_OPT_TRANSFER: usize = 12;
const BL_MAX_UNMAP_LBAS: usize = 20;
const BL_MAX_UNMAP_DESCRIPTORS: usize = 24;
const BL_UNMAP_GRANULARITY: usize = 28;
const BL_UNMAP_ALIGNMENT: usize = 32;
const UGAVALID: u32 = 0x8000_0000;
const BL_MAX_WRITE_SAME: usize = 36;

/// VPD 0xB0: transfer and UNMAP limits, in logical blocks; 0 is "not
/// reported". Do not trust `max_compare_write_len` alone: tgtd reports 128
/// but refuses COMPARE AND WRITE (spec §0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlockLimits {
    pub max_compare_write_len: u8,
    pub opt_transfer_granularity: u16,
    pub max_transfer_len: u32,
    pub opt_transfer_len: u32,
    pub max_unmap_lba_count: u32,
    pub max_unmap_descriptors: u32,
    pub unmap_granularity: u32,
    /// The unmap granularity alignment when valid (UGAVALID), 31 bits.
    pub unmap_alignment: Option<u32>,
    pub max_write_same_len: u64,
}

impl BlockLimits {
    const WHAT: &'static str = "VPD page 0xB0";

    pub fn encode(&self) -> [u8; BLOCK_LIMITS_LEN] {
        let mut b = vpd_fixed::<BLOCK_LIMITS_LEN>(VPD_BLOCK_LIMITS);
        b[BL_MAX_COMPARE_WRITE] = self.max_compare_write_len;
        put16(&mut b, BL_OPT_GRANULARITY, self.opt_transfer_granularity);
        put32(&mut b, BL_MAX_TRANSFER, self.max_transfer_len);
        put32(&mut b, BL_OPT_TRANSFER, self.opt_transfer_len);
        put32(&mut b, BL_MAX_UNMAP_LBAS, self.max_unmap_lba_count);
        put32(&mut b, BL_MAX_UNMAP_DESCRIPTORS, self.max_unmap_descriptors);
        put32(&mut b, BL_UNMAP_GRANULARITY, self.unmap_granularity);
        if let Some(a) = self.unmap_alignment {
            put32(&mut b, BL_UNMAP_ALIGNMENT, UGAVALID | (a & !UGAVALID));
        }
        put64(&mut b, BL_MAX_WRITE_SAME, self.max_write_same_len);
        b
    }

    pub fn decode(data: &[u8]) -> Result<BlockLimits, ScsiError> {
        let b: [u8; BLOCK_LIMITS_LEN] = vpd_available(data, VPD_BLOCK_LIMITS, Self::WHAT)?;
        let alignment = be32(&b, BL_UNMAP_ALIGNMENT);
        Ok(BlockLimits {
            max_compare_write_len: b[BL_MAX_COMPARE_WRITE],
            opt_transfer_granularity: be16(&b, BL_OPT_GRANULARITY),
            max_transfer_len: be32(&b, BL_MAX_TRANSFER),
            opt_transfer_len: be32(&b, BL_OPT_TRANSFER),
            max_unmap_lba_count: be32(&b, BL_MAX_UNMAP_LBAS),
            max_unmap_descriptors: be32(&b, BL_MAX_UNMAP_DESCRIPTORS),
            unmap_granularity: be32(&b, BL_UNMAP_GRANULARITY),
            unmap_alignment: (alignment & UGAVALID != 0).then_some(alignment & !UGAVALID),
            max_write_same_len: be64(&b, BL_MAX_WRITE_SAME),
        })
    }
}

// VPD 0xB2 Logical Block Provisioning (SBC-3 §6.6.6), 8 bytes.
pub const PROVISIONING_LEN: usize = 8;
const LBP_THRESHOLD_EXPONENT: usize = 4;
const LBP_FLAGS: usize = 5;
const LBPU: u8 = 0x80;
const LBPWS: u8 = 0x40;
const LBPWS10: u8 = 0x20;
/// Bit 2: LBPRZ in SBC-3, and the "reads zeros" bit of SBC-4's 3-bit field.
const LBP_LBPRZ: u8 = 0x04;
const LBP_TYPE: usize = 6;
const PROVISIONING_TYPE_MASK: u8 = 0x07;

pub const PROVISIONING_FULL: u8 = 0;
pub const PROVISIONING_RESOURCE: u8 = 1;
pub const PROVISIONING_THIN: u8 = 2;

/// VPD 0xB2: which ways to deallocate blocks the LU supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Provisioning {
    pub threshold_exponent: u8,
    /// UNMAP deallocates.
    pub lbpu: bool,
    /// WRITE SAME(16) with UNMAP deallocates.
    pub lbpws: bool,
    /// WRITE SAME(10) with UNMAP deallocates.
    pub lbpws10: bool,
    /// Deallocated blocks read as zeros.
    pub lbprz: bool,
    /// Provisioning type, 3 bits: full, resource or thin.
    pub provisioning_type: u8,
}

impl Provisioning {
    const WHAT: &'static str = "VPD page 0xB2";

    pub fn encode(&self) -> [u8; PROVISIONING_LEN] {
        let mut b = vpd_fixed::<PROVISIONING_LEN>(VPD_PROVISIONING);
        b[LBP_THRESHOLD_EXPONENT] = self.threshold_exponent;
        b[LBP_FLAGS] = (if self.lbpu { LBPU } else { 0 })
            | (if self.lbpws { LBPWS } else { 0 })
            | (if self.lbpws10 { LBPWS10 } else { 0 })
            | (if self.lbprz { LBP_LBPRZ } else { 0 });
        b[LBP_TYPE] = self.provisioning_type & PROVISIONING_TYPE_MASK;
        b
    }

    pub fn decode(data: &[u8]) -> Result<Provisioning, ScsiError> {
        let b: [u8; PROVISIONING_LEN] = vpd_available(data, VPD_PROVISIONING, Self::WHAT)?;
        Ok(Provisioning {
            threshold_exponent: b[LBP_THRESHOLD_EXPONENT],
            lbpu: b[LBP_FLAGS] & LBPU != 0,
            lbpws: b[LBP_FLAGS] & LBPWS != 0,
            lbpws10: b[LBP_FLAGS] & LBPWS10 != 0,
            lbprz: b[LBP_FLAGS] & LBP_LBPRZ != 0,
            provisioning_type: b[LBP_TYPE] & PROVISIONING_TYPE_MASK,
        })
    }
}
