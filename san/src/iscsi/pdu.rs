//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment, optional
//! AHS, the data segment padded to 4 bytes, and CRC32C digests. One codec
//! for both sides: the initiator and the target read and write the same
//! bytes. Fields are named byte offsets into the BHS, as in the RFC's
//! figures, so a reader checks a layout against §11 at a glance.

use std::io::{self, Read, Write};

pub const BHS_LEN: usize = 48;

// Byte offsets in the BHS shared by most opcodes.
/// bit 6: immediate delivery; bits 0-5: opcode.
pub const OFF_OPCODE: usize = 0;
/// F (0x80) plus opcode-specific flags.
pub const OFF_FLAGS: usize = 1;
/// Opcode-specific bytes 2-3 (Login: version max/min; Response: response, status).
pub const OFF_B2: usize = 2;
pub const OFF_B3: usize = 3;
/// Total AHS length in 4-byte words.
pub const OFF_AHS_LEN: usize = 4;
/// Data segment length: 24 bits, bytes 5-7.
pub const OFF_DATA_LEN: usize = 5;
/// LUN (8 bytes), or ISID (6) + TSIH (2) in Login PDUs.
pub const OFF_LUN: usize = 8;
pub const OFF_ISID: usize = 8;
pub const OFF_TSIH: usize = 14;
pub const OFF_ITT: usize = 16;
/// TTT, ExpectedDataTransferLength (SCSI Command) or CID (Login, Logout).
pub const OFF_20: usize = 20;
/// CmdSN (initiator to target) or StatSN (target to initiator).
pub const OFF_24: usize = 24;
/// ExpStatSN (initiator to target) or ExpCmdSN (target to initiator).
pub const OFF_28: usize = 28;
/// MaxCmdSN (target to initiator); the CDB starts here in a SCSI Command.
pub const OFF_32: usize = 32;
/// DataSN / R2TSN / Login Status-Class and Detail.
pub const OFF_36: usize = 36;
/// Buffer offset (Data-In/Out, R2T).
pub const OFF_40: usize = 40;
/// Residual count (Response, Data-In) or desired length (R2T).
pub const OFF_44: usize = 44;
pub const CDB_LEN: usize = 16;

pub const FLAG_FINAL: u8 = 0x80;
pub const IMMEDIATE: u8 = 0x40;
/// The reserved tag: "no task" (unsolicited NOP-In, unsolicited Data-Out).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Largest data segment either side accepts before negotiation; the
/// negotiated MaxRecvDataSegmentLength bounds it afterwards (RFC 7143 §13.12).
pub const MAX_DATA_SEGMENT: u32 = (1 << 24) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    Snack = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_byte(b: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match b & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => Snack,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }

    /// Target-to-initiator opcodes have bit 5 set.
    pub fn from_target(self) -> bool {
        (self as u8) & 0x20 != 0
    }
}

impl From<io::Error> for PduError {
    fn from(e: io::Error) -> PduError {
        PduError::Io(e)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    // What a socket read timeout gives.
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Which digests the connection negotiated (both off until login ends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("connection closed by the peer")]
    Closed,
    /// The read timeout passed between PDUs (nothing of the next was
    /// read): the connection is idle, not broken. A timeout inside a PDU
    /// is an `Io` error.
    #[error("no answer from the peer in time")]
    Timeout,
    #[error("network I/O failed: {0}")]
    Io(io::Error),
    #[error("unknown iSCSI opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("header digest mismatch (got {got:#010x}, computed {want:#010x}): the connection is corrupt")]
    HeaderDigest { got: u32, want: u32 },
    #[error("data digest mismatch (got {got:#010x}, computed {want:#010x})")]
    DataDigest { got: u32, want: u32 },
    #[error("data segment of {len} bytes exceeds the negotiated maximum of {max}")]
    DataTooLong { len: u32, max: u32 },
}

/// One PDU: header bytes as on the wire, AHS and unpadded data.
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Pdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pdu({:?} flags={:#04x} itt={:#x} data={}B)",
            self.opcode(),
            self.flags(),
            self.itt(),
            self.data.len()
        )
    }
}

impl Pdu {
    pub fn new(op: Opcode) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[OFF_OPCODE] = op as u8;
        Pdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }

    /// `None` for an opcode this codec does not know (the reader refuses
    /// those, so a decoded PDU always has one).
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_byte(self.bhs[OFF_OPCODE])
    }
    pub fn immediate(&self) -> bool {
        self.bhs[OFF_OPCODE] & IMMEDIATE != 0
    }
    pub fn set_immediate(&mut self, on: bool) {
        if on {
            self.bhs[OFF_OPCODE] |= IMMEDIATE;
        } else {
            self.bhs[OFF_OPCODE] &= !IMMEDIATE;
        }
    }
    pub fn flags(&self) -> u8 {
        self.bhs[OFF_FLAGS]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.bhs[OFF_FLAGS] = f;
    }
    pub fn is_final(&self) -> bool {
        self.flags() & FLAG_FINAL != 0
    }

    pub fn u32_at(&self, off: usize) -> u32 {
        be32(&self.bhs, off)
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.bhs[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(OFF_ITT)
    }
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(OFF_ITT, v)
    }
    pub fn lun(&self) -> [u8; 8] {
        let mut l = [0u8; 8];
        l.copy_from_slice(&self.bhs[OFF_LUN..OFF_LUN + 8]);
        l
    }
    pub fn set_lun(&mut self, lun: [u8; 8]) {
        self.bhs[OFF_LUN..OFF_LUN + 8].copy_from_slice(&lun);
    }

    /// Encodes with `d`'s digests; the length fields come from `ahs` and `data`.
    pub fn encode(&self, d: Digests) -> Vec<u8> {
        let mut out = Vec::with_capacity(BHS_LEN + self.ahs.len() + self.data.len() + 12);
        self.encode_into(d, &mut out);
        out
    }

    pub fn encode_into(&self, d: Digests, out: &mut Vec<u8>) {
        let data = &self.data[..self.data.len().min(MAX_DATA_SEGMENT as usize)];
        self.encode_header(d, data.len(), out);
        if !data.is_empty() {
            let data_start = out.len();
            out.extend_from_slice(data);
            out.resize(data_start + pad4(data.len()), 0);
            if d.data {
                let c = crc32c::crc32c(&out[data_start..]);
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
    }

    /// The BHS (with the lengths filled in for a data segment of
    /// `data_len` bytes), the padded AHS and the header digest.
    fn encode_header(&self, d: Digests, data_len: usize, out: &mut Vec<u8>) {
        let mut bhs = self.bhs;
        let ahs_padded = pad4(self.ahs.len());
        bhs[OFF_AHS_LEN] = (ahs_padded / 4).min(255) as u8;
        let dl = (data_len as u32).min(MAX_DATA_SEGMENT);
        bhs[OFF_DATA_LEN..OFF_DATA_LEN + 3].copy_from_slice(&dl.to_be_bytes()[1..]);
        let start = out.len();
        out.extend_from_slice(&bhs);
        out.extend_from_slice(&self.ahs);
        out.resize(start + BHS_LEN + ahs_padded, 0);
        if d.header {
            let c = crc32c::crc32c(&out[start..]);
            out.extend_from_slice(&c.to_le_bytes());
        }
    }

    pub fn write_to(&self, w: &mut impl Write, d: Digests) -> io::Result<()> {
        w.write_all(&self.encode(d))
    }

    /// Writes this PDU with `data` as its data segment (its own `data` is
    /// not used), without copying `data` into it: Data-Out and immediate
    /// data go from the caller's buffer to the socket.
    pub fn write_with_data(&self, w: &mut impl Write, d: Digests, data: &[u8]) -> io::Result<()> {
        let f = self.frame(d, data)?;
        w.write_all(&f.head)?;
        if data.is_empty() {
            return Ok(());
        }
        w.write_all(data)?;
        w.write_all(f.tail())
    }

    /// Appends this PDU with `data` as its data segment to `out`: the
    /// bytes [`Pdu::write_with_data`] writes.
    pub fn encode_with_data_into(
        &self,
        d: Digests,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let f = self.frame(d, data)?;
        out.extend_from_slice(&f.head);
        out.extend_from_slice(data);
        out.extend_from_slice(f.tail());
        Ok(())
    }

    /// What goes around `data` on the wire, for a vectored write of a
    /// borrowed data segment: head, then `data`, then the tail.
    pub fn frame(&self, d: Digests, data: &[u8]) -> io::Result<Frame> {
        if data.len() > MAX_DATA_SEGMENT as usize {
            return Err(io::Error::other("data segment over 16 MiB"));
        }
        let mut head = Vec::with_capacity(BHS_LEN + self.ahs.len() + 8);
        self.encode_header(d, data.len(), &mut head);
        // Padding to 4 bytes, then the data digest (over data and padding).
        let pad = pad4(data.len()) - data.len();
        let mut tail = [0u8; 7];
        let mut tail_len = 0;
        if !data.is_empty() {
            tail_len = pad;
            if d.data {
                let c = crc32c::crc32c_append(crc32c::crc32c(data), &tail[..pad]);
                tail[pad..pad + 4].copy_from_slice(&c.to_le_bytes());
                tail_len += 4;
            }
        }
        Ok(Frame {
            head,
            tail,
            tail_len,
        })
    }

    /// Reads one PDU. `max_data` is what we declared as our
    /// MaxRecvDataSegmentLength: a longer segment is refused before any of
    /// it is read, so a hostile peer cannot make us allocate 16 MiB.
    pub fn read_from(r: &mut impl Read, d: Digests, max_data: u32) -> Result<Pdu, PduError> {
        let (mut p, len) = Pdu::read_head(r, d, max_data)?;
        p.data = read_segment_vec(r, d, len)?;
        Ok(p)
    }

    /// Reads a PDU's header (BHS, AHS, header digest) and returns it with
    /// an empty `data` and the length of the data segment that follows,
    /// which the caller reads with [`read_segment`] (into where it
    /// belongs) or [`read_segment_vec`]. `max_data` as in [`Pdu::read_from`].
    pub fn read_head(
        r: &mut impl Read,
        d: Digests,
        max_data: u32,
    ) -> Result<(Pdu, usize), PduError> {
        let mut bhs = [0u8; BHS_LEN];
        read_exact_or_closed(r, &mut bhs)?;
        let op = bhs[OFF_OPCODE];
        if Opcode::from_byte(op).is_none() {
            return Err(PduError::UnknownOpcode(op & 0x3f));
        }
        let ahs_len = bhs[OFF_AHS_LEN] as usize * 4;
        let data_len = data_segment_len(&bhs);
        if data_len > max_data {
            return Err(PduError::DataTooLong {
                len: data_len,
                max: max_data,
            });
        }
        let mut ahs = vec![0u8; ahs_len];
        r.read_exact(&mut ahs)?;
        if d.header {
            let got = read_u32_le(r)?;
            let mut h = crc32c::crc32c(&bhs);
            h = crc32c::crc32c_append(h, &ahs);
            if got != h {
                return Err(PduError::HeaderDigest { got, want: h });
            }
        }
        Ok((
            Pdu {
                bhs,
                ahs,
                data: Vec::new(),
            },
            data_len as usize,
        ))
    }
}

/// The bytes around a borrowed data segment (see [`Pdu::frame`]).
pub struct Frame {
    /// BHS, AHS and header digest.
    pub head: Vec<u8>,
    tail: [u8; 7],
    tail_len: usize,
}

impl Frame {
    /// Padding and data digest.
    pub fn tail(&self) -> &[u8] {
        &self.tail[..self.tail_len]
    }
}

/// Reads a data segment of `dst.len()` bytes (the length [`Pdu::read_head`]
/// gave) into `dst`, with its padding and data digest.
pub fn read_segment(r: &mut impl Read, d: Digests, dst: &mut [u8]) -> Result<(), PduError> {
    if dst.is_empty() {
        return Ok(());
    }
    r.read_exact(dst)?;
    let mut pad = [0u8; 3];
    let pad = &mut pad[..pad4(dst.len()) - dst.len()];
    r.read_exact(pad)?;
    if d.data {
        let got = read_u32_le(r)?;
        let want = crc32c::crc32c_append(crc32c::crc32c(dst), pad);
        if got != want {
            return Err(PduError::DataDigest { got, want });
        }
    }
    Ok(())
}

/// [`read_segment`] into a new vector of `len` bytes.
pub fn read_segment_vec(r: &mut impl Read, d: Digests, len: usize) -> Result<Vec<u8>, PduError> {
    let mut data = vec![0u8; len];
    read_segment(r, d, &mut data)?;
    Ok(data)
}

pub fn data_segment_len(bhs: &[u8; BHS_LEN]) -> u32 {
    u32::from_be_bytes([
        0,
        bhs[OFF_DATA_LEN],
        bhs[OFF_DATA_LEN + 1],
        bhs[OFF_DATA_LEN + 2],
    ])
}

pub fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn read_u32_le(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// EOF before the first byte of a PDU is a clean close; inside one it is an error.
fn read_exact_or_closed(r: &mut impl Read, buf: &mut [u8]) -> Result<(), PduError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Err(PduError::Closed),
            Ok(0) => return Err(PduError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if got == 0 && is_timeout(&e) => return Err(PduError::Timeout),
            Err(e) => return Err(PduError::Io(e)),
        }
    }
    Ok(())
}

/// Data-In flag: status included (phase collapse), so StatSN is valid.
pub const DATA_IN_STATUS: u8 = 0x01;

/// Notes the StatSN and command window a target-to-initiator PDU carries:
/// ExpStatSN moves past every PDU that takes a StatSN (not R2T, not an
/// unsolicited NOP-In, not Data-In without status); MaxCmdSN moves forward
/// only with a valid window (MaxCmdSN >= ExpCmdSN - 1, RFC 7143 §4.2.2.1),
/// never from a Login Response. Returns whether the window moved.
pub fn note_sequence(exp_stat_sn: &mut u32, max_cmd_sn: &mut u32, p: &Pdu) -> bool {
    let stat_sn = p.u32_at(OFF_24);
    let exp = p.u32_at(OFF_28);
    let max = p.u32_at(OFF_32);
    let has_stat_sn = match p.opcode() {
        Some(Opcode::NopIn) => p.itt() != RESERVED_TAG,
        Some(Opcode::DataIn) => p.flags() & DATA_IN_STATUS != 0,
        Some(Opcode::R2t) | Some(Opcode::LoginResponse) | None => false,
        Some(_) => true,
    };
    if has_stat_sn && sn_le(*exp_stat_sn, stat_sn) {
        *exp_stat_sn = stat_sn.wrapping_add(1);
    }
    let moved = p.opcode() != Some(Opcode::LoginResponse)
        && sn_le(exp.wrapping_sub(1), max)
        && sn_lt(*max_cmd_sn, max);
    if moved {
        *max_cmd_sn = max;
    }
    moved
}

/// SAM single-level LUN addressing (peripheral for < 256, flat above).
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else {
        l[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        l[1] = lun as u8;
    }
    l
}

pub fn decode_lun(l: [u8; 8]) -> u16 {
    match l[0] >> 6 {
        1 => (u16::from(l[0] & 0x3f) << 8) | u16::from(l[1]),
        _ => u16::from(l[1]),
    }
}

/// Serial number arithmetic (RFC 1982, 32 bits): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value_and_wire_order() {
        // RFC 3720 B.4 / the spec's check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let mut p = Pdu::new(Opcode::NopOut);
        p.data = b"abc".to_vec();
        let d = Digests {
            header: true,
            data: true,
        };
        let wire = p.encode(d);
        // BHS, header digest, data padded to 4, data digest.
        assert_eq!(wire.len(), 48 + 4 + 4 + 4);
        let hd = crc32c::crc32c(&wire[..48]);
        assert_eq!(&wire[48..52], &hd.to_le_bytes());
        assert_eq!(&wire[52..56], b"abc\0");
        assert_eq!(&wire[56..60], &crc32c::crc32c(b"abc\0").to_le_bytes());
        let back = Pdu::read_from(&mut &wire[..], d, 8192).unwrap();
        assert_eq!(back.data, b"abc");
    }

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_le(7, 7));
    }

    #[test]
    fn lun_encoding() {
        assert_eq!(encode_lun(2), [0, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_lun(encode_lun(300)), 300);
    }
}
