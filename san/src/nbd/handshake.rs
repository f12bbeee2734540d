//! The fixed newstyle handshake and option haggling, up to the export the
//! client chose (NBD_OPT_EXPORT_NAME or NBD_OPT_GO).

use super::export::Export;
use super::proto::{self, ProtoError};
use super::registry::ConnCtl;
use super::server::Shared;
use super::stream::Stream;
use super::ConnError;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The whole handshake must be over within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Option requests one connection may make before it must choose an export.
const MAX_OPTIONS: usize = 256;
/// Handshake flags we offer.
const SERVER_FLAGS: u16 = proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES;

/// Reads exactly `buf.len()` bytes before `deadline`.
fn read_by(s: &mut Stream, buf: &mut [u8], deadline: Instant) -> Result<(), ConnError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ConnError::Timeout(HANDSHAKE_TIMEOUT));
    }
    s.set_read_timeout(Some(left))?;
    s.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            ConnError::Timeout(HANDSHAKE_TIMEOUT)
        }
        _ => ConnError::Io(e),
    })
}

/// Reads and drops `n` bytes before `deadline`.
fn skip_by(s: &mut Stream, mut n: u64, deadline: Instant) -> Result<(), ConnError> {
    let mut buf = [0u8; 8192];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        read_by(s, &mut buf[..k], deadline)?;
        n -= k as u64;
    }
    Ok(())
}

fn reply(s: &mut Stream, option: u32, kind: u32, data: &[u8]) -> Result<(), ConnError> {
    s.write_all(&proto::encode_option_reply(option, kind, data))?;
    Ok(())
}

/// Negotiates with the client. `Ok(Some(export))`: transmission begins on
/// that export (already recorded on `ctl`); `Ok(None)`: the client ended
/// the handshake politely (NBD_OPT_ABORT).
pub(crate) fn negotiate(
    sh: &Shared,
    s: &mut Stream,
    ctl: &ConnCtl,
) -> Result<Option<Arc<Export>>, ConnError> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    // A client that does not read our answers cannot hold the thread either.
    s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    s.write_all(&proto::encode_greeting(SERVER_FLAGS))?;
    let mut b = [0u8; 4];
    read_by(s, &mut b, deadline)?;
    let client_flags = proto::decode_client_flags(&b, SERVER_FLAGS)?;
    let no_zeroes = client_flags & proto::FLAG_C_NO_ZEROES != 0;
    for _ in 0..MAX_OPTIONS {
        let mut h = [0u8; proto::OPTION_HEADER_LEN];
        read_by(s, &mut h, deadline)?;
        let h = proto::decode_option_header(&h)?;
        if h.len > proto::MAX_OPTION_DATA {
            if h.option == proto::OPT_EXPORT_NAME {
                return Err(ConnError::Protocol(format!(
                    "NBD_OPT_EXPORT_NAME with {} bytes of name",
                    h.len
                )));
            }
            skip_by(s, u64::from(h.len), deadline)?;
            let msg = format!("option data of {} bytes is too long", h.len);
            reply(s, h.option, proto::REP_ERR_TOO_BIG, msg.as_bytes())?;
            continue;
        }
        let mut data = vec![0u8; h.len as usize];
        read_by(s, &mut data, deadline)?;
        match h.option {
            proto::OPT_EXPORT_NAME => {
                // No way to answer an error: an unknown name ends the session.
                let Some(export) = choose(sh, ctl, &data) else {
                    return Err(ConnError::Protocol(format!(
                        "NBD_OPT_EXPORT_NAME for unknown export {:?}",
                        String::from_utf8_lossy(&data)
                    )));
                };
                let r = proto::encode_export_name_reply(
                    export.size(),
                    export.transmission_flags(),
                    no_zeroes,
                );
                s.write_all(&r)?;
                return Ok(Some(export));
            }
            proto::OPT_ABORT => {
                let _ = reply(s, h.option, proto::REP_ACK, &[]);
                return Ok(None);
            }
            proto::OPT_LIST => {
                if !data.is_empty() {
                    reply(
                        s,
                        h.option,
                        proto::REP_ERR_INVALID,
                        b"NBD_OPT_LIST takes no data",
                    )?;
                    continue;
                }
                for name in sh.export_names() {
                    let d = proto::encode_rep_server(name.as_bytes());
                    reply(s, h.option, proto::REP_SERVER, &d)?;
                }
                reply(s, h.option, proto::REP_ACK, &[])?;
            }
            proto::OPT_INFO | proto::OPT_GO => {
                if let Some(export) = info(sh, s, ctl, h.option, &data)? {
                    return Ok(Some(export));
                }
            }
            proto::OPT_STRUCTURED_REPLY => {
                reply(s, h.option, proto::REP_ERR_UNSUP, b"simple replies only")?;
            }
            proto::OPT_STARTTLS => {
                reply(s, h.option, proto::REP_ERR_UNSUP, b"no TLS")?;
            }
            other => {
                let msg = format!("option {other} is not supported");
                reply(s, h.option, proto::REP_ERR_UNSUP, msg.as_bytes())?;
            }
        }
    }
    Err(ConnError::Protocol(format!(
        "more than {MAX_OPTIONS} options without choosing an export"
    )))
}

/// Looks up `name` and records it on the connection, unless it is being
/// removed (then it is as unknown: removal waits only for connections it
/// can see, so one must not start using the export after removal began).
fn choose(sh: &Shared, ctl: &ConnCtl, name: &[u8]) -> Option<Arc<Export>> {
    let export = sh.export(std::str::from_utf8(name).ok()?)?;
    ctl.set_export(export.id);
    if export.removed() {
        ctl.set_export(0);
        return None;
    }
    Some(export)
}

/// NBD_OPT_INFO or NBD_OPT_GO; `Some` when GO succeeded.
fn info(
    sh: &Shared,
    s: &mut Stream,
    ctl: &ConnCtl,
    option: u32,
    data: &[u8],
) -> Result<Option<Arc<Export>>, ConnError> {
    let req = match proto::decode_info_request(data) {
        Ok(r) => r,
        Err(ProtoError::BadOption(why)) => {
            reply(s, option, proto::REP_ERR_INVALID, why.as_bytes())?;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let export = if option == proto::OPT_GO {
        choose(sh, ctl, &req.name)
    } else {
        std::str::from_utf8(&req.name)
            .ok()
            .and_then(|n| sh.export(n))
    };
    let Some(export) = export else {
        let msg = format!("no export {:?}", String::from_utf8_lossy(&req.name));
        reply(s, option, proto::REP_ERR_UNKNOWN, msg.as_bytes())?;
        return Ok(None);
    };
    let d = proto::encode_info_export(export.size(), export.transmission_flags());
    reply(s, option, proto::REP_INFO, &d)?;
    if req.infos.contains(&proto::INFO_BLOCK_SIZE) {
        let d = proto::encode_info_block_size(&export.block_sizes());
        reply(s, option, proto::REP_INFO, &d)?;
    }
    if req.infos.contains(&proto::INFO_NAME) {
        let d = proto::encode_info_name(export.name.as_bytes());
        reply(s, option, proto::REP_INFO, &d)?;
    }
    reply(s, option, proto::REP_ACK, &[])?;
    Ok((option == proto::OPT_GO).then_some(export))
}
