//! One connection in full feature phase (RFC 7143 §11), as its connection
//! thread sees it: PDUs in, SCSI commands with immediate, unsolicited and
//! R2T-solicited data gathered until complete, then queued for the
//! connection's workers ([`pool`](super::pool)), which run them
//! concurrently and answer; the CmdSN window; NOP-Out/NOP-In; task
//! management; Text (SendTargets) and Logout. One R2T is outstanding per
//! connection: the next write's goes out when the previous burst is done.

use super::book::{Abort, Attr, Book, Job};
use super::buf::IoBuf;
use super::login::{self, Session, SessionKind};
use super::lu::Epoch;
use super::pool::{self, Closer, Pool};
use super::registry::ConnCtl;
use super::response::Limits;
use super::scsi::MAX_TRANSFER_BYTES;
use super::sender::{Sender, Stat};
use super::server::Server;
use super::wire::{Wire, WireRx, WireTx};
use super::ConnError;
use crate::iscsi::pdu::{self, sn_le, Digests, Opcode, Pdu, PduError, RESERVED_TAG};
use crate::iscsi::text::{self, Params};
use crate::scsi::sense::ABORTED_COMMAND;
use crate::scsi::Sense;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

// SCSI Command byte 1.
const CMD_READ: u8 = 0x40;
const CMD_WRITE: u8 = 0x20;
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
/// Tags of tasks aborted by ABORT TASK whose late Data-Out is discarded.
const ABORTED_MEMORY: usize = 16;
/// A Text answer gathered for continuation is bounded: SendTargets=All of
/// a server with one target per exported volume (thousands, ~130 bytes
/// each with one portal) fits, as it does in our initiator's 1 MiB.
const MAX_TEXT_ANSWER: usize = 1 << 20;
/// 0B/47/05, the iSCSI condition "protocol service CRC error" (RFC 7143
/// §11.4.7.2): how a command whose Data-Out went missing ends at ERL 0.
const PROTOCOL_SERVICE_CRC_ERROR: Sense = Sense::new(ABORTED_COMMAND, 0x47, 0x05);

/// Serves one accepted connection until it ends, logging why.
pub(crate) fn serve(s: &Server, stream: TcpStream, ctl: &Arc<ConnCtl>) {
    let portal = ctl.portal;
    let tpgt = s.portals.get(portal).map_or(0, |p| p.tpgt);
    let mut wire = match Wire::new(stream, ctl.clone(), s.faults.clone()) {
        Ok(w) => w,
        Err(e) => {
            log::warn!("portal {portal}: cannot set up a connection: {e}");
            return;
        }
    };
    let peer = wire.peer;
    let session = match login::login(&mut wire, s, ctl, tpgt) {
        Ok(s) => s,
        Err(e) => return log_end(peer, "login", &e),
    };
    let (rx, tx) = wire.split(Digests {
        header: session.params.header_digest,
        data: session.params.data_digest,
    });
    let what = match &session.kind {
        SessionKind::Discovery => "discovery session".to_string(),
        SessionKind::Normal(n, t) => format!("session {n} with {}", t.iqn),
    };
    log::info!("{peer}: {what} logged in (TSIH {})", session.tsih);
    match full_feature(s, ctl, tpgt, rx, tx, session) {
        Ok(()) => log::info!("{peer}: {what} logged out"),
        Err(e) => log_end(peer, &what, &e),
    }
}

/// Full feature phase: this thread reads, workers in its scope run the
/// commands; all of them have ended when this returns.
fn full_feature(
    s: &Server,
    ctl: &Arc<ConnCtl>,
    tpgt: u16,
    rx: WireRx,
    tx: WireTx,
    session: Session,
) -> Result<(), ConnError> {
    let Session {
        kind,
        params,
        stat_sn,
        exp_cmd_sn,
        ..
    } = session;
    let (nexus, target) = match kind {
        SessionKind::Normal(n, t) => (Some(n), Some(t)),
        SessionKind::Discovery => (None, None),
    };
    let limits = Limits {
        max_segment: params.max_send_data_segment_length as usize,
        max_burst: params.max_burst_length as usize,
    };
    let pool = Pool::new(
        target.as_deref(),
        tpgt,
        nexus,
        limits,
        Sender::new(tx, stat_sn, ctl.clone(), s.faults.clone()),
        Book::new(exp_cmd_sn, s.params.queue_depth, ctl.clone()),
        ctl.clone(),
    );
    let id = ctl.id;
    thread::scope(|scope| {
        // Dropped last, by a return or a panic: the workers end, so the
        // scope can join them.
        let _closer = Closer(&pool);
        let spawn = || -> io::Result<()> {
            thread::Builder::new()
                .name(format!("iscsi-conn-{id}w"))
                .spawn_scoped(scope, || pool::work(&pool))
                .map(drop)
        };
        let r = Conn::new(s, rx, &pool, &spawn, params).run();
        // A worker's failure ends the connection first; any after that
        // (answers of queued commands to a closed socket) are not the cause.
        pool.take_failure().map_or(r, Err)
    })
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

/// A command still waiting for (some of) its Data-Out.
struct Task {
    itt: u32,
    lun: u16,
    cdb: [u8; 16],
    read: bool,
    write: bool,
    edtl: u32,
    attr: Attr,
    data: IoBuf,
    received: u32,
    /// More than we buffer: its data is counted, not kept, and it fails.
    oversize: bool,
    /// A Data-Out came with the wrong DataSN: the rest of its data is
    /// discarded, and it fails with a protocol service CRC error.
    lost_data: bool,
    /// Unsolicited Data-Out may still come (the command's F bit was 0).
    unsolicited_open: bool,
    unsolicited_sn: u32,
    burst: Option<Burst>,
    r2t_sn: u32,
    epoch: Epoch,
}

impl Task {
    fn take(&mut self, data: &[u8]) {
        if !self.oversize && !data.is_empty() {
            if self.data.capacity() == 0 {
                // Not oversize: the whole transfer is at most MAX_TRANSFER_BYTES.
                self.data = IoBuf::with_capacity(self.edtl as usize);
            }
            self.data.extend_from_slice(data);
        }
        self.received += data.len() as u32;
    }

    fn needs_r2t(&self) -> bool {
        self.write
            && !self.oversize
            && !self.lost_data
            && !self.unsolicited_open
            && self.burst.is_none()
            && self.received < self.edtl
    }

    fn ready(&self) -> bool {
        !self.write
            || (!self.unsolicited_open
                && self.burst.is_none()
                && (self.oversize || self.lost_data || self.received == self.edtl))
    }
}

enum Flow {
    Continue,
    Close,
}

/// Starts one more worker for the pool.
type Spawn<'a> = &'a dyn Fn() -> io::Result<()>;

struct Conn<'a> {
    s: &'a Server,
    rx: WireRx,
    pool: &'a Pool<'a>,
    spawn: Spawn<'a>,
    params: Params,
    /// Commands waiting for data, in arrival order (R2Ts go to the first).
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
    fn new(
        s: &'a Server,
        rx: WireRx,
        pool: &'a Pool<'a>,
        spawn: Spawn<'a>,
        params: Params,
    ) -> Conn<'a> {
        Conn {
            s,
            rx,
            pool,
            spawn,
            params,
            tasks: Vec::new(),
            aborted: VecDeque::new(),
            last_ttt: 0,
            text_rest: None,
            ping: None,
            last_rx: Instant::now(),
        }
    }

    fn book(&self) -> &'a Book {
        &self.pool.book
    }

    fn peer(&self) -> SocketAddr {
        self.pool.sender.peer
    }

    fn run(&mut self) -> Result<(), ConnError> {
        loop {
            let Some(p) = self.rx.recv(self.params.max_recv_data_segment_length)? else {
                self.idle()?;
                continue;
            };
            self.last_rx = Instant::now();
            if let Flow::Close = self.handle(p)? {
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

    /// Whether to process a request other than a SCSI command (see `Book::admit`).
    fn accept_sn(&self, p: &Pdu) -> Result<bool, ConnError> {
        self.book()
            .admit(p.u32_at(pdu::OFF_24), p.immediate(), None)
    }

    /// Sends one PDU built by the connection thread, stamped as `stat` says.
    fn answer(&self, mut r: Pdu, stat: Stat) -> Result<(), ConnError> {
        let book = self.book();
        self.pool.sender.send(|tx| {
            tx.stamp(&mut r.bhs, book.window(), stat);
            tx.send(&r)
        })
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
            if sent.elapsed() > self.s.params.nop_timeout {
                return Err(ConnError::NopTimeout(self.s.params.nop_timeout));
            }
            return Ok(());
        }
        let Some(interval) = self.s.params.nop_interval else {
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
        self.answer(p, Stat::Show)?;
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
        self.pool.sender.fault_delay()?;
        let mut r = Pdu::new(Opcode::NopIn);
        r.set_flags(pdu::FLAG_FINAL);
        r.set_lun(p.lun());
        r.set_itt(p.itt());
        r.set_u32(pdu::OFF_20, RESERVED_TAG);
        let n = p
            .data
            .len()
            .min(self.params.max_send_data_segment_length as usize);
        r.data = p.data[..n].to_vec();
        self.answer(r, Stat::Take)
    }

    // ---- SCSI commands and their data ----

    fn command(&mut self, p: Pdu) -> Result<(), ConnError> {
        if self.pool.nexus.is_none() {
            return Err(ConnError::Protocol(
                "SCSI command in a discovery session".into(),
            ));
        }
        let itt = p.itt();
        let lun = pdu::decode_lun(p.lun());
        if !self
            .book()
            .admit(p.u32_at(pdu::OFF_24), p.immediate(), Some((itt, lun)))?
        {
            return Ok(());
        }
        let flags = p.flags();
        let (read, write) = (flags & CMD_READ != 0, flags & CMD_WRITE != 0);
        let edtl = p.u32_at(pdu::OFF_20);
        let protocol = |m: String| Err(ConnError::Protocol(m));
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
        let lu = self.pool.t.and_then(|t| t.lus.get(&lun));
        let epoch = match (lu, &self.pool.nexus) {
            (Some(lu), Some(n)) => lu.state().epoch(n),
            _ => Epoch::default(),
        };
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&p.bhs[pdu::OFF_32..pdu::OFF_32 + pdu::CDB_LEN]);
        let oversize = write && u64::from(edtl) > MAX_TRANSFER_BYTES;
        let mut task = Task {
            itt,
            lun,
            cdb,
            read,
            write,
            edtl,
            attr: Attr::of_flags(flags),
            data: IoBuf::new(),
            received: 0,
            oversize,
            lost_data: false,
            unsolicited_open: false,
            unsolicited_sn: 0,
            burst: None,
            r2t_sn: 0,
            epoch,
        };
        task.take(&p.data);
        task.unsolicited_open = unsolicited_open && task.received < first_burst as u32;
        if task.ready() {
            return self.dispatch(task);
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
        let peer = self.peer();
        let t = &mut self.tasks[i];
        let end = offset.checked_add(len);
        let what = || {
            format!("Data-Out for task {itt:#x} (TTT {ttt:#x}, DataSN {sn}, offset {offset}, {len} bytes)")
        };
        let bad = |why: &str| Err(ConnError::Protocol(format!("{}: {why}", what())));
        // A DataSN other than the next one means an earlier Data-Out was
        // lost (RFC 7143 §7.9). With no recovery R2T at ERL 0, the task
        // ends in CHECK CONDITION once its outstanding sequences end
        // (§7.8 b); the session goes on. Dropping the connection is also
        // allowed, but fails every other command of the session with it.
        let in_sequence = |t: &mut Task, expected: u32| {
            if !t.lost_data && sn != expected {
                log::warn!(
                    "{peer}: {}: expected DataSN {expected}; the command fails",
                    what()
                );
                t.lost_data = true;
            }
            !t.lost_data
        };
        if ttt == RESERVED_TAG {
            let limit = first_burst.min(t.edtl);
            if !t.unsolicited_open {
                return bad("no unsolicited data expected");
            }
            if end.is_none_or(|e| e > limit) {
                return bad("beyond FirstBurstLength");
            }
            if in_sequence(t, t.unsolicited_sn) {
                if offset != t.received {
                    return bad("out of order");
                }
                t.unsolicited_sn = t.unsolicited_sn.wrapping_add(1);
                t.take(&p.data);
            }
            if p.is_final() || end == Some(limit) {
                t.unsolicited_open = false;
            }
        } else {
            let Some(b) = &t.burst else {
                return bad("no R2T outstanding");
            };
            if ttt != b.ttt {
                return bad("unknown target transfer tag");
            }
            let (burst_end, data_sn) = (b.end, b.data_sn);
            if end.is_none_or(|e| e > burst_end) {
                return bad("beyond the R2T");
            }
            if in_sequence(t, data_sn) {
                if offset != t.received {
                    return bad("out of order");
                }
                if let Some(b) = &mut t.burst {
                    b.data_sn = b.data_sn.wrapping_add(1);
                }
                t.take(&p.data);
                if t.received != burst_end && p.is_final() {
                    return bad("burst ended before the R2T's length");
                }
            }
            // After a lost Data-Out the burst ends where the initiator says.
            if end == Some(burst_end) || p.is_final() {
                t.burst = None;
            }
        }
        if self.tasks[i].ready() {
            let task = self.tasks.remove(i);
            self.dispatch(task)?;
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
        self.answer(r, Stat::Show)
    }

    /// Hands a task whose data is complete to the workers, starting one
    /// when none is free. An injected fault is taken here, so "the next N
    /// commands" are counted in the order their data completes, whatever
    /// order the workers start them in.
    fn dispatch(&mut self, task: Task) -> Result<(), ConnError> {
        let refused = if task.oversize {
            Some(Sense::INVALID_FIELD_IN_CDB)
        } else if task.lost_data {
            Some(PROTOCOL_SERVICE_CRC_ERROR)
        } else {
            None
        };
        let injected = if refused.is_some() {
            None
        } else {
            self.s.faults.take(task.cdb[0])
        };
        let job = Job {
            itt: task.itt,
            lun: task.lun,
            cdb: task.cdb,
            read: task.read,
            edtl: task.edtl,
            data: task.data,
            refused,
            epoch: task.epoch,
            attr: task.attr,
            injected,
        };
        if !self.book().queue(job) {
            return Ok(());
        }
        match (self.spawn)() {
            Ok(()) => {
                self.book().worker_started();
                Ok(())
            }
            // With a worker or more the queue still moves, only slower.
            Err(e) if self.book().workers() > 0 => {
                log::warn!("{}: cannot start another worker: {e}", self.peer());
                Ok(())
            }
            Err(e) => Err(ConnError::Worker(e)),
        }
    }

    // ---- task management ----

    fn forget(&mut self, itt: u32) {
        if self.aborted.len() == ABORTED_MEMORY {
            self.aborted.pop_front();
        }
        self.aborted.push_back(itt);
    }

    /// Drops a task waiting for data: it gets no answer, and late Data-Out
    /// for it is discarded.
    fn drop_waiting(&mut self, i: usize) {
        let task = self.tasks.remove(i);
        self.book().forget(task.itt);
        self.forget(task.itt);
    }

    fn task_management(&mut self, p: &Pdu) -> Result<(), ConnError> {
        if self.pool.nexus.is_none() {
            return Err(ConnError::Protocol(
                "task management in a discovery session".into(),
            ));
        }
        if !self.accept_sn(p)? {
            return Ok(());
        }
        let lun = pdu::decode_lun(p.lun());
        let response = match p.flags() & FUNCTION_MASK {
            TMF_ABORT_TASK => self.abort_task(p.u32_at(pdu::OFF_20), p.u32_at(pdu::OFF_32))?,
            TMF_LUN_RESET => match self.pool.t.and_then(|t| t.lus.get(&lun)) {
                None => TMF_NO_LUN,
                Some(lu) => {
                    // This connection's tasks of the LU: those waiting for
                    // data or queued end unanswered; running ones finish.
                    while let Some(i) = self.tasks.iter().position(|t| t.lun == lun) {
                        self.drop_waiting(i);
                    }
                    for itt in self.book().drain_lun(lun)? {
                        self.forget(itt);
                    }
                    // Waits for commands running on other connections.
                    let _all = lu.exclusive();
                    lu.state().reset();
                    log::info!("{}: LUN RESET of LUN {lun}", self.peer());
                    TMF_COMPLETE
                }
            },
            _ => TMF_NOT_SUPPORTED,
        };
        self.pool.sender.fault_delay()?;
        let mut r = Pdu::new(Opcode::TaskMgmtResponse);
        r.set_flags(pdu::FLAG_FINAL);
        r.bhs[pdu::OFF_B2] = response;
        r.set_itt(p.itt());
        self.answer(r, Stat::Take)?;
        self.pump_r2t()
    }

    /// ABORT TASK: a task waiting for data or queued is dropped; a running
    /// one is waited for, after which it no longer exists.
    fn abort_task(&mut self, referenced: u32, ref_sn: u32) -> Result<u8, ConnError> {
        if let Some(i) = self.tasks.iter().position(|t| t.itt == referenced) {
            self.drop_waiting(i);
            return Ok(TMF_COMPLETE);
        }
        if self.book().abort(referenced)? == Abort::Dequeued {
            self.forget(referenced);
            return Ok(TMF_COMPLETE);
        }
        let w = self.book().window();
        Ok(
            if sn_le(w.exp_cmd_sn, ref_sn) && sn_le(ref_sn, w.max_cmd_sn) {
                // Never received (RFC 7143 §11.5.1 b): nothing to abort.
                TMF_COMPLETE
            } else {
                TMF_NO_TASK
            },
        )
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
        self.pool.sender.fault_delay()?;
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
        self.answer(r, Stat::Take)
    }

    /// SendTargets (RFC 7143 §12.3): the targets asked for (`All`: every
    /// one of the server in a discovery session, this session's target in
    /// a normal one; empty: this session's), each with every portal
    /// and its group tag; a portal bound to a wildcard address is reported
    /// at the address this connection reached.
    fn send_targets(&self, which: &str) -> Vec<(String, String)> {
        let own = || self.pool.t.and_then(|t| self.s.target(&t.iqn));
        let targets: Vec<_> = match which {
            // A normal session learns about its own target only.
            "All" if self.pool.t.is_some() => own().into_iter().collect(),
            "All" => self.s.targets(),
            "" => own().into_iter().collect(),
            name => self.s.target(name).into_iter().collect(),
        };
        let mut out = Vec::new();
        for t in targets {
            out.push(("TargetName".to_string(), t.iqn.clone()));
            for portal in &self.s.portals {
                let mut addr = portal.addr;
                if addr.ip().is_unspecified() {
                    addr.set_ip(self.pool.sender.local.ip());
                }
                out.push((
                    "TargetAddress".to_string(),
                    format!("{addr},{}", portal.tpgt),
                ));
            }
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
        // Commands received before the Logout are answered before it.
        self.book().drain()?;
        self.pool.sender.fault_delay()?;
        let mut r = Pdu::new(Opcode::LogoutResponse);
        r.set_flags(pdu::FLAG_FINAL);
        r.bhs[pdu::OFF_B2] = response;
        r.set_itt(p.itt());
        r.bhs[OFF_TIME2WAIT..OFF_TIME2WAIT + 2].copy_from_slice(&0u16.to_be_bytes());
        r.bhs[OFF_TIME2RETAIN..OFF_TIME2RETAIN + 2].copy_from_slice(&0u16.to_be_bytes());
        self.answer(r, Stat::Take)?;
        Ok(if response == LOGOUT_OK {
            Flow::Close
        } else {
            Flow::Continue
        })
    }
}
