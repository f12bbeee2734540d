//! Persistent reservations (SPC-4 §6.15, §6.16): how ssv fences a host
//! off shared LUNs (spec §2 "PR fencing pattern"). The PR OUT parameter list
//! goes from initiator to target; the four PR IN responses come back.
//!
//! Only LU_SCOPE (0) exists in SPC-4, so scopes are not carried: a nonzero
//! scope where a type is meaningful is an error.

use super::{be16, be32, be64, len16, len32, put16, put32, put64, ScsiError};

/// PERSISTENT RESERVE OUT service actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrOutAction {
    Register = 0,
    Reserve = 1,
    Release = 2,
    Clear = 3,
    Preempt = 4,
    PreemptAndAbort = 5,
    RegisterAndIgnoreExistingKey = 6,
    /// Its parameter list is not the 24-byte [`PrOutParams`]; not supported.
    RegisterAndMove = 7,
}

impl PrOutAction {
    pub fn from_u8(sa: u8) -> Option<PrOutAction> {
        Some(match sa {
            0 => PrOutAction::Register,
            1 => PrOutAction::Reserve,
            2 => PrOutAction::Release,
            3 => PrOutAction::Clear,
            4 => PrOutAction::Preempt,
            5 => PrOutAction::PreemptAndAbort,
            6 => PrOutAction::RegisterAndIgnoreExistingKey,
            7 => PrOutAction::RegisterAndMove,
            _ => return None,
        })
    }
}

/// PERSISTENT RESERVE IN service actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrInAction {
    ReadKeys = 0,
    ReadReservation = 1,
    ReportCapabilities = 2,
    ReadFullStatus = 3,
}

impl PrInAction {
    pub fn from_u8(sa: u8) -> Option<PrInAction> {
        Some(match sa {
            0 => PrInAction::ReadKeys,
            1 => PrInAction::ReadReservation,
            2 => PrInAction::ReportCapabilities,
            3 => PrInAction::ReadFullStatus,
            _ => return None,
        })
    }
}

/// Reservation types. ssv and fence_scsi use Write Exclusive – Registrants
/// Only: every registered path may write, everyone may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    pub fn from_u8(t: u8) -> Option<PrType> {
        PrType::ALL.into_iter().find(|&x| x as u8 == t)
    }

    /// This type's bit in REPORT CAPABILITIES' type mask (bytes 4-5).
    fn mask_bit(self) -> u16 {
        match self {
            PrType::WriteExclusiveAllRegistrants => 0x8000,
            PrType::ExclusiveAccessRegistrantsOnly => 0x4000,
            PrType::WriteExclusiveRegistrantsOnly => 0x2000,
            PrType::ExclusiveAccess => 0x0800,
            PrType::WriteExclusive => 0x0200,
            PrType::ExclusiveAccessAllRegistrants => 0x0001,
        }
    }
}

/// The scope/type byte: scope in bits 4-7 (LU_SCOPE = 0), type in bits 0-3.
const SCOPE_SHIFT: u8 = 4;
const TYPE_MASK: u8 = 0x0F;

/// The type of a scope/type byte that must name one, in response data.
fn decode_type(b: u8, what: &'static str) -> Result<PrType, ScsiError> {
    let scope = b >> SCOPE_SHIFT;
    if scope != 0 {
        return Err(ScsiError::InvalidData {
            what,
            field: "scope",
            value: scope.into(),
        });
    }
    PrType::from_u8(b & TYPE_MASK).ok_or(ScsiError::InvalidData {
        what,
        field: "type",
        value: (b & TYPE_MASK).into(),
    })
}

// PERSISTENT RESERVE OUT parameter list (all service actions but REGISTER
// AND MOVE).
pub const PR_OUT_PARAMS_LEN: usize = 24;
const OUT_KEY: usize = 0;
const OUT_SA_KEY: usize = 8;
const OUT_FLAGS: usize = 20;
const SPEC_I_PT: u8 = 0x08;
const ALL_TG_PT: u8 = 0x04;
const APTPL: u8 = 0x01;

/// The PR OUT parameter list: our key, the service-action key (the new key
/// for REGISTER, the victim's for PREEMPT) and the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PrOutParams {
    pub key: u64,
    pub sa_key: u64,
    /// Register the transport IDs that follow the 24 bytes (REGISTER only).
    pub spec_i_pt: bool,
    /// Register on every target port at once, not just this I_T nexus.
    pub all_tg_pt: bool,
    /// Keep the registrations over a target power loss.
    pub aptpl: bool,
}

impl PrOutParams {
    pub fn encode(&self) -> [u8; PR_OUT_PARAMS_LEN] {
        let mut b = [0u8; PR_OUT_PARAMS_LEN];
        put64(&mut b, OUT_KEY, self.key);
        put64(&mut b, OUT_SA_KEY, self.sa_key);
        b[OUT_FLAGS] = (if self.spec_i_pt { SPEC_I_PT } else { 0 })
            | (if self.all_tg_pt { ALL_TG_PT } else { 0 })
            | (if self.aptpl { APTPL } else { 0 });
        b
    }

    /// Decodes the Data-Out of a PR OUT command. Without SPEC_I_PT the list
    /// is exactly 24 bytes (else 05/1A/00); with it, transport IDs follow,
    /// which are left to the caller (a target that does not support
    /// SPEC_I_PT refuses the flag).
    pub fn decode(data: &[u8]) -> Result<PrOutParams, ScsiError> {
        let length_error = ScsiError::ParameterListLength {
            what: "PERSISTENT RESERVE OUT",
            len: data.len(),
            need: PR_OUT_PARAMS_LEN,
        };
        if data.len() < PR_OUT_PARAMS_LEN {
            return Err(length_error);
        }
        let flags = data[OUT_FLAGS];
        let spec_i_pt = flags & SPEC_I_PT != 0;
        if !spec_i_pt && data.len() != PR_OUT_PARAMS_LEN {
            return Err(length_error);
        }
        Ok(PrOutParams {
            key: be64(data, OUT_KEY),
            sa_key: be64(data, OUT_SA_KEY),
            spec_i_pt,
            all_tg_pt: flags & ALL_TG_PT != 0,
            aptpl: flags & APTPL != 0,
        })
    }
}

// PR IN responses share an 8-byte header: PRgeneration, then the additional
// length (bytes after the header).
const GENERATION: usize = 0;
const ADDITIONAL_LEN: usize = 4;
const HEADER_LEN: usize = 8;
const KEY_LEN: usize = 8;

/// The header's generation and the whole response's length, checked
/// against what arrived.
fn pr_in_header(data: &[u8], what: &'static str) -> Result<(u32, usize), ScsiError> {
    if data.len() < HEADER_LEN {
        return Err(ScsiError::Truncated {
            what,
            len: data.len(),
            need: HEADER_LEN,
        });
    }
    let total = HEADER_LEN.saturating_add(be32(data, ADDITIONAL_LEN) as usize);
    if data.len() < total {
        return Err(ScsiError::Truncated {
            what,
            len: data.len(),
            need: total,
        });
    }
    Ok((be32(data, GENERATION), total))
}

fn pr_in_response(
    generation: u32,
    body_len: usize,
    what: &'static str,
) -> Result<Vec<u8>, ScsiError> {
    let mut b = vec![0u8; HEADER_LEN];
    put32(&mut b, GENERATION, generation);
    put32(
        &mut b,
        ADDITIONAL_LEN,
        len32(body_len, what, "additional length")?,
    );
    b.reserve(body_len);
    Ok(b)
}

/// READ KEYS: every registered key, one per I_T nexus (a host registered
/// on two paths is listed twice).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ReadKeys {
    pub generation: u32,
    pub keys: Vec<u64>,
}

impl ReadKeys {
    const WHAT: &'static str = "PR IN READ KEYS data";

    pub fn encode(&self) -> Result<Vec<u8>, ScsiError> {
        let body = self.keys.len().saturating_mul(KEY_LEN);
        let mut b = pr_in_response(self.generation, body, Self::WHAT)?;
        for key in &self.keys {
            b.extend_from_slice(&key.to_be_bytes());
        }
        Ok(b)
    }

    pub fn decode(data: &[u8]) -> Result<ReadKeys, ScsiError> {
        let (generation, total) = pr_in_header(data, Self::WHAT)?;
        let body = &data[HEADER_LEN..total];
        if body.len() % KEY_LEN != 0 {
            return Err(ScsiError::InvalidData {
                what: Self::WHAT,
                field: "additional length",
                value: body.len() as u64,
            });
        }
        Ok(ReadKeys {
            generation,
            keys: body.chunks_exact(KEY_LEN).map(|k| be64(k, 0)).collect(),
        })
    }
}

// READ RESERVATION: the header, then nothing or one 16-byte descriptor.
const RESERVATION_DESC_LEN: usize = 16;
const RES_KEY: usize = HEADER_LEN;
const RES_SCOPE_TYPE: usize = HEADER_LEN + 13;

/// READ RESERVATION: the reservation, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReadReservation {
    pub generation: u32,
    pub reservation: Option<Reservation>,
}

/// A reservation: the holder's key (for all-registrants types, 0) and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reservation {
    pub key: u64,
    pub pr_type: PrType,
}

impl ReadReservation {
    const WHAT: &'static str = "PR IN READ RESERVATION data";

    pub fn encode(&self) -> Vec<u8> {
        let body = if self.reservation.is_some() {
            RESERVATION_DESC_LEN
        } else {
            0
        };
        let mut b = vec![0u8; HEADER_LEN + body];
        put32(&mut b, GENERATION, self.generation);
        put32(&mut b, ADDITIONAL_LEN, body as u32);
        if let Some(r) = self.reservation {
            put64(&mut b, RES_KEY, r.key);
            b[RES_SCOPE_TYPE] = r.pr_type as u8;
        }
        b
    }

    pub fn decode(data: &[u8]) -> Result<ReadReservation, ScsiError> {
        let (generation, total) = pr_in_header(data, Self::WHAT)?;
        let reservation = match total - HEADER_LEN {
            0 => None,
            n if n >= RESERVATION_DESC_LEN => Some(Reservation {
                key: be64(data, RES_KEY),
                pr_type: decode_type(data[RES_SCOPE_TYPE], Self::WHAT)?,
            }),
            n => {
                return Err(ScsiError::InvalidData {
                    what: Self::WHAT,
                    field: "additional length",
                    value: n as u64,
                })
            }
        };
        Ok(ReadReservation {
            generation,
            reservation,
        })
    }
}

// REPORT CAPABILITIES: 8 bytes, its own length first.
pub const CAPABILITIES_LEN: usize = 8;
const CAPS_LENGTH: usize = 0;
const CAPS_FLAGS: usize = 2;
const CRH: u8 = 0x10;
const SIP_C: u8 = 0x08;
const ATP_C: u8 = 0x04;
const PTPL_C: u8 = 0x01;
const CAPS_FLAGS2: usize = 3;
const TMV: u8 = 0x80;
const ALLOW_COMMANDS_SHIFT: u8 = 4;
const ALLOW_COMMANDS_MASK: u8 = 0x07;
const PTPL_A: u8 = 0x01;
const CAPS_TYPE_MASK: usize = 4;

/// REPORT CAPABILITIES: what the target's PR implementation supports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Capabilities {
    /// Compatible reservation handling (SPC-2 RESERVE/RELEASE interplay).
    pub crh: bool,
    /// SPEC_I_PT supported.
    pub sip_c: bool,
    /// ALL_TG_PT supported.
    pub atp_c: bool,
    /// APTPL supported.
    pub ptpl_c: bool,
    /// ALLOW COMMANDS, 3 bits.
    pub allow_commands: u8,
    /// Persist through power loss is active.
    pub ptpl_a: bool,
    /// The supported types, when the type mask is valid (TMV).
    pub types: Option<Vec<PrType>>,
}

impl Capabilities {
    const WHAT: &'static str = "PR IN REPORT CAPABILITIES data";

    pub fn encode(&self) -> [u8; CAPABILITIES_LEN] {
        let mut b = [0u8; CAPABILITIES_LEN];
        put16(&mut b, CAPS_LENGTH, CAPABILITIES_LEN as u16);
        b[CAPS_FLAGS] = (if self.crh { CRH } else { 0 })
            | (if self.sip_c { SIP_C } else { 0 })
            | (if self.atp_c { ATP_C } else { 0 })
            | (if self.ptpl_c { PTPL_C } else { 0 });
        b[CAPS_FLAGS2] = ((self.allow_commands & ALLOW_COMMANDS_MASK) << ALLOW_COMMANDS_SHIFT)
            | (if self.ptpl_a { PTPL_A } else { 0 });
        if let Some(types) = &self.types {
            b[CAPS_FLAGS2] |= TMV;
            let mask = types.iter().fold(0u16, |m, t| m | t.mask_bit());
            put16(&mut b, CAPS_TYPE_MASK, mask);
        }
        b
    }

    /// Decodes the 8 bytes; types come out in [`PrType::ALL`] order.
    pub fn decode(data: &[u8]) -> Result<Capabilities, ScsiError> {
        if data.len() < CAPABILITIES_LEN {
            return Err(ScsiError::Truncated {
                what: Self::WHAT,
                len: data.len(),
                need: CAPABILITIES_LEN,
            });
        }
        let length = be16(data, CAPS_LENGTH);
        if usize::from(length) < CAPABILITIES_LEN {
            return Err(ScsiError::InvalidData {
                what: Self::WHAT,
                field: "length",
                value: length.into(),
            });
        }
        let (f1, f2) = (data[CAPS_FLAGS], data[CAPS_FLAGS2]);
        let mask = be16(data, CAPS_TYPE_MASK);
        Ok(Capabilities {
            crh: f1 & CRH != 0,
            sip_c: f1 & SIP_C != 0,
            atp_c: f1 & ATP_C != 0,
            ptpl_c: f1 & PTPL_C != 0,
            allow_commands: (f2 >> ALLOW_COMMANDS_SHIFT) & ALLOW_COMMANDS_MASK,
            ptpl_a: f2 & PTPL_A != 0,
            types: (f2 & TMV != 0).then(|| {
                PrType::ALL
                    .into_iter()
                    .filter(|t| mask & t.mask_bit() != 0)
                    .collect()
            }),
        })
    }
}

// READ FULL STATUS descriptors: 24 bytes, then the transport ID.
const FS_KEY: usize = 0;
const FS_FLAGS: usize = 12;
const FS_ALL_TG_PT: u8 = 0x02;
const FS_R_HOLDER: u8 = 0x01;
const FS_SCOPE_TYPE: usize = 13;
const FS_RELATIVE_PORT: usize = 18;
const FS_TID_LEN: usize = 20;
const FS_DESC_HEADER_LEN: usize = 24;

/// READ FULL STATUS: every registration with its I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FullStatus {
    pub generation: u32,
    pub descriptors: Vec<FullStatusDescriptor>,
}

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FullStatusDescriptor {
    pub key: u64,
    /// Registered on every target port (then `relative_port` is not meaningful).
    pub all_tg_pt: bool,
    /// The reservation's type when this registrant holds it (R_HOLDER).
    pub holder: Option<PrType>,
    pub relative_port: u16,
    /// The registered initiator.
    pub transport_id: TransportId,
}

impl FullStatus {
    const WHAT: &'static str = "PR IN READ FULL STATUS data";

    pub fn encode(&self) -> Result<Vec<u8>, ScsiError> {
        let mut body = Vec::new();
        for d in &self.descriptors {
            let tid = d.transport_id.encode()?;
            let mut h = [0u8; FS_DESC_HEADER_LEN];
            put64(&mut h, FS_KEY, d.key);
            h[FS_FLAGS] = (if d.all_tg_pt { FS_ALL_TG_PT } else { 0 })
                | (if d.holder.is_some() { FS_R_HOLDER } else { 0 });
            h[FS_SCOPE_TYPE] = d.holder.map_or(0, |t| t as u8);
            put16(&mut h, FS_RELATIVE_PORT, d.relative_port);
            put32(
                &mut h,
                FS_TID_LEN,
                len32(tid.len(), Self::WHAT, "transport ID")?,
            );
            body.extend_from_slice(&h);
            body.extend_from_slice(&tid);
        }
        let mut b = pr_in_response(self.generation, body.len(), Self::WHAT)?;
        b.extend_from_slice(&body);
        Ok(b)
    }

    pub fn decode(data: &[u8]) -> Result<FullStatus, ScsiError> {
        let (generation, total) = pr_in_header(data, Self::WHAT)?;
        let mut rest = &data[HEADER_LEN..total];
        let mut descriptors = Vec::new();
        while !rest.is_empty() {
            let bad_len = |value: usize| ScsiError::InvalidData {
                what: Self::WHAT,
                field: "descriptor length",
                value: value as u64,
            };
            let h = rest.get(..FS_DESC_HEADER_LEN).ok_or(bad_len(rest.len()))?;
            let tid_len = be32(h, FS_TID_LEN) as usize;
            let tid = rest
                .get(FS_DESC_HEADER_LEN..FS_DESC_HEADER_LEN.saturating_add(tid_len))
                .ok_or(bad_len(tid_len))?;
            let holder = if h[FS_FLAGS] & FS_R_HOLDER != 0 {
                Some(decode_type(h[FS_SCOPE_TYPE], Self::WHAT)?)
            } else {
                None
            };
            descriptors.push(FullStatusDescriptor {
                key: be64(h, FS_KEY),
                all_tg_pt: h[FS_FLAGS] & FS_ALL_TG_PT != 0,
                holder,
                relative_port: be16(h, FS_RELATIVE_PORT),
                transport_id: TransportId::decode(tid)?,
            });
            rest = &rest[FS_DESC_HEADER_LEN + tid.len()..];
        }
        Ok(FullStatus {
            generation,
            descriptors,
        })
    }
}

// Transport IDs (SPC-4 §7.6.4). iSCSI's: byte 0 = format (bits 6-7) |
// protocol (bits 0-3); 2-3 additional length; then the NUL-terminated name,
// padded with NULs to a multiple of 4 and at least 24 bytes in all.
pub const PROTOCOL_ISCSI: u8 = 0x5;
const TID_PROTOCOL_MASK: u8 = 0x0F;
const TID_FORMAT_SHIFT: u8 = 6;
const TID_FORMAT_DEVICE: u8 = 0;
const TID_FORMAT_PORT: u8 = 1;
const TID_ADDITIONAL_LEN: usize = 2;
const TID_HEADER_LEN: usize = 4;
const TID_MIN_LEN: usize = 24;
/// Between name and ISID in the initiator-port form: "iqn…,i,0x<12 hex>".
const ISID_SEPARATOR: &str = ",i,0x";
const ISID_LEN: usize = 6;

/// The initiator a registration belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransportId {
    /// An iSCSI initiator device (format 0x05): the name only.
    Iscsi { name: String },
    /// An iSCSI initiator port (format 0x45): name and ISID, i.e. one path.
    IscsiPort { name: String, isid: [u8; ISID_LEN] },
    /// Another protocol's transport ID, as sent (at least 24 bytes).
    Other(Vec<u8>),
}

impl TransportId {
    const WHAT: &'static str = "transport ID";

    pub fn encode(&self) -> Result<Vec<u8>, ScsiError> {
        let (format, text) = match self {
            TransportId::Other(raw) => return Ok(raw.clone()),
            TransportId::Iscsi { name } => (TID_FORMAT_DEVICE, name.clone()),
            TransportId::IscsiPort { name, isid } => {
                let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
                (TID_FORMAT_PORT, format!("{name}{ISID_SEPARATOR}{hex}"))
            }
        };
        if text.contains('\0') {
            return Err(ScsiError::Unencodable {
                what: Self::WHAT,
                field: "iSCSI name",
                problem: "contains a NUL".into(),
            });
        }
        // Name and its NUL, padded to a multiple of 4, at least 24 in all.
        let len = (TID_HEADER_LEN + text.len() + 1)
            .next_multiple_of(4)
            .max(TID_MIN_LEN);
        let mut b = vec![0u8; len];
        b[0] = (format << TID_FORMAT_SHIFT) | PROTOCOL_ISCSI;
        put16(
            &mut b,
            TID_ADDITIONAL_LEN,
            len16(len - TID_HEADER_LEN, Self::WHAT, "iSCSI name")?,
        );
        b[TID_HEADER_LEN..TID_HEADER_LEN + text.len()].copy_from_slice(text.as_bytes());
        Ok(b)
    }

    /// Decodes one transport ID, `data` being exactly its bytes.
    pub fn decode(data: &[u8]) -> Result<TransportId, ScsiError> {
        let invalid = |field: &'static str, value: u64| ScsiError::InvalidData {
            what: Self::WHAT,
            field,
            value,
        };
        if data.len() < TID_MIN_LEN {
            return Err(invalid("length", data.len() as u64));
        }
        if data[0] & TID_PROTOCOL_MASK != PROTOCOL_ISCSI {
            return Ok(TransportId::Other(data.to_vec()));
        }
        let additional = usize::from(be16(data, TID_ADDITIONAL_LEN));
        let text = data
            .get(TID_HEADER_LEN..TID_HEADER_LEN + additional)
            .ok_or(invalid("additional length", additional as u64))?;
        let text = text.split(|&b| b == 0).next().unwrap_or_default();
        let text = std::str::from_utf8(text)
            .map_err(|e| invalid("UTF-8 in the iSCSI name at offset", e.valid_up_to() as u64))?;
        match data[0] >> TID_FORMAT_SHIFT {
            TID_FORMAT_DEVICE => Ok(TransportId::Iscsi { name: text.into() }),
            TID_FORMAT_PORT => {
                let (name, hex) = text
                    .split_once(ISID_SEPARATOR)
                    .ok_or(invalid("ISID separator", text.len() as u64))?;
                let isid = parse_isid(hex).ok_or(invalid("ISID of length", hex.len() as u64))?;
                Ok(TransportId::IscsiPort {
                    name: name.into(),
                    isid,
                })
            }
            format => Err(invalid("format code", format.into())),
        }
    }
}

/// Twelve hex digits, either case (and no sign, which `from_str_radix` takes).
fn parse_isid(hex: &str) -> Option<[u8; ISID_LEN]> {
    if hex.len() != 2 * ISID_LEN || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut isid = [0u8; ISID_LEN];
    for (i, b) in isid.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(isid)
}
