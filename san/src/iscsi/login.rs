//! Login (RFC 7143 §6.3, §11.12-13): the security stage with optional
//! CHAP, then operational negotiation, then full feature phase. Also the
//! discovery session's SendTargets (§12.3).

use super::pdu::{self, Digests, Opcode, Pdu};
use super::text::{self, Offer, Params};
use super::IscsiError;
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

// Login PDU flags (byte 1) and stages.
const LOGIN_TRANSIT: u8 = 0x80;
const LOGIN_CONTINUE: u8 = 0x40;
const STAGE_SECURITY: u8 = 0;
const STAGE_OPERATIONAL: u8 = 1;
const STAGE_FULL_FEATURE: u8 = 3;
/// Login status class/detail (bytes 36, 37 of the response).
const OFF_STATUS_CLASS: usize = 36;
/// Text/Login response: more text follows (C bit).
const TEXT_CONTINUE: u8 = 0x40;
/// tgtd answers some operational PDUs without T while it declares keys of
/// its own; rounds are bounded so a peer cannot keep us in login.
const MAX_LOGIN_ROUNDS: usize = 16;
/// Discovery answers may span many PDUs; this bounds their total.
const MAX_SENDTARGETS_BYTES: usize = 1 << 20;
/// What we accept per PDU during login (RFC default).
const LOGIN_MAX_DATA: u32 = 8192;

/// CHAP credentials (MD5, the only algorithm RFC 7143 defines).
#[derive(Clone)]
pub struct Chap {
    pub user: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chap({}, secret hidden)", self.user)
    }
}

/// How we log in on one path.
#[derive(Clone, Debug)]
pub struct LoginOptions {
    pub initiator_name: String,
    /// Stable per (host, path): a reconnect with the same ISID reinstates
    /// the session (and the target aborts the old one's tasks).
    pub isid: [u8; 6],
    pub chap: Option<Chap>,
    pub offer: Offer,
    /// Connect and each login exchange.
    pub timeout: Duration,
}

impl LoginOptions {
    pub fn new(initiator_name: &str, isid: [u8; 6]) -> LoginOptions {
        LoginOptions {
            initiator_name: initiator_name.to_string(),
            isid,
            chap: None,
            offer: Offer::default(),
            timeout: Duration::from_secs(15),
        }
    }
}

/// A random-type ISID (top bits 0b10, RFC 7143 §11.12.5) from a path number
/// and a host-chosen qualifier, so each (host, path) keeps its own.
pub fn isid(host_qualifier: u32, path: u16) -> [u8; 6] {
    let q = host_qualifier.to_be_bytes();
    let p = path.to_be_bytes();
    [0x80, q[1], q[2], q[3], p[0], p[1]]
}

/// A logged-in connection in full feature phase, with its sequence state.
pub struct Connection {
    pub reader: BufReader<TcpStream>,
    pub writer: BufWriter<TcpStream>,
    pub params: Params,
    pub digests: Digests,
    pub tsih: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
    pub addr: SocketAddr,
}

impl Connection {
    pub fn send(&mut self, p: &Pdu) -> Result<(), IscsiError> {
        p.write_to(&mut self.writer, self.digests)
            .and_then(|()| self.writer.flush())
            .map_err(|e| IscsiError::Pdu(e.into()))
    }

    pub fn recv(&mut self, max_data: u32) -> Result<Pdu, IscsiError> {
        Ok(Pdu::read_from(&mut self.reader, self.digests, max_data)?)
    }

    /// Takes the target's StatSN and command window from any PDU that has them.
    pub fn track(&mut self, p: &Pdu) {
        pdu::note_sequence(&mut self.exp_stat_sn, &mut self.max_cmd_sn, p);
    }
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, IscsiError> {
    let s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| IscsiError::Connect { addr, source })?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    Ok(s)
}

/// What one read of the socket takes in for PDU headers and small segments
/// (several 4 KiB Data-In PDUs). Larger, and more of a big segment would be
/// copied out of it instead of read into its caller's buffer directly.
const READ_BUFFER: usize = 32 << 10;

/// Logs in to `target` (None: a discovery session) at `addr`.
pub fn login(
    addr: SocketAddr,
    target: Option<&str>,
    opts: &LoginOptions,
) -> Result<Connection, IscsiError> {
    let stream = connect(addr, opts.timeout)?;
    let reader = BufReader::with_capacity(READ_BUFFER, stream.try_clone().map_err(pdu_io)?);
    let writer = BufWriter::with_capacity(256 << 10, stream);
    let mut c = Connection {
        reader,
        writer,
        params: Params::rfc_defaults(),
        digests: Digests::default(),
        tsih: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        max_cmd_sn: 1,
        addr,
    };
    let mut first = vec![
        ("InitiatorName".to_string(), opts.initiator_name.clone()),
        (
            "SessionType".into(),
            if target.is_some() {
                "Normal"
            } else {
                "Discovery"
            }
            .into(),
        ),
    ];
    if let Some(t) = target {
        first.push(("TargetName".into(), t.to_string()));
    }
    let auth = if opts.chap.is_some() {
        "CHAP,None"
    } else {
        "None"
    };
    first.push(("AuthMethod".into(), auth.into()));

    // Security stage.
    let mut ex = Exchange {
        c: &mut c,
        opts,
        itt: 0,
    };
    let ans = ex.round(
        STAGE_SECURITY,
        Some(STAGE_OPERATIONAL),
        &first,
        opts.chap.is_none(),
    )?;
    let mut stage = ans.next_stage;
    match text::get(&ans.pairs, "AuthMethod") {
        Some("CHAP") => {
            let chap = opts.chap.as_ref().ok_or_else(|| {
                IscsiError::Protocol("the target chose CHAP, which we did not offer".into())
            })?;
            stage = ex.chap(chap)?;
        }
        Some("None") | None => {}
        Some(other) => {
            return Err(IscsiError::Protocol(format!(
                "the target chose AuthMethod={other}; we offered {auth}"
            )))
        }
    }
    // A target may move straight on without the operational stage.
    let mut answers = Vec::new();
    if stage != Some(STAGE_FULL_FEATURE) {
        let mut send = if target.is_some() {
            opts.offer.pairs()
        } else {
            vec![
                ("HeaderDigest".into(), "None".into()),
                ("DataDigest".into(), "None".into()),
                (
                    "MaxRecvDataSegmentLength".into(),
                    LOGIN_MAX_DATA.to_string(),
                ),
            ]
        };
        let mut done = false;
        for _ in 0..MAX_LOGIN_ROUNDS {
            let a = ex.round(STAGE_OPERATIONAL, Some(STAGE_FULL_FEATURE), &send, true)?;
            answers.extend(a.pairs);
            if a.next_stage == Some(STAGE_FULL_FEATURE) {
                done = true;
                break;
            }
            send.clear();
        }
        if !done {
            return Err(IscsiError::Protocol(format!(
                "login to {addr} did not reach full feature phase in {MAX_LOGIN_ROUNDS} rounds"
            )));
        }
    }
    let offer = if target.is_some() {
        opts.offer.clone()
    } else {
        Offer {
            max_recv_data_segment_length: LOGIN_MAX_DATA,
            ..Offer::default()
        }
    };
    c.params = offer.resolve(&answers)?;
    c.digests = Digests {
        header: c.params.header_digest,
        data: c.params.data_digest,
    };
    Ok(c)
}

struct Answer {
    pairs: Vec<(String, String)>,
    next_stage: Option<u8>,
}

struct Exchange<'a> {
    c: &'a mut Connection,
    opts: &'a LoginOptions,
    itt: u32,
}

impl Exchange<'_> {
    /// Sends one Login Request (transit to `next` when `transit`) and reads
    /// the answer, gathering continued text.
    fn round(
        &mut self,
        stage: u8,
        next: Option<u8>,
        pairs: &[(String, String)],
        transit: bool,
    ) -> Result<Answer, IscsiError> {
        let mut req = Pdu::new(Opcode::LoginRequest);
        req.set_immediate(true);
        let mut flags = stage << 2;
        if transit {
            if let Some(n) = next {
                flags |= LOGIN_TRANSIT | n;
            }
        }
        req.set_flags(flags);
        req.bhs[pdu::OFF_ISID..pdu::OFF_ISID + 6].copy_from_slice(&self.opts.isid);
        req.bhs[pdu::OFF_TSIH..pdu::OFF_TSIH + 2].copy_from_slice(&self.c.tsih.to_be_bytes());
        req.set_itt(self.itt);
        req.set_u32(pdu::OFF_24, self.c.cmd_sn);
        req.set_u32(pdu::OFF_28, self.c.exp_stat_sn);
        req.data = text::encode(pairs);
        self.c.send(&req)?;
        let mut data = Vec::new();
        loop {
            let rsp = self.c.recv(LOGIN_MAX_DATA)?;
            if rsp.opcode() != Some(Opcode::LoginResponse) {
                return Err(IscsiError::Protocol(format!(
                    "expected a Login Response, got {rsp:?}"
                )));
            }
            let class = rsp.bhs[OFF_STATUS_CLASS];
            let detail = rsp.bhs[OFF_STATUS_CLASS + 1];
            if class != 0 {
                return Err(IscsiError::LoginRejected {
                    addr: self.c.addr,
                    class,
                    detail,
                });
            }
            self.c.exp_stat_sn = rsp.u32_at(pdu::OFF_24).wrapping_add(1);
            self.c.max_cmd_sn = rsp.u32_at(pdu::OFF_32);
            self.c.tsih = u16::from_be_bytes([rsp.bhs[pdu::OFF_TSIH], rsp.bhs[pdu::OFF_TSIH + 1]]);
            data.extend_from_slice(&rsp.data);
            if data.len() > MAX_SENDTARGETS_BYTES {
                return Err(IscsiError::Protocol("login text too long".into()));
            }
            if rsp.flags() & LOGIN_CONTINUE == 0 {
                let transit = rsp.flags() & LOGIN_TRANSIT != 0;
                return Ok(Answer {
                    pairs: text::parse(&data)?,
                    next_stage: transit.then_some(rsp.flags() & 0x03),
                });
            }
            // More text: ask for it with an empty request (§6.3).
            let mut more = Pdu::new(Opcode::LoginRequest);
            more.set_immediate(true);
            more.set_flags(stage << 2);
            more.bhs[pdu::OFF_ISID..pdu::OFF_ISID + 6].copy_from_slice(&self.opts.isid);
            more.set_itt(self.itt);
            more.set_u32(pdu::OFF_24, self.c.cmd_sn);
            more.set_u32(pdu::OFF_28, self.c.exp_stat_sn);
            self.c.send(&more)?;
        }
    }

    /// CHAP_A=5, then the response to the target's challenge (RFC 1994:
    /// MD5(identifier ‖ secret ‖ challenge)). Returns the next stage.
    fn chap(&mut self, chap: &Chap) -> Result<Option<u8>, IscsiError> {
        let a = self.round(
            STAGE_SECURITY,
            Some(STAGE_OPERATIONAL),
            &[("CHAP_A".into(), "5".into())],
            false,
        )?;
        if text::get(&a.pairs, "CHAP_A") != Some("5") {
            return Err(IscsiError::Protocol(
                "the target does not accept CHAP with MD5".into(),
            ));
        }
        let id = text::get(&a.pairs, "CHAP_I")
            .ok_or_else(|| IscsiError::Protocol("CHAP without CHAP_I".into()))
            .and_then(|v| Ok(text::parse_num("CHAP_I", v, 0, 255)?))?;
        let challenge = text::get(&a.pairs, "CHAP_C")
            .and_then(decode_hex)
            .ok_or_else(|| IscsiError::Protocol("CHAP without a valid CHAP_C".into()))?;
        let mut h = md5::Context::new();
        h.consume([id as u8]);
        h.consume(&chap.secret);
        h.consume(&challenge);
        let r = format!("0x{}", hex(&h.finalize().0));
        let b = self.round(
            STAGE_SECURITY,
            Some(STAGE_OPERATIONAL),
            &[("CHAP_N".into(), chap.user.clone()), ("CHAP_R".into(), r)],
            true,
        )?;
        Ok(b.next_stage)
    }
}

fn pdu_io(e: std::io::Error) -> IscsiError {
    IscsiError::Pdu(e.into())
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `0x`-prefixed hex (CHAP binary values); base64 (`0b`) is not used by
/// the targets we talk to and is refused.
fn decode_hex(v: &str) -> Option<Vec<u8>> {
    let h = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?;
    if h.is_empty() || h.len() % 2 != 0 || h.len() > 2048 {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One target as discovery lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    /// `addr:port,tpgt` entries, parsed; a target listing none is reachable
    /// at the portal that was asked.
    pub portals: Vec<(SocketAddr, u16)>,
}

/// SendTargets=All on the portal `addr` (tgtd lists only the portal asked,
/// so callers discover on every portal and group paths by LUN identity).
pub fn discover(
    addr: SocketAddr,
    opts: &LoginOptions,
) -> Result<Vec<DiscoveredTarget>, IscsiError> {
    let mut c = login(addr, None, opts)?;
    let mut data = Vec::new();
    let mut ttt = pdu::RESERVED_TAG;
    loop {
        let mut req = Pdu::new(Opcode::TextRequest);
        req.set_flags(pdu::FLAG_FINAL);
        req.set_itt(1);
        req.set_u32(pdu::OFF_20, ttt);
        req.set_u32(pdu::OFF_24, c.cmd_sn);
        req.set_u32(pdu::OFF_28, c.exp_stat_sn);
        if ttt == pdu::RESERVED_TAG {
            req.data = text::encode(&[("SendTargets", "All")]);
        }
        c.send(&req)?;
        c.cmd_sn = c.cmd_sn.wrapping_add(1);
        let rsp = loop {
            let p = c.recv(c.params.max_recv_data_segment_length)?;
            c.track(&p);
            match p.opcode() {
                Some(Opcode::TextResponse) => break p,
                Some(Opcode::NopIn) => continue,
                _ => {
                    return Err(IscsiError::Protocol(format!(
                        "expected a Text Response, got {p:?}"
                    )))
                }
            }
        };
        data.extend_from_slice(&rsp.data);
        if data.len() > MAX_SENDTARGETS_BYTES {
            return Err(IscsiError::Protocol("SendTargets answer over 1 MiB".into()));
        }
        if rsp.flags() & TEXT_CONTINUE == 0 {
            break;
        }
        ttt = rsp.u32_at(pdu::OFF_20);
    }
    logout(&mut c).ok();
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    for (k, v) in text::parse(&data)? {
        match k.as_str() {
            "TargetName" => out.push(DiscoveredTarget {
                name: v,
                portals: Vec::new(),
            }),
            "TargetAddress" => {
                let Some(t) = out.last_mut() else {
                    return Err(IscsiError::Protocol(
                        "TargetAddress before any TargetName".into(),
                    ));
                };
                t.portals.push(parse_target_address(&v)?);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `host:port,tpgt`, with `[v6]:port` for IPv6 (RFC 7143 §13.9).
pub fn parse_target_address(v: &str) -> Result<(SocketAddr, u16), IscsiError> {
    let bad = || IscsiError::Protocol(format!("bad TargetAddress {v:?}"));
    let (addr, tpgt) = v.rsplit_once(',').ok_or_else(bad)?;
    let tpgt = tpgt.parse::<u16>().map_err(|_| bad())?;
    // No port (IPv4 or a bracketed IPv6 address alone): the iSCSI default.
    let addr = if addr.contains(':') && !addr.ends_with(']') {
        addr.to_string()
    } else {
        format!("{addr}:3260")
    };
    let sa = addr.parse::<SocketAddr>().map_err(|_| bad())?;
    Ok((sa, tpgt))
}

/// Logout (close the session) and wait for the answer.
pub fn logout(c: &mut Connection) -> Result<(), IscsiError> {
    let mut req = Pdu::new(Opcode::LogoutRequest);
    req.set_immediate(true);
    req.set_flags(pdu::FLAG_FINAL);
    req.set_itt(0x7fff_fffe);
    req.set_u32(pdu::OFF_24, c.cmd_sn);
    req.set_u32(pdu::OFF_28, c.exp_stat_sn);
    c.send(&req)?;
    for _ in 0..64 {
        let p = c.recv(c.params.max_recv_data_segment_length)?;
        if p.opcode() == Some(Opcode::LogoutResponse) {
            return Ok(());
        }
    }
    Err(IscsiError::Protocol("no Logout Response".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_addresses() {
        let (a, t) = parse_target_address("127.0.0.2:3270,1").unwrap();
        assert_eq!((a.to_string().as_str(), t), ("127.0.0.2:3270", 1));
        let (a, _) = parse_target_address("10.0.0.1,7").unwrap();
        assert_eq!(a.port(), 3260);
        let (a, _) = parse_target_address("[::1]:3261,1").unwrap();
        assert_eq!(a.port(), 3261);
        assert!(parse_target_address("nonsense").is_err());
    }

    #[test]
    fn chap_hex() {
        assert_eq!(decode_hex("0x0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_hex("0x0"), None);
        assert_eq!(decode_hex("0b AAAA"), None);
        assert_eq!(isid(0x00abcdef, 2), [0x80, 0xab, 0xcd, 0xef, 0, 2]);
    }
}
