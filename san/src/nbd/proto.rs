//! The NBD wire format (the `proto.md` of the NBD project): named constants
//! and explicit encode/decode functions for the fixed newstyle handshake,
//! option requests and replies, the transmission request header and the
//! simple reply. All integers are big-endian.
//!
//! Decoders take untrusted bytes: they never panic, check every length
//! against the bytes present and return [`ProtoError`] for anything
//! malformed. Length limits that need a policy (how much option data to
//! accept, how large a request) are constants here and are enforced by the
//! server.

/// `"NBDMAGIC"`, first thing the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `"IHAVEOPT"`: second magic of the newstyle greeting, and the magic of
/// every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server, 16 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

// Client flags (32 bits).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags (16 bits).
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// Option types.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option reply types; errors have bit 31 set.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// Information types of NBD_OPT_INFO / NBD_OPT_GO (NBD_REP_INFO).
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Command types.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Error values of replies (the protocol's own numbering, which happens to
// match Linux errno; not taken from the host's libc).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Bytes of the server greeting: two magics and the handshake flags.
pub const GREETING_LEN: usize = 18;
/// Bytes of an option request header (magic, option, data length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of an option reply header (magic, option, reply type, length).
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Bytes of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Zero padding after NBD_OPT_EXPORT_NAME's answer unless NO_ZEROES.
pub const EXPORT_NAME_PADDING: usize = 124;
/// Longest string (export name) the protocol allows.
pub const MAX_STRING: usize = 4096;
/// Most option data the server takes in: an NBD_OPT_GO with the longest
/// name and a generous list of information requests.
pub const MAX_OPTION_DATA: u32 = 4 + MAX_STRING as u32 + 2 + 2 * 256;
/// Largest READ or WRITE the server accepts (the spec's 32 MiB that
/// clients stay below when no limit was advertised); larger ones get EINVAL.
pub const MAX_REQUEST: u32 = 32 << 20;

/// Malformed input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("expected {expected} bytes, got {got}")]
    Short { expected: usize, got: usize },
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("malformed option data: {0}")]
    BadOption(&'static str),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn need(b: &[u8], expected: usize) -> Result<(), ProtoError> {
    if b.len() < expected {
        return Err(ProtoError::Short {
            expected,
            got: b.len(),
        });
    }
    Ok(())
}

/// The server's greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn encode_greeting(flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&flags.to_be_bytes());
    b
}

/// Decodes a greeting into its handshake flags.
pub fn decode_greeting(b: &[u8]) -> Result<u16, ProtoError> {
    need(b, GREETING_LEN)?;
    for (at, want) in [(0, NBD_MAGIC), (8, IHAVEOPT)] {
        let got = be64(b, at);
        if got != want {
            return Err(ProtoError::BadMagic(got));
        }
    }
    Ok(be16(b, 16))
}

/// Decodes the client flags, refusing flags the server did not offer
/// (`server_flags` are the handshake flags it sent), as the spec requires.
pub fn decode_client_flags(b: &[u8], server_flags: u16) -> Result<u32, ProtoError> {
    need(b, 4)?;
    let flags = be32(b, 0);
    let mut allowed = FLAG_C_FIXED_NEWSTYLE;
    if server_flags & FLAG_NO_ZEROES != 0 {
        allowed |= FLAG_C_NO_ZEROES;
    }
    if flags & !allowed != 0 {
        return Err(ProtoError::UnknownClientFlags(flags));
    }
    Ok(flags)
}

/// An option request header; `len` bytes of data follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

pub fn encode_option_header(h: &OptionHeader) -> [u8; OPTION_HEADER_LEN] {
    let mut b = [0u8; OPTION_HEADER_LEN];
    b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[8..12].copy_from_slice(&h.option.to_be_bytes());
    b[12..16].copy_from_slice(&h.len.to_be_bytes());
    b
}

pub fn decode_option_header(b: &[u8]) -> Result<OptionHeader, ProtoError> {
    need(b, OPTION_HEADER_LEN)?;
    let magic = be64(b, 0);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic(magic));
    }
    Ok(OptionHeader {
        option: be32(b, 8),
        len: be32(b, 12),
    })
}

/// An option reply header; `len` bytes of data follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply: u32,
    pub len: u32,
}

/// A whole option reply: header and data. Data longer than u32::MAX is a
/// programming error; it cannot come from the server's own replies.
pub fn encode_option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

pub fn decode_option_reply_header(b: &[u8]) -> Result<OptionReplyHeader, ProtoError> {
    need(b, OPTION_REPLY_HEADER_LEN)?;
    let magic = be64(b, 0);
    if magic != OPTION_REPLY_MAGIC {
        return Err(ProtoError::BadMagic(magic));
    }
    Ok(OptionReplyHeader {
        option: be32(b, 8),
        reply: be32(b, 12),
        len: be32(b, 16),
    })
}

/// The data of NBD_OPT_INFO and NBD_OPT_GO: an export name and the
/// information types the client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: Vec<u8>,
    pub infos: Vec<u16>,
}

pub fn encode_info_request(r: &InfoRequest) -> Vec<u8> {
    let mut b = Vec::with_capacity(6 + r.name.len() + 2 * r.infos.len());
    b.extend_from_slice(&(r.name.len() as u32).to_be_bytes());
    b.extend_from_slice(&r.name);
    b.extend_from_slice(&(r.infos.len() as u16).to_be_bytes());
    for i in &r.infos {
        b.extend_from_slice(&i.to_be_bytes());
    }
    b
}

/// Decodes NBD_OPT_INFO/GO data; the lengths inside must add up to exactly
/// the data given.
pub fn decode_info_request(b: &[u8]) -> Result<InfoRequest, ProtoError> {
    if b.len() < 6 {
        return Err(ProtoError::BadOption("shorter than 6 bytes"));
    }
    let name_len = be32(b, 0) as usize;
    if name_len > MAX_STRING || name_len > b.len() - 6 {
        return Err(ProtoError::BadOption("name length past the data"));
    }
    let name = b[4..4 + name_len].to_vec();
    let at = 4 + name_len;
    let count = usize::from(be16(b, at));
    let rest = &b[at + 2..];
    if rest.len() != 2 * count {
        return Err(ProtoError::BadOption(
            "information request count does not match the data",
        ));
    }
    let infos = rest.chunks_exact(2).map(|c| be16(c, 0)).collect();
    Ok(InfoRequest { name, infos })
}

/// NBD_REP_INFO data for NBD_INFO_EXPORT: size and transmission flags.
pub fn encode_info_export(size: u64, flags: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size.to_be_bytes());
    b[10..12].copy_from_slice(&flags.to_be_bytes());
    b
}

/// Block size constraints: minimum, preferred, maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub min: u32,
    pub preferred: u32,
    pub max: u32,
}

/// NBD_REP_INFO data for NBD_INFO_BLOCK_SIZE.
pub fn encode_info_block_size(s: &BlockSizes) -> [u8; 14] {
    let mut b = [0u8; 14];
    b[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&s.min.to_be_bytes());
    b[6..10].copy_from_slice(&s.preferred.to_be_bytes());
    b[10..14].copy_from_slice(&s.max.to_be_bytes());
    b
}

/// NBD_REP_INFO data for NBD_INFO_NAME.
pub fn encode_info_name(name: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + name.len());
    b.extend_from_slice(&INFO_NAME.to_be_bytes());
    b.extend_from_slice(name);
    b
}

/// What a client learns from one NBD_REP_INFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export { size: u64, flags: u16 },
    BlockSize(BlockSizes),
    Name(Vec<u8>),
    Other(u16),
}

pub fn decode_info(b: &[u8]) -> Result<Info, ProtoError> {
    need(b, 2)?;
    match be16(b, 0) {
        INFO_EXPORT => {
            need(b, 12)?;
            Ok(Info::Export {
                size: be64(b, 2),
                flags: be16(b, 10),
            })
        }
        INFO_BLOCK_SIZE => {
            need(b, 14)?;
            Ok(Info::BlockSize(BlockSizes {
                min: be32(b, 2),
                preferred: be32(b, 6),
                max: be32(b, 10),
            }))
        }
        INFO_NAME => Ok(Info::Name(b[2..].to_vec())),
        t => Ok(Info::Other(t)),
    }
}

/// NBD_REP_SERVER data for NBD_OPT_LIST: the name with its length.
pub fn encode_rep_server(name: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name);
    b
}

/// The export name in NBD_REP_SERVER data.
pub fn decode_rep_server(b: &[u8]) -> Result<Vec<u8>, ProtoError> {
    need(b, 4)?;
    let n = be32(b, 0) as usize;
    if n > b.len() - 4 {
        return Err(ProtoError::BadOption("name length past the data"));
    }
    Ok(b[4..4 + n].to_vec())
}

/// The answer to NBD_OPT_EXPORT_NAME: size, transmission flags and,
/// unless the client set NO_ZEROES, 124 zero bytes.
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.resize(10 + EXPORT_NAME_PADDING, 0);
    }
    b
}

/// A transmission request header. `cookie` is the spec's "handle".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

pub fn encode_request(r: &Request) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.kind.to_be_bytes());
    b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.len.to_be_bytes());
    b
}

pub fn decode_request(b: &[u8]) -> Result<Request, ProtoError> {
    need(b, REQUEST_LEN)?;
    let magic = be32(b, 0);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic(u64::from(magic)));
    }
    Ok(Request {
        flags: be16(b, 4),
        kind: be16(b, 6),
        cookie: be64(b, 8),
        offset: be64(b, 16),
        len: be32(b, 24),
    })
}

/// A simple reply header: error (0 = success) and the request's cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

pub fn encode_simple_reply(r: &SimpleReply) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&r.error.to_be_bytes());
    b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    b
}

pub fn decode_simple_reply(b: &[u8]) -> Result<SimpleReply, ProtoError> {
    need(b, SIMPLE_REPLY_LEN)?;
    let magic = be32(b, 0);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(ProtoError::BadMagic(u64::from(magic)));
    }
    Ok(SimpleReply {
        error: be32(b, 4),
        cookie: be64(b, 8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&NBD_MAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
    }

    #[test]
    fn greeting_layout() {
        let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
        assert_eq!(decode_greeting(&g), Ok(3));
    }

    #[test]
    fn client_flags_must_match_the_offer() {
        assert_eq!(decode_client_flags(&[0, 0, 0, 3], 3), Ok(3));
        assert!(decode_client_flags(&[0, 0, 0, 2], FLAG_FIXED_NEWSTYLE).is_err());
        assert!(decode_client_flags(&[0, 0, 0, 4], 3).is_err());
        assert!(decode_client_flags(&[0, 0, 0], 3).is_err());
    }

    #[test]
    fn info_request_lengths_must_add_up() {
        let r = InfoRequest {
            name: b"disk".to_vec(),
            infos: vec![INFO_BLOCK_SIZE, INFO_NAME],
        };
        let b = encode_info_request(&r);
        assert_eq!(decode_info_request(&b), Ok(r));
        assert!(decode_info_request(&b[..b.len() - 1]).is_err());
        let mut long = b.clone();
        long.push(0);
        assert!(decode_info_request(&long).is_err());
        let mut bad_name = b;
        bad_name[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_info_request(&bad_name).is_err());
    }

    #[test]
    fn export_name_reply_padding() {
        assert_eq!(encode_export_name_reply(1, 1, false).len(), 134);
        assert_eq!(encode_export_name_reply(1, 1, true).len(), 10);
    }
}
