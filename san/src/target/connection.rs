//! One connection in full feature phase (RFC 7143 §11): SCSI commands with
//! immediate, unsolicited and R2T-solicited data, Data-In split by the
//! initiator's MaxRecvDataSegmentLength with phase-collapsed status, the
//! CmdSN window, NOP-Out/NOP-In, task management, Text (SendTargets) and
//! Logout. Commands run one at a time, as soon as their data is complete;
//! the R2T for the next write goes out when the previous burst is done.

use super::login::{self, Session, SessionKind};
use super::lu::Epoch;
use super::nexus::Nexus;
use super::registry::ConnCtl;
use super::scsi::{self, Command, Outcome, MAX_TRANSFER_BYTES};
use super::server::Target;
use super::wire::Wire;
use super::ConnError;
use crate::iscsi::pdu::{self, sn_le, sn_lt, Digests, Opcode, Pdu, PduError, RESERVED_TAG};
use crate::iscsi::text::{self, Params};
use crate::scsi::{Sense, Status};
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

// SCSI Command byte 1.
const CMD_READ: u8 = 0x40;
const CMD_WRITE: u8 = 0x20;
// Data-In and SCSI Response byte 1.
const DATA_IN_STATUS: u8 = 0x01;
const RESIDUAL_UNDERFLOW: u8 = 0x02;
const RESIDUAL_OVERFLOW: u8 = 0x04;
// Text Request/Response byte 1: continue.
const TEXT_CONTINUE: u8 = 0x40;
/// Task management function (byte 1, low 7 bits) and response codes.
const FUNCTION_MASK: u8 = 0x7f;
const TMF_ABORT_TASK: u8 = 1;
const TMF_LUN_RESET: u8 = 5;
const TMF_COMPLETE: u8 = 0;
const TMF_NO_TASK: u8 = 1;
const TMF_NO_LUN: u8 = 2;
const TMF_NOT_SUPPORTED: u8 = 5;
/// Logout reasons and responses; Time2Wait and Time2Retain offsets.
const LOGOUT_CLOSE_SESSION: u8 = 0;
const LOGOUT_CLOSE_CONNECTION: u8 = 1;
const LOGOUT_RECOVERY: u8 = 2;
const LOGOUT_OK: u8 = 0;
const LOGOUT_NO_RECOVERY: u8 = 2;
const OFF_TIME2WAIT: usize = 40;
const OFF_TIME2RETAIN: usize = 42;
/// Immediate commands do not count against the CmdSN window; this many
/// more tasks than the queue depth may wait for data before we give up.
const IMMEDIATE_SLACK: usize = 8;
/// Tags of tasks aborted by ABORT TASK whose late Data-Out is discarded.
const ABORTED_MEMORY: usize = 16;
/// A Text answer gathered for continuation is bounded (SendTargets of one target).
const MAX_TEXT_ANSWER: usize = 64 << 10;

/// Serves one accepted connection until it ends, logging why.
pub(crate) fn serve(t: &Target, stream: TcpStream, ctl: &Arc<ConnCtl>) {
    let portal = ctl.portal;
    let tpgt = t.portals.get(portal).map_or(0, |p| p.tpgt);
    let mut wire = match Wire::new(stream, ctl.clone(), t.faults.clone()) {
        Ok(w) => w,
        Err(e) => {
            log::warn!("portal {portal}: cannot set up a connection: {e}");
            return;
        }
    };
    let peer = wire.peer;
    let session = match login::login(&mut wire, t, ctl, tpgt) {
        Ok(s) => s,
        Err(e) => return log_end(peer, "login", &e),
    };
    wire.digests = Digests {
        header: session.params.header_digest,
        data: session.params.data_digest,
    };
    let what = match &session.kind {
        SessionKind::Discovery => "discovery session".to_string(),
        SessionKind::Normal(n) => format!("session {n}"),
    };
    log::info!("{peer}: {what} logged in (TSIH {})", session.tsih);
    let mut c = Conn::new(t, wire, session, tpgt);
    match c.run() {
        Ok(()) => log::info!("{peer}: {what} logged out"),
        Err(e) => log_end(peer, &what, &e),
    }
}

fn log_end(peer: SocketAddr, what: &str, e: &ConnError) {
    match e {
        ConnError::Pdu(PduError::Closed) | ConnError::Closed(_) => {
            log::info!("{peer}: {what} ended: {e}")
        }
        _ => log::warn!("{peer}: {what} ended: {e}"),
    }
}

struct Burst {
    ttt: u32,
    /// Buffer offset where the burst ends.
    end: u32,
    data_sn: u32,
}

struct Task {
    itt: u32,
    lun: u16,
    cdb: [u8; 16],
    read: bool,
    write: bool,
    edtl: u32,
    /// Counts against the CmdSN window (not an immediate command).
    windowed: bool,
    data: Vec<u8>,
    received: u32,
    /// More than we buffer: its data is counted, not kept, and it fails.
    oversize: bool,
    /// Unsolicited Data-Out may still come (the command's F bit was 0).
    unsolicited_open: bool,
    unsolicited_sn: u32,
    burst: Option<Burst>,
    r2t_sn: u32,
    epoch: Epoch,
}

impl Task {
    fn take(&mut self, data: &[u8]) {
        if !self.oversize {
            self.data.extend_from_slice(data);
        }
        self.received += data.len() as u32;
    }

    fn needs_r2t(&self) -> bool {
        self.write
            && !self.oversize
            && !self.unsolicited_open
            && self.burst.is_none()
            && self.received < self.edtl
    }

    fn ready(&self) -> bool {
        !self.write
            || (!self.unsolicited_open
                && self.burst.is_none()
                && (self.oversize || self.received == self.edtl))
    }
}

enum Flow {
    Continue,
    Close,
}

struct Conn<'a> {
    t: &'a Target,
    wire: Wire,
    tpgt: u16,
    nexus: Option<Nexus>,
    params: Params,
    stat_sn: u32,
    exp_cmd_sn: u32,
    tasks: Vec<Task>,
    aborted: VecDeque<u32>,
    last_ttt: u32,
    /// The rest of a Text answer, its TTT and ITT.
    text_rest: Option<(u32, u32, Vec<u8>)>,
    /// Our outstanding NOP-In ping: its TTT and when it went out.
    ping: Option<(u32, Instant)>,
    last_rx: Instant,
}

impl<'a> Conn<'a> {
    fn new(t: &'a Target, wire: Wire, s: Session, tpgt: u16) -> Conn<'a> {
        Conn {
            t,
            wire,
            tpgt,
            nexus: match s.kind {
                SessionKind::Normal(n) => Some(n),
                SessionKind::Discovery => None,
            },
            params: s.params,
            stat_sn: s.stat_sn,
            exp_cmd_sn: s.exp_cmd_sn,
            tasks: Vec::new(),
            aborted: VecDeque::new(),
            last_ttt: 0,
            text_rest: None,
            ping: None,
            last_rx: Instant::now(),
        }
    }

    fn run(&mut self) -> Result<(), ConnError> {
        loop {
            let Some(p) = self.wire.recv(self.params.max_recv_data_segment_length)? else {
                self.idle()?;
                continue;
            };
            self.last_rx = Instant::now();
            let flow = self.handle(p)?;
            self.wire.flush()?;
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    fn handle(&mut self, p: Pdu) -> Result<Flow, ConnError> {
        match p.opcode() {
            Some(Opcode::NopOut) => self.nop_out(&p)?,
            Some(Opcode::ScsiCommand) => self.command(p)?,
            Some(Opcode::DataOut) => self.data_out(&p)?,
            Some(Opcode::TaskMgmtRequest) => self.task_management(&p)?,
            Some(Opcode::TextRequest) => self.text(&p)?,
            Some(Opcode::LogoutRequest) => return self.logout(&p),
            other => {
                return Err(ConnError::Protocol(format!(
                    "{other:?} is not accepted in full feature phase"
                )))
            }
        }
        Ok(Flow::Continue)
    }

    // ---- sequence numbers ----

    fn pending(&self) -> u32 {
        self.tasks.iter().filter(|t| t.windowed).count() as u32
    }

    /// MaxCmdSN: the window shrinks by the commands still waiting for data.
    fn max_cmd_sn(&self) -> u32 {
        let depth = self.t.params.queue_depth;
        self.exp_cmd_sn
            .wrapping_add(depth.saturating_sub(self.pending()))
            .wrapping_sub(1)
    }

    /// Whether to process a request: commands outside the CmdSN window are
    /// silently ignored (RFC 7143 §3.2.2.1); a gap inside it cannot be filled
    /// on one connection at ERL 0, so it ends the connection.
    fn accept_sn(&mut self, p: &Pdu) -> Result<bool, ConnError> {
        if p.immediate() {
            return Ok(true);
        }
        let sn = p.u32_at(pdu::OFF_24);
        if sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            return Ok(true);
        }
        if sn_lt(self.exp_cmd_sn, sn) && sn_le(sn, self.max_cmd_sn()) {
            return Err(ConnError::Protocol(format!(
                "CmdSN {sn} skips ahead of ExpCmdSN {}",
                self.exp_cmd_sn
            )));
        }
        log::debug!(
            "{}: CmdSN {sn} outside the window {}..={}: ignored",
            self.wire.peer,
            self.exp_cmd_sn,
            self.max_cmd_sn()
        );
        Ok(false)
    }

    /// StatSN (taken when `advance`), ExpCmdSN and MaxCmdSN of a response.
    fn sequence(&mut self, p: &mut Pdu, advance: bool) {
        if advance {
            p.set_u32(pdu::OFF_24, self.stat_sn);
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        p.set_u32(pdu::OFF_28, self.exp_cmd_sn);
        p.set_u32(pdu::OFF_32, self.max_cmd_sn());
    }

    fn new_ttt(&mut self) -> u32 {
        self.last_ttt = self.last_ttt.wrapping_add(1);
        if self.last_ttt == RESERVED_TAG {
            self.last_ttt = 1;
        }
        self.last_ttt
    }

    // ---- NOP ----

    fn idle(&mut self) -> Result<(), ConnError> {
        if let Some((_, sent)) = self.ping {
            if sent.elapsed() > self.t.params.nop_timeout {
                return Err(ConnError::NopTimeout(self.t.params.nop_timeout));
            }
            return Ok(());
        }
        let Some(interval) = self.t.params.nop_interval else {
            return Ok(());
        };
        if self.last_rx.elapsed() < interval {
            return Ok(());
        }
        let ttt = self.new_ttt();
        let mut p = Pdu::new(Opcode::NopIn);
        p.set_flags(pdu::FLAG_FINAL);
        p.set_itt(RESERVED_TAG);
        p.set_u32(pdu::OFF_20, ttt);
        // A ping does not advance StatSN but carries the next one.
        p.set_u32(pdu::OFF_24, self.stat_sn);
        self.sequence(&mut p, false);
        self.wire.send(&p)?;
        self.wire.flush()?;
        self.ping = Some((ttt, Instant::now()));
        Ok(())
    }

    fn nop_out(&mut self, p: &Pdu) -> Result<(), ConnError> {
        if !self.accept_sn(p)? {
            return Ok(());
        }
        if p.itt() == RESERVED_TAG {
            // The answer to our ping (anything else with this tag is ignored).
            let ttt = p.u32_at(pdu::OFF_20);
            if self.ping.is_some_and(|(t, _)| t == ttt) {
                self.ping = None;
            }
            return Ok(());
        }
        self.wire.fault_delay()?;
        let mut r = Pdu::new(Opcode::NopIn);
        r.set_flags(pdu::FLAG_FINAL);
        r.set_lun(p.lun());
        r.set_itt(p.itt());
        r.set_u32(pdu::OFF_20, RESERVED_TAG);
        self.sequence(&mut r, true);
        let n = p
            .data
            .len()
            .min(self.params.max_send_data_segment_length as usize);
        r.data = p.data[..n].to_vec();
        self.wire.send(&r)
    }

    // ---- SCSI commands and their data ----

    fn command(&mut self, p: Pdu) -> Result<(), ConnError> {
        if self.nexus.is_none() {
            return Err(ConnError::Protocol(
                "SCSI command in a discovery session".into(),
            ));
        }
        if !self.accept_sn(&p)? {
            return Ok(());
        }
        let itt = p.itt();
        let flags = p.flags();
        let (read, write) = (flags & CMD_READ != 0, flags & CMD_WRITE != 0);
        let edtl = p.u32_at(pdu::OFF_20);
        let protocol = |m: String| Err(ConnError::Protocol(m));
        if itt == RESERVED_TAG || self.tasks.iter().any(|t| t.itt == itt) {
            return protocol(format!("task tag {itt:#x} is reserved or in use"));
        }
        if self.tasks.len() >= self.t.params.queue_depth as usize + IMMEDIATE_SLACK {
            return protocol("too many tasks waiting for data".into());
        }
        let first_burst = self.params.first_burst_length.min(edtl) as usize;
        if !p.data.is_empty()
            && (!write || !self.params.immediate_data || p.data.len() > first_burst)
        {
            return protocol(format!(
                "{} bytes of immediate data (W={write}, EDTL {edtl}, FirstBurstLength {})",
                p.data.len(),
                self.params.first_burst_length
            ));
        }
        let unsolicited_open = write && !p.is_final();
        if !p.is_final() && (!write || self.params.initial_r2t) {
            return protocol("unsolicited Data-Out announced where none may follow".into());
        }
        let lun = pdu::decode_lun(p.lun());
        let epoch = match (self.t.lus.get(&lun), &self.nexus) {
            (Some(lu), Some(n)) => lu.state().epoch(n),
            _ => Epoch::default(),
        };
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&p.bhs[pdu::OFF_32..pdu::OFF_32 + pdu::CDB_LEN]);
        let oversize = write && u64::from(edtl) > MAX_TRANSFER_BYTES;
        let received = p.data.len() as u32;
        let task = Task {
            itt,
            lun,
            cdb,
            read,
            write,
            edtl,
            windowed: !p.immediate(),
            data: if oversize { Vec::new() } else { p.data },
            received,
            oversize,
            unsolicited_open: unsolicited_open && received < first_burst as u32,
            unsolicited_sn: 0,
            burst: None,
            r2t_sn: 0,
            epoch,
        };
        if task.ready() {
            return self.execute(task);
        }
        self.tasks.push(task);
        self.pump_r2t()
    }

    fn data_out(&mut self, p: &Pdu) -> Result<(), ConnError> {
        let itt = p.itt();
        let Some(i) = self.tasks.iter().position(|t| t.itt == itt) else {
            if self.aborted.contains(&itt) {
                return Ok(());
            }
            return Err(ConnError::Protocol(format!(
                "Data-Out for unknown task {itt:#x}"
            )));
        };
        let ttt = p.u32_at(pdu::OFF_20);
        let sn = p.u32_at(pdu::OFF_36);
        let offset = p.u32_at(pdu::OFF_40);
        let len = p.data.len() as u32;
        let first_burst = self.params.first_burst_length;
        let t = &mut self.tasks[i];
        let end = offset.checked_add(len);
        let bad = |why: &str| {
            Err(ConnError::Protocol(format!(
                "Data-Out for task {itt:#x} (TTT {ttt:#x}, DataSN {sn}, offset {offset}, {len} bytes): {why}"
            )))
        };
        if ttt == RESERVED_TAG {
            let limit = first_burst.min(t.edtl);
            if !t.unsolicited_open {
                return bad("no unsolicited data expected");
            }
            if sn != t.unsolicited_sn {
                return bad(&format!("expected DataSN {}", t.unsolicited_sn));
            }
            if offset != t.received || end.is_none_or(|e| e > limit) {
                return bad("out of order or beyond FirstBurstLength");
            }
            t.unsolicited_sn += 1;
            t.take(&p.data);
            if p.is_final() || t.received == limit {
                t.unsolicited_open = false;
            }
        } else {
            let Some(b) = &mut t.burst else {
                return bad("no R2T outstanding");
            };
            if ttt != b.ttt {
                return bad("unknown target transfer tag");
            }
            if sn != b.data_sn {
                return bad(&format!("expected DataSN {}", b.data_sn));
            }
            if offset != t.received || end.is_none_or(|e| e > b.end) {
                return bad("out of order or beyond the R2T");
            }
            b.data_sn += 1;
            let burst_end = b.end;
            t.take(&p.data);
            if t.received == burst_end {
                t.burst = None;
            } else if p.is_final() {
                return bad("burst ended before the R2T's length");
            }
        }
        if self.tasks[i].ready() {
            let task = self.tasks.remove(i);
            self.execute(task)?;
        }
        self.pump_r2t()
    }

    /// Sends the next R2T when no burst is outstanding (one per connection).
    fn pump_r2t(&mut self) -> Result<(), ConnError> {
        if self.tasks.iter().any(|t| t.burst.is_some()) {
            return Ok(());
        }
        let Some(i) = self.tasks.iter().position(Task::needs_r2t) else {
            return Ok(());
        };
        let ttt = self.new_ttt();
        let max_burst = self.params.max_burst_length;
        let t = &mut self.tasks[i];
        let offset = t.received;
        let len = max_burst.min(t.edtl - offset);
        let mut r = Pdu::new(Opcode::R2t);
        r.set_flags(pdu::FLAG_FINAL);
        r.set_lun(pdu::encode_lun(t.lun));
        r.set_itt(t.itt);
        r.set_u32(pdu::OFF_20, ttt);
        r.set_u32(pdu::OFF_36, t.r2t_sn);
        r.set_u32(pdu::OFF_40, offset);
        r.set_u32(pdu::OFF_44, len);
        t.r2t_sn += 1;
        t.burst = Some(Burst {
            ttt,
            end: offset + len,
            data_sn: 0,
        });
        // R2T carries the next StatSN without taking it.
        r.set_u32(pdu::OFF_24, self.stat_sn);
        self.sequence(&mut r, false);
        self.wire.send(&r)
    }

    fn execute(&mut self, task: Task) -> Result<(), ConnError> {
        let Some(nexus) = &self.nexus else {
            return Err(ConnError::Protocol("SCSI task without a nexus".into()));
        };
        let out = if task.oversize {
            Outcome::check(Sense::INVALID_FIELD_IN_CDB)
        } else if let Some((status, sense)) = self.t.faults.take(task.cdb[0]) {
            Outcome {
                status,
                sense,
                data: Vec::new(),
                wanted_out: 0,
            }
        } else {
            let cmd = Command {
                lun: task.lun,
                cdb: &task.cdb,
                data_out: &task.data,
                nexus,
                epoch: task.epoch,
            };
            scsi::execute(self.t, self.tpgt, &cmd)
        };
        self.respond(&task, out)
    }

    /// Data-In (status in the last one when GOOD) or a SCSI Response, with
    /// the residual against the expected data transfer length.
    fn respond(&mut self, task: &Task, out: Outcome) -> Result<(), ConnError> {
        self.wire.fault_delay()?;
        let need = out.data.len() as u64 + out.wanted_out as u64;
        let edtl = u64::from(task.edtl);
        let (residual_flag, residual) = if need > edtl {
            (RESIDUAL_OVERFLOW, need - edtl)
        } else if need < edtl {
            (RESIDUAL_UNDERFLOW, edtl - need)
        } else {
            (0, 0)
        };
        let residual = u32::try_from(residual).unwrap_or(u32::MAX);
        let send: &[u8] = if task.read {
            &out.data[..out.data.len().min(task.edtl as usize)]
        } else {
            &[]
        };
        let collapse = !send.is_empty() && out.status == Status::GOOD && out.sense.is_none();
        let max_seg = self.params.max_send_data_segment_length as usize;
        let max_burst = self.params.max_burst_length as usize;
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
            d.set_lun(pdu::encode_lun(task.lun));
            d.set_itt(task.itt);
            d.set_u32(pdu::OFF_20, RESERVED_TAG);
            self.sequence(&mut d, status_here);
            d.set_u32(pdu::OFF_36, data_sn);
            d.set_u32(pdu::OFF_40, offset as u32);
            d.data = send[offset..offset + n].to_vec();
            self.wire.send(&d)?;
            offset += n;
            data_sn += 1;
        }
        if collapse {
            return Ok(());
        }
        let mut r = Pdu::new(Opcode::ScsiResponse);
        r.set_flags(pdu::FLAG_FINAL | residual_flag);
        r.bhs[pdu::OFF_B3] = out.status;
        r.set_itt(task.itt);
        self.sequence(&mut r, true);
        r.set_u32(pdu::OFF_36, data_sn);
        r.set_u32(pdu::OFF_44, residual);
        if let Some(s) = out.sense {
            let sense = s.encode();
            r.data = (sense.len() as u16).to_be_bytes().to_vec();
            r.data.extend_from_slice(&sense);
        }
        self.wire.send(&r)
    }

    // ---- task management ----

    fn forget(&mut self, itt: u32) {
        if self.aborted.len() == ABORTED_MEMORY {
            self.aborted.pop_front();
        }
        self.aborted.push_back(itt);
    }

    fn task_management(&mut self, p: &Pdu) -> Result<(), ConnError> {
        if self.nexus.is_none() {
            return Err(ConnError::Protocol(
                "task management in a discovery session".into(),
            ));
        }
        if !self.accept_sn(p)? {
            return Ok(());
        }
        let lun = pdu::decode_lun(p.lun());
        let response = match p.flags() & FUNCTION_MASK {
            TMF_ABORT_TASK => {
                let referenced = p.u32_at(pdu::OFF_20);
                let ref_sn = p.u32_at(pdu::OFF_32);
                if let Some(i) = self.tasks.iter().position(|t| t.itt == referenced) {
                    self.tasks.remove(i);
                    self.forget(referenced);
                    TMF_COMPLETE
                } else if sn_le(self.exp_cmd_sn, ref_sn) && sn_le(ref_sn, self.max_cmd_sn()) {
                    // Never received (RFC 7143 §11.5.1 b): nothing to abort.
                    TMF_COMPLETE
                } else {
                    TMF_NO_TASK
                }
            }
            TMF_LUN_RESET => match self.t.lus.get(&lun) {
                None => TMF_NO_LUN,
                Some(lu) => {
                    // Waits for commands running on other connections.
                    let _all = lu.exclusive();
                    let mine: Vec<u32> = self
                        .tasks
                        .iter()
                        .filter(|t| t.lun == lun)
                        .map(|t| t.itt)
                        .collect();
                    self.tasks.retain(|t| t.lun != lun);
                    for itt in mine {
                        self.forget(itt);
                    }
                    lu.state().reset();
                    log::info!("{}: LUN RESET of LUN {lun}", self.wire.peer);
                    TMF_COMPLETE
                }
            },
            _ => TMF_NOT_SUPPORTED,
        };
        self.wire.fault_delay()?;
        let mut r = Pdu::new(Opcode::TaskMgmtResponse);
        r.set_flags(pdu::FLAG_FINAL);
        r.bhs[pdu::OFF_B2] = response;
        r.set_itt(p.itt());
        self.sequence(&mut r, true);
        self.wire.send(&r)?;
        self.pump_r2t()
    }

    // ---- Text ----

    fn text(&mut self, p: &Pdu) -> Result<(), ConnError> {
        if !self.accept_sn(p)? {
            return Ok(());
        }
        if p.flags() & TEXT_CONTINUE != 0 {
            return Err(ConnError::Protocol(
                "continued Text Requests are not supported".into(),
            ));
        }
        let ttt = p.u32_at(pdu::OFF_20);
        let answer = if ttt == RESERVED_TAG {
            let mut reply: Vec<(String, String)> = Vec::new();
            for (k, v) in text::parse(&p.data)? {
                if k == "SendTargets" {
                    reply.extend(self.send_targets(&v));
                } else {
                    reply.push((k, "NotUnderstood".into()));
                }
            }
            text::encode(&reply)
        } else {
            match self.text_rest.take() {
                Some((t, itt, rest)) if t == ttt && itt == p.itt() => rest,
                _ => {
                    return Err(ConnError::Protocol(format!(
                        "Text Request continues unknown TTT {ttt:#x}"
                    )))
                }
            }
        };
        if answer.len() > MAX_TEXT_ANSWER {
            return Err(ConnError::Protocol("Text answer too long".into()));
        }
        self.wire.fault_delay()?;
        let max = self.params.max_send_data_segment_length as usize;
        let mut r = Pdu::new(Opcode::TextResponse);
        r.set_itt(p.itt());
        if answer.len() > max {
            let ttt = self.new_ttt();
            r.set_flags(TEXT_CONTINUE);
            r.set_u32(pdu::OFF_20, ttt);
            r.data = answer[..max].to_vec();
            self.text_rest = Some((ttt, p.itt(), answer[max..].to_vec()));
        } else {
            r.set_flags(pdu::FLAG_FINAL);
            r.set_u32(pdu::OFF_20, RESERVED_TAG);
            r.data = answer;
        }
        self.sequence(&mut r, true);
        self.wire.send(&r)
    }

    /// SendTargets (RFC 7143 §12.3): every portal of the target, each with
    /// its group tag; a portal bound to a wildcard address is reported at
    /// the address this connection reached.
    fn send_targets(&self, which: &str) -> Vec<(String, String)> {
        let ours = match which {
            "All" => true,
            "" => self.nexus.is_some(),
            name => name == self.t.iqn,
        };
        if !ours {
            return Vec::new();
        }
        let mut out = vec![("TargetName".to_string(), self.t.iqn.clone())];
        for portal in &self.t.portals {
            let mut addr = portal.addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(self.wire.local.ip());
            }
            out.push((
                "TargetAddress".to_string(),
                format!("{addr},{}", portal.tpgt),
            ));
        }
        out
    }

    // ---- Logout ----

    fn logout(&mut self, p: &Pdu) -> Result<Flow, ConnError> {
        if !self.accept_sn(p)? {
            return Ok(Flow::Continue);
        }
        let response = match p.flags() & FUNCTION_MASK {
            LOGOUT_CLOSE_SESSION | LOGOUT_CLOSE_CONNECTION => LOGOUT_OK,
            LOGOUT_RECOVERY => LOGOUT_NO_RECOVERY,
            reason => {
                return Err(ConnError::Protocol(format!("logout reason {reason}")));
            }
        };
        self.wire.fault_delay()?;
        let mut r = Pdu::new(Opcode::LogoutResponse);
        r.set_flags(pdu::FLAG_FINAL);
        r.bhs[pdu::OFF_B2] = response;
        r.set_itt(p.itt());
        self.sequence(&mut r, true);
        r.bhs[OFF_TIME2WAIT..OFF_TIME2WAIT + 2].copy_from_slice(&0u16.to_be_bytes());
        r.bhs[OFF_TIME2RETAIN..OFF_TIME2RETAIN + 2].copy_from_slice(&0u16.to_be_bytes());
        self.wire.send(&r)?;
        Ok(if response == LOGOUT_OK {
            Flow::Close
        } else {
            Flow::Continue
        })
    }
}
