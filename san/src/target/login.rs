//! Login as the target (RFC 7143 §6.3, §11.12-13): the security stage
//! (AuthMethod None, or CHAP when the target has an account), operational
//! negotiation, then full feature phase with a TSIH. A normal session's
//! login reinstates an older session of the same I_T nexus.

use super::chap::{Challenge, ALGORITHM_MD5};
use super::negotiate::Negotiator;
use super::nexus::{InitiatorPort, Nexus};
use super::registry::ConnCtl;
use super::server::{Server, Target};
use super::wire::Wire;
use super::ConnError;
use crate::iscsi::pdu::{self, Opcode, Pdu};
use crate::iscsi::text::{self, Params};
use std::sync::Arc;
use std::time::Instant;

// Login Request/Response byte 1: transit, continue, current and next stage.
const TRANSIT: u8 = 0x80;
const CONTINUE: u8 = 0x40;
const CSG_SHIFT: u8 = 2;
const STAGE_MASK: u8 = 0x03;
const STAGE_SECURITY: u8 = 0;
const STAGE_OPERATIONAL: u8 = 1;
const STAGE_FULL_FEATURE: u8 = 3;
/// Request byte 3: Version-min; response bytes 2-3: Version-max, -active.
const OFF_VERSION_MIN: usize = 3;
const OFF_VERSION_MAX: usize = 2;
const OFF_VERSION_ACTIVE: usize = 3;
const OFF_STATUS_CLASS: usize = 36;
const OFF_STATUS_DETAIL: usize = 37;
/// The RFC default MaxRecvDataSegmentLength, which holds during login.
const LOGIN_MAX_DATA: u32 = 8192;
/// Continued login text (C bit) is gathered up to this much.
const MAX_LOGIN_TEXT: usize = 64 << 10;

/// Login status class and detail (RFC 7143 §11.13.5).
type LoginStatus = (u8, u8);
const INITIATOR_ERROR: LoginStatus = (2, 0x00);
const AUTH_FAILED: LoginStatus = (2, 0x01);
const NOT_FOUND: LoginStatus = (2, 0x03);
const UNSUPPORTED_VERSION: LoginStatus = (2, 0x05);
const TOO_MANY_CONNECTIONS: LoginStatus = (2, 0x06);
const MISSING_PARAMETER: LoginStatus = (2, 0x07);
const SESSION_TYPE_UNSUPPORTED: LoginStatus = (2, 0x09);
const NO_SUCH_SESSION: LoginStatus = (2, 0x0a);
const TARGET_ERROR: LoginStatus = (3, 0x00);

pub(crate) enum SessionKind {
    Discovery,
    /// A session with one target of the server.
    Normal(Nexus, Arc<Target>),
}

/// A session in full feature phase, as login left it.
pub(crate) struct Session {
    pub kind: SessionKind,
    pub params: Params,
    /// The next StatSN to send.
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub tsih: u16,
}

enum Auth {
    /// No AuthMethod chosen yet.
    Pending,
    /// AuthMethod=CHAP answered; CHAP_A expected.
    ChapChosen,
    /// Challenge sent; CHAP_N and CHAP_R expected.
    ChapChallenged(Challenge),
    Done,
}

struct Login<'a> {
    s: &'a Server,
    /// The target the login names (normal sessions), once declared.
    target: Option<Arc<Target>>,
    conn: &'a Arc<ConnCtl>,
    tpgt: u16,
    isid: [u8; 6],
    itt: u32,
    cmd_sn: u32,
    stat_sn: u32,
    stage: u8,
    discovery: bool,
    initiator: String,
    auth: Auth,
    neg: Negotiator<'a>,
    /// Whether we sent our MaxRecvDataSegmentLength, and any answer yet.
    declared: bool,
    answered: bool,
    text: Vec<u8>,
}

/// Runs the login on a new connection; `Err` after a refusal (already
/// answered) or a broken exchange.
pub(crate) fn login(
    wire: &mut Wire,
    s: &Server,
    conn: &Arc<ConnCtl>,
    tpgt: u16,
) -> Result<Session, ConnError> {
    let deadline = Instant::now() + s.params.login_timeout;
    let first = next(wire, deadline, s)?;
    let mut l = Login {
        s,
        target: None,
        conn,
        tpgt,
        isid: isid_of(&first),
        itt: first.itt(),
        cmd_sn: first.u32_at(pdu::OFF_24),
        stat_sn: first.u32_at(pdu::OFF_28),
        stage: (first.flags() >> CSG_SHIFT) & STAGE_MASK,
        discovery: false,
        initiator: String::new(),
        auth: Auth::Pending,
        neg: Negotiator::new(&s.params),
        declared: false,
        answered: false,
        text: Vec::new(),
    };
    l.declarations(wire, &first)?;
    let mut p = first;
    loop {
        if let Some(s) = l.step(wire, &p)? {
            return Ok(s);
        }
        p = next(wire, deadline, s)?;
    }
}

fn next(wire: &mut Wire, deadline: Instant, s: &Server) -> Result<Pdu, ConnError> {
    loop {
        if let Some(p) = wire.recv(LOGIN_MAX_DATA)? {
            if p.opcode() != Some(Opcode::LoginRequest) {
                return Err(ConnError::Protocol(format!(
                    "expected a Login Request, got {p:?}"
                )));
            }
            return Ok(p);
        }
        if Instant::now() > deadline {
            return Err(ConnError::LoginTimeout(s.params.login_timeout));
        }
    }
}

fn isid_of(p: &Pdu) -> [u8; 6] {
    let mut isid = [0u8; 6];
    isid.copy_from_slice(&p.bhs[pdu::OFF_ISID..pdu::OFF_ISID + 6]);
    isid
}

impl Login<'_> {
    fn response(&mut self, flags: u8, tsih: u16, status: LoginStatus, data: Vec<u8>) -> Pdu {
        let mut r = Pdu::new(Opcode::LoginResponse);
        r.set_flags(flags);
        r.bhs[OFF_VERSION_MAX] = 0;
        r.bhs[OFF_VERSION_ACTIVE] = 0;
        r.bhs[pdu::OFF_ISID..pdu::OFF_ISID + 6].copy_from_slice(&self.isid);
        r.bhs[pdu::OFF_TSIH..pdu::OFF_TSIH + 2].copy_from_slice(&tsih.to_be_bytes());
        r.set_itt(self.itt);
        r.set_u32(pdu::OFF_24, self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        r.set_u32(pdu::OFF_28, self.cmd_sn);
        r.set_u32(
            pdu::OFF_32,
            self.cmd_sn.wrapping_add(self.s.params.queue_depth - 1),
        );
        r.bhs[OFF_STATUS_CLASS] = status.0;
        r.bhs[OFF_STATUS_DETAIL] = status.1;
        r.data = data;
        r
    }

    /// Answers with a refusal and returns the error that ends the connection.
    fn refuse(&mut self, wire: &mut Wire, status: LoginStatus, why: String) -> ConnError {
        let r = self.response(self.stage << CSG_SHIFT, 0, status, Vec::new());
        if let Err(e) = wire.send(&r).and_then(|()| wire.flush()) {
            log::debug!("{}: could not send the login refusal: {e}", wire.peer);
        }
        ConnError::LoginRefused {
            class: status.0,
            detail: status.1,
            why,
        }
    }

    /// The first PDU's declarations: who logs in, to what, for what.
    fn declarations(&mut self, wire: &mut Wire, p: &Pdu) -> Result<(), ConnError> {
        let pairs = match text::parse(&p.data) {
            Ok(pairs) => pairs,
            // A continued first PDU is parsed whole by `step`; names are
            // checked here only when they are complete.
            Err(_) if p.flags() & CONTINUE != 0 => return Ok(()),
            Err(e) => return Err(self.refuse(wire, INITIATOR_ERROR, e.to_string())),
        };
        if p.flags() & CONTINUE != 0 {
            return Ok(());
        }
        self.declare(wire, p, &pairs)
    }

    fn declare(
        &mut self,
        wire: &mut Wire,
        p: &Pdu,
        pairs: &[(String, String)],
    ) -> Result<(), ConnError> {
        let Some(name) = text::get(pairs, "InitiatorName") else {
            return Err(self.refuse(wire, MISSING_PARAMETER, "no InitiatorName".into()));
        };
        self.initiator = name.to_string();
        match text::get(pairs, "SessionType").unwrap_or("Normal") {
            "Normal" => {}
            "Discovery" => self.discovery = true,
            other => {
                let why = format!("SessionType={other}");
                return Err(self.refuse(wire, SESSION_TYPE_UNSUPPORTED, why));
            }
        }
        if !self.discovery {
            match text::get(pairs, "TargetName") {
                None => return Err(self.refuse(wire, MISSING_PARAMETER, "no TargetName".into())),
                Some(n) => match self.s.target(n) {
                    Some(t) => self.target = Some(t),
                    None => {
                        let why = format!("unknown target {n:?}");
                        return Err(self.refuse(wire, NOT_FOUND, why));
                    }
                },
            }
        }
        let tsih = u16::from_be_bytes([p.bhs[pdu::OFF_TSIH], p.bhs[pdu::OFF_TSIH + 1]]);
        if tsih != 0 {
            // Adding a connection to a session (MC/S): MaxConnections is 1.
            let (status, why) = if self.s.registry.has_tsih(tsih) {
                (TOO_MANY_CONNECTIONS, "MaxConnections is 1")
            } else {
                (NO_SUCH_SESSION, "no session with that TSIH")
            };
            return Err(self.refuse(wire, status, why.into()));
        }
        Ok(())
    }

    fn authenticated(&self) -> bool {
        match self.auth {
            Auth::Done => true,
            Auth::Pending => self.s.chap.is_none(),
            Auth::ChapChosen | Auth::ChapChallenged(_) => false,
        }
    }

    /// One Login Request: its answer, and the session once it is complete.
    fn step(&mut self, wire: &mut Wire, p: &Pdu) -> Result<Option<Session>, ConnError> {
        let flags = p.flags();
        let transit = flags & TRANSIT != 0;
        let csg = (flags >> CSG_SHIFT) & STAGE_MASK;
        let nsg = flags & STAGE_MASK;
        if p.bhs[OFF_VERSION_MIN] != 0 {
            let why = format!("Version-min {}", p.bhs[OFF_VERSION_MIN]);
            return Err(self.refuse(wire, UNSUPPORTED_VERSION, why));
        }
        if isid_of(p) != self.isid || csg != self.stage || (transit && flags & CONTINUE != 0) {
            let why = format!("login PDU out of sequence (flags {flags:#04x}, stage {csg})");
            return Err(self.refuse(wire, INITIATOR_ERROR, why));
        }
        if self.text.len() + p.data.len() > MAX_LOGIN_TEXT {
            return Err(self.refuse(wire, INITIATOR_ERROR, "login text too long".into()));
        }
        self.text.extend_from_slice(&p.data);
        if flags & CONTINUE != 0 {
            // More text follows: acknowledge with an empty answer (§6.3).
            let r = self.response(csg << CSG_SHIFT, 0, (0, 0), Vec::new());
            wire.send(&r)?;
            wire.flush()?;
            return Ok(None);
        }
        let data = std::mem::take(&mut self.text);
        let pairs = match text::parse(&data) {
            Ok(pairs) => pairs,
            Err(e) => return Err(self.refuse(wire, INITIATOR_ERROR, e.to_string())),
        };
        if self.initiator.is_empty() {
            self.declare(wire, p, &pairs)?;
        }
        let mut replies: Vec<(String, String)> = Vec::new();
        // RFC 7143 §13.9: the first answer of a normal session carries the tag.
        if !self.discovery && !self.answered {
            replies.push(("TargetPortalGroupTag".into(), self.tpgt.to_string()));
        }
        match csg {
            STAGE_SECURITY => self.security(wire, &pairs, &mut replies)?,
            STAGE_OPERATIONAL => {
                if !self.authenticated() {
                    return Err(self.refuse(wire, AUTH_FAILED, "authentication skipped".into()));
                }
                for (k, v) in &pairs {
                    if k == "AuthMethod" || k.starts_with("CHAP_") {
                        let why = format!("{k} in the operational stage");
                        return Err(self.refuse(wire, INITIATOR_ERROR, why));
                    }
                    if let Some(a) = self.neg.answer(k, v) {
                        replies.push((k.clone(), a));
                    }
                }
            }
            _ => {
                let why = format!("login in stage {csg}");
                return Err(self.refuse(wire, INITIATOR_ERROR, why));
            }
        }
        let mut go = transit;
        if transit {
            let valid = matches!(
                (csg, nsg),
                (STAGE_SECURITY, STAGE_OPERATIONAL | STAGE_FULL_FEATURE)
                    | (STAGE_OPERATIONAL, STAGE_FULL_FEATURE)
            );
            if !valid {
                let why = format!("transit from stage {csg} to {nsg}");
                return Err(self.refuse(wire, INITIATOR_ERROR, why));
            }
            if !self.authenticated() {
                if matches!(self.auth, Auth::Pending) {
                    let why = "CHAP is required and was not offered".into();
                    return Err(self.refuse(wire, AUTH_FAILED, why));
                }
                // Still inside CHAP: stay in the security stage (T=0).
                go = false;
            }
        }
        let to_ffp = go && nsg == STAGE_FULL_FEATURE;
        if (csg == STAGE_OPERATIONAL || to_ffp) && !self.declared {
            replies.push((
                "MaxRecvDataSegmentLength".into(),
                self.s.params.max_recv_data_segment_length.to_string(),
            ));
            self.declared = true;
        }
        self.answered = true;
        let reply = text::encode(&replies);
        if !to_ffp {
            let f = (csg << CSG_SHIFT) | if go { TRANSIT | nsg } else { 0 };
            let r = self.response(f, 0, (0, 0), reply);
            wire.send(&r)?;
            wire.flush()?;
            if go {
                self.stage = nsg;
            }
            return Ok(None);
        }
        let kind = match (self.discovery, &self.target) {
            (true, _) => SessionKind::Discovery,
            (false, Some(t)) => SessionKind::Normal(
                Nexus {
                    port: InitiatorPort {
                        name: self.initiator.clone(),
                        isid: self.isid,
                    },
                    tpgt: self.tpgt,
                },
                t.clone(),
            ),
            // `declare` refuses a normal login without a known target.
            (false, None) => {
                return Err(self.refuse(wire, MISSING_PARAMETER, "no TargetName".into()))
            }
        };
        let tsih = match &kind {
            SessionKind::Discovery => self.s.registry.open_discovery(self.conn),
            SessionKind::Normal(n, t) => {
                let tsih = self.s.registry.open_session(&t.iqn, n, self.conn);
                // Removed while this login ran: its sessions were closed
                // before this one was registered (see `remove_target`).
                if t.removed() {
                    let why = format!("target {:?} was removed", t.iqn);
                    return Err(self.refuse(wire, NOT_FOUND, why));
                }
                for lu in t.lus.values() {
                    lu.state().nexus_login(n);
                }
                tsih
            }
        };
        let r = self.response(
            (csg << CSG_SHIFT) | TRANSIT | STAGE_FULL_FEATURE,
            tsih,
            (0, 0),
            reply,
        );
        wire.send(&r)?;
        wire.flush()?;
        let neg = std::mem::replace(&mut self.neg, Negotiator::new(&self.s.params));
        Ok(Some(Session {
            kind,
            params: neg.finish(),
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.cmd_sn,
            tsih,
        }))
    }

    /// AuthMethod and the CHAP exchange.
    fn security(
        &mut self,
        wire: &mut Wire,
        pairs: &[(String, String)],
        replies: &mut Vec<(String, String)>,
    ) -> Result<(), ConnError> {
        for (k, v) in pairs {
            match k.as_str() {
                "AuthMethod" => {
                    let offered: Vec<&str> = v.split(',').collect();
                    let pick = if self.s.chap.is_some() {
                        "CHAP"
                    } else {
                        "None"
                    };
                    if !offered.contains(&pick) || !matches!(self.auth, Auth::Pending) {
                        let why = format!("AuthMethod={v}; this target needs {pick}");
                        return Err(self.refuse(wire, AUTH_FAILED, why));
                    }
                    self.auth = if pick == "CHAP" {
                        Auth::ChapChosen
                    } else {
                        Auth::Done
                    };
                    replies.push((k.clone(), pick.into()));
                }
                "CHAP_A" => {
                    if !matches!(self.auth, Auth::ChapChosen)
                        || !v.split(',').any(|a| a == ALGORITHM_MD5)
                    {
                        let why = format!("CHAP_A={v} (MD5 only, after AuthMethod=CHAP)");
                        return Err(self.refuse(wire, AUTH_FAILED, why));
                    }
                    let c = match Challenge::new() {
                        Ok(c) => c,
                        Err(e) => {
                            let why = format!("no random challenge: {e}");
                            return Err(self.refuse(wire, TARGET_ERROR, why));
                        }
                    };
                    replies.push((k.clone(), ALGORITHM_MD5.into()));
                    replies.extend(c.pairs());
                    self.auth = Auth::ChapChallenged(c);
                }
                "CHAP_N" | "CHAP_R" => {}
                "CHAP_I" | "CHAP_C" => {
                    let why = "mutual CHAP is not supported".into();
                    return Err(self.refuse(wire, AUTH_FAILED, why));
                }
                _ => {
                    if let Some(a) = self.neg.answer(k, v) {
                        replies.push((k.clone(), a));
                    }
                }
            }
        }
        let (n, r) = (text::get(pairs, "CHAP_N"), text::get(pairs, "CHAP_R"));
        if n.is_none() && r.is_none() {
            return Ok(());
        }
        let ok = match (&self.auth, &self.s.chap, n, r) {
            (Auth::ChapChallenged(c), Some(acct), Some(n), Some(r)) => c.verify(acct, n, r),
            _ => false,
        };
        if !ok {
            let why = format!("CHAP failed for user {:?}", n.unwrap_or(""));
            return Err(self.refuse(wire, AUTH_FAILED, why));
        }
        self.auth = Auth::Done;
        Ok(())
    }
}
