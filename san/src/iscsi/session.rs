//! SCSI commands over a logged-in connection (RFC 7143 §11.3-11.8), many at
//! once. Callers on any thread queue their command (with immediate and
//! unsolicited data) in CmdSN order inside the target's window; whoever
//! finds the socket idle writes everything queued, so commands issued
//! together leave in one write.
//!
//! Reading is done by a waiting caller, whichever first finds nobody
//! reading (it leads): it parses the target's PDUs, places Data-In straight
//! into the waiting callers' buffers, notes the end of each command in its
//! task and wakes its caller; once its own command has news it hands the
//! reading on to another waiting caller. A lone command thus costs one
//! wakeup (the socket's), not two (a reader thread's, then its caller's).
//! One thread may also keep many commands in flight ([`Session::start`],
//! [`Session::wait_any`]), as an event loop does: then it reads the
//! answers of all of them and no thread switches per command.
//! A keeper thread reads while nobody waits: it answers the target's NOP-In
//! pings, notices a closed connection, and pings an idle one (keepalive).
//!
//! R2Ts are answered by the waiting caller from its own buffer, so no write
//! data is kept elsewhere. When the connection fails, every waiting command
//! fails with the reason and the session stays down: reconnecting (same
//! ISID) is the multipath layer's decision.

use super::login::Connection;
use super::pdu::{self, Digests, Opcode, Pdu, PduError};
use super::text::Params;
use super::IscsiError;
use crate::vectored::write_all_vectored;
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

// SCSI Command flags (byte 1).
const CMD_READ: u8 = 0x40;
const CMD_WRITE: u8 = 0x20;
const ATTR_SIMPLE: u8 = 0x01;
// Residual flags of Data-In and SCSI Response.
const RESIDUAL_UNDERFLOW: u8 = 0x02;
const RESIDUAL_OVERFLOW: u8 = 0x04;
/// iSCSI response codes (SCSI Response byte 2): 0 = completed at target.
const RESPONSE_COMPLETED: u8 = 0x00;
/// Async message events (byte 36) after which the connection is gone.
const ASYNC_REQUEST_LOGOUT: u8 = 1;
const ASYNC_DROP_CONNECTION: u8 = 2;
const ASYNC_DROP_ALL: u8 = 3;
/// Times a waiting command yields before it sleeps: the answer often
/// arrives within a few scheduler turns, and a sleep and wake per command
/// costs more.
const YIELDS_BEFORE_SLEEP: usize = 4;
/// How long a leader polls an empty socket before it blocks reading it. An
/// answer that comes meanwhile is read without a blocked reader's sleep and
/// wake-up, which costs most on a VM's vCPUs (an IPI through the
/// hypervisor), and at depth 1 that is every answer.
const POLL_BEFORE_BLOCKING: Duration = Duration::from_micros(50);
/// Data segments up to this size are copied into the send queue (cheaper
/// than a write of their own); larger ones go from the caller's buffer to
/// the socket in one vectored write.
const COPY_MAX: usize = 16 << 10;
/// Initial capacity of the send queue (it grows when it must).
const QUEUE_CAPACITY: usize = 64 << 10;
/// The longest the keeper sleeps between looks at an idle connection, and
/// a reader between looks at its command's deadline is half this.
const MAX_TICK: Duration = Duration::from_secs(1);
/// How long a command may wait for its completion before the path is
/// declared failed (the multipath layer retries elsewhere).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle connection is pinged (NOP-Out) this often, and declared dead
/// when the answer takes longer than the ping timeout (open-iscsi's
/// noop_out_interval/noop_out_timeout, 5 s each).
pub const DEFAULT_NOP_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_NOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeouts of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// How long a command may wait for its completion.
    pub command_timeout: Duration,
    /// Ping an idle connection this often (`None`: never).
    pub nop_interval: Option<Duration>,
    pub nop_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            nop_interval: Some(DEFAULT_NOP_INTERVAL),
            nop_timeout: DEFAULT_NOP_TIMEOUT,
        }
    }
}

/// The data phase of a command.
pub enum DataPhase<'a> {
    None,
    /// Read into this buffer (its length is the expected transfer length).
    In(&'a mut [u8]),
    /// Write from this buffer.
    Out(&'a [u8]),
}

/// The data phase of a started command ([`Session::start`]), with a
/// buffer the command owns until it ends.
pub enum Owned {
    None,
    /// Read into this buffer (its length is the expected transfer length).
    In(Vec<u8>),
    /// Write from this buffer.
    Out(Vec<u8>),
}

impl Owned {
    fn phase(&mut self) -> DataPhase<'_> {
        match self {
            Owned::None => DataPhase::None,
            Owned::In(b) => DataPhase::In(b),
            Owned::Out(b) => DataPhase::Out(b),
        }
    }

    /// The buffer back (empty for `None`).
    pub fn into_buf(self) -> Vec<u8> {
        match self {
            Owned::None => Vec::new(),
            Owned::In(b) | Owned::Out(b) => b,
        }
    }
}

/// A command started by [`Session::start`]. Its end is noted by whichever
/// thread reads the connection, and woken on the thread that started it,
/// so it is waited for there (it is not `Send`). Dropped unwaited, it
/// stops listening: the command still runs at the target, and its data
/// is dropped on arrival.
#[must_use = "a started command is waited for, or dropped to give it up"]
pub struct Pending<'s> {
    // Before `data`: on drop the task gives the buffer back first.
    task: TaskGuard<'s>,
    session: &'s Session,
    lun: [u8; 8],
    data: Owned,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Pending<'_> {
    /// Waits for the command's end; gives back its buffer with it.
    pub fn wait(self) -> (Result<Completion, IscsiError>, Owned) {
        let Pending {
            mut task,
            session,
            lun,
            data,
            ..
        } = self;
        // A read buffer stays untouched here until the task gave it back.
        let phase = match &data {
            Owned::Out(b) => DataPhase::Out(b),
            _ => DataPhase::None,
        };
        let r = session.finish(&mut task, lun, &phase);
        drop(task);
        (r, data)
    }
}

/// How a command ended at the SCSI level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// SCSI status byte (0 GOOD, 2 CHECK CONDITION, 0x18 RESERVATION CONFLICT…).
    pub status: u8,
    /// Sense data (without the 2-byte length), when status is CHECK CONDITION.
    pub sense: Vec<u8>,
    /// Bytes expected but not transferred (underflow), or over (negative).
    pub residual: i64,
}

/// An R2T for a waiting write: `want` bytes from offset `off`, tagged `ttt`.
struct R2t {
    ttt: u32,
    off: usize,
    want: usize,
}

/// How a command ended, as the reader (or a failure) tells its caller.
enum End {
    Done(Completion),
    /// An iSCSI response code other than "completed at target".
    Failed(u8),
    /// The connection is down: why.
    Down(String),
}

/// What a waiting caller acts on next.
enum Event {
    R2t(R2t),
    End(End),
}

/// A reading caller's buffer, lent to the reader thread for Data-In.
struct ReadTo {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the pointer is only dereferenced by the reader thread, under the
// task's lock, while the caller that owns the buffer still waits (see
// `Task`); moving it between threads is what lending means.
unsafe impl Send for ReadTo {}

struct TaskState {
    /// Where Data-In goes (`None`: the command reads nothing, or its caller
    /// has stopped waiting).
    read_to: Option<ReadTo>,
    /// The caller has stopped waiting: what still comes for it is dropped.
    gone: bool,
    r2ts: VecDeque<R2t>,
    end: Option<End>,
}

/// One command in flight, shared by its caller and the reader. The
/// caller's read buffer stays valid until the caller, on its way out
/// (`TaskGuard`), takes `read_to` back under the lock; the reader writes to
/// it only while it holds the lock and `read_to` is set.
struct Task {
    state: Mutex<TaskState>,
    /// Set after the reader (or a failure) added to `state`: the caller's
    /// check without the lock.
    ready: AtomicBool,
    caller: Thread,
}

impl Task {
    fn new(read_to: Option<ReadTo>) -> Arc<Task> {
        Arc::new(Task {
            state: Mutex::new(TaskState {
                read_to,
                gone: false,
                r2ts: VecDeque::new(),
                end: None,
            }),
            ready: AtomicBool::new(false),
            caller: std::thread::current(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, TaskState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the caller after `state` changed.
    fn wake(&self) {
        self.ready.store(true, Ordering::Release);
        self.caller.unpark();
    }

    /// Ends the command (the first end stands) and wakes its caller.
    fn end(&self, e: End) {
        self.lock().end.get_or_insert(e);
        self.wake();
    }
}

/// The session's state, under one lock held only briefly (never across a
/// socket call).
struct State {
    cmd_sn: u32,
    next_itt: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    /// Commands in flight by task tag; the reader removes a command when it
    /// ends it.
    tasks: HashMap<u32, Arc<Task>>,
    /// Why the connection is down, once it is.
    down: Option<String>,
    /// PDUs queued for the socket, in CmdSN order.
    queue: Vec<u8>,
    /// The last written batch's buffer, kept for the next one.
    spare: Vec<u8>,
    /// A thread is writing to the socket; it also writes what others queue
    /// meanwhile.
    writing: bool,
    /// Threads waiting on `Inner::changed`.
    waiting: usize,
}

impl State {
    fn take_itt(&mut self) -> u32 {
        let itt = self.next_itt;
        self.next_itt = match itt.wrapping_add(1) {
            pdu::RESERVED_TAG | 0 => 1,
            n => n,
        };
        itt
    }
}

struct Inner {
    state: Mutex<State>,
    /// Someone reads (holds `rx`): see the module comment.
    leader: AtomicBool,
    rx: Mutex<Rx>,
    /// Signalled (when someone waits) as the window moves, the socket frees
    /// up, or the connection goes down.
    changed: Condvar,
    /// Written by the one thread that set `State::writing`.
    socket: TcpStream,
    digests: Digests,
    params: Params,
    addr: SocketAddr,
    timeout: Duration,
    nop_interval: Option<Duration>,
    nop_timeout: Duration,
    /// The socket's read timeout: how often a blocked reader looks at its
    /// deadline, and the keeper at an idle connection.
    tick: Duration,
    /// How long a PDU may stall halfway before the connection is failed.
    patience: Duration,
}

/// The read side of the connection, held by whichever thread leads.
struct Rx {
    reader: BufReader<TcpStream>,
    /// When the last PDU came.
    last: Instant,
    /// Our unanswered keepalive ping, since when.
    ping: Option<Instant>,
    /// The last PDU's data segment was large (see [`PduReader::direct`]).
    big: bool,
}

/// One connection shared by any number of threads.
pub struct Session {
    inner: Arc<Inner>,
    keeper: Option<JoinHandle<()>>,
}

impl Session {
    pub fn new(conn: Connection) -> Session {
        Session::with_options(conn, SessionOptions::default())
    }

    /// Default options but the command timeout.
    pub fn with_timeout(conn: Connection, command_timeout: Duration) -> Session {
        let opts = SessionOptions {
            command_timeout,
            ..SessionOptions::default()
        };
        Session::with_options(conn, opts)
    }

    pub fn with_options(conn: Connection, opts: SessionOptions) -> Session {
        let Connection {
            reader,
            writer,
            params,
            digests,
            cmd_sn,
            exp_stat_sn,
            max_cmd_sn,
            addr,
            ..
        } = conn;
        let (socket, unsent) = writer.into_parts();
        // Login flushes each PDU, so this is normally empty.
        let unsent = unsent.unwrap_or_else(|e| e.into_inner());
        let mut queue = Vec::with_capacity(QUEUE_CAPACITY.max(unsent.len()));
        queue.extend_from_slice(&unsent);
        let tick = [
            opts.nop_interval.unwrap_or(MAX_TICK),
            opts.nop_timeout,
            opts.command_timeout,
            MAX_TICK,
        ]
        .into_iter()
        .min()
        .unwrap_or(MAX_TICK)
            / 2;
        let tick = tick.max(Duration::from_millis(10));
        // A zero read timeout would mean none.
        reader.get_ref().set_read_timeout(Some(tick)).ok();
        let inner = Arc::new(Inner {
            leader: AtomicBool::new(false),
            rx: Mutex::new(Rx {
                reader,
                last: Instant::now(),
                ping: None,
                big: false,
            }),
            state: Mutex::new(State {
                cmd_sn,
                next_itt: 1,
                exp_stat_sn,
                max_cmd_sn,
                tasks: HashMap::new(),
                down: None,
                queue,
                spare: Vec::with_capacity(QUEUE_CAPACITY),
                writing: false,
                waiting: 0,
            }),
            changed: Condvar::new(),
            socket,
            digests,
            params,
            addr,
            timeout: opts.command_timeout,
            nop_interval: opts.nop_interval,
            nop_timeout: opts.nop_timeout,
            tick,
            patience: opts.nop_interval.unwrap_or(opts.command_timeout).max(tick),
        });
        let i = inner.clone();
        let h = std::thread::Builder::new()
            .name(format!("iscsi-keep {addr}"))
            .spawn(move || keep(&i));
        let keeper = match h {
            Ok(h) => Some(h),
            Err(e) => {
                inner.fail(format!("cannot start the keeper thread: {e}"));
                None
            }
        };
        Session { inner, keeper }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn params(&self) -> &Params {
        &self.inner.params
    }

    /// Why the connection is down, if it is.
    pub fn down(&self) -> Option<String> {
        self.inner.lock_state().down.clone()
    }

    /// Runs one SCSI command on `lun` and waits for its completion.
    pub fn execute(
        &self,
        lun: [u8; 8],
        cdb: &[u8],
        mut data: DataPhase<'_>,
    ) -> Result<Completion, IscsiError> {
        // The guard is dropped before `data`, so the reader lets go of the
        // buffer before its borrow ends.
        let mut task = self.begin(lun, cdb, &mut data)?;
        self.finish(&mut task, lun, &data)
    }

    /// Starts one SCSI command on `lun` with a buffer the command owns, and
    /// returns at once: one thread keeps several commands in flight, as an
    /// event loop does, and waits for each with [`Pending::wait`]. This
    /// costs no thread switch per command where `execute` from several
    /// threads costs one or two.
    pub fn start(
        &self,
        lun: [u8; 8],
        cdb: &[u8],
        mut data: Owned,
    ) -> Result<Pending<'_>, IscsiError> {
        let task = {
            let mut phase = data.phase();
            self.begin(lun, cdb, &mut phase)?
        };
        // The reader holds a pointer into the Vec's heap buffer, which does
        // not move with the Vec; the buffer goes back to the caller only
        // after the task gave it up (`Pending::wait`), and a Pending that is
        // leaked leaks the buffer with it.
        Ok(Pending {
            task,
            session: self,
            lun,
            data,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Checks `cdb`, lends a read buffer to the reader and sends the
    /// command with its immediate and unsolicited data.
    fn begin(
        &self,
        lun: [u8; 8],
        cdb: &[u8],
        data: &mut DataPhase<'_>,
    ) -> Result<TaskGuard<'_>, IscsiError> {
        if cdb.len() > pdu::CDB_LEN {
            return Err(IscsiError::Protocol(format!(
                "CDB of {} bytes needs an AHS, which we do not send",
                cdb.len()
            )));
        }
        let p = &self.inner.params;
        let (flags, len) = match &*data {
            DataPhase::None => (0, 0),
            DataPhase::In(b) => (CMD_READ, b.len()),
            DataPhase::Out(b) => (CMD_WRITE, b.len()),
        };
        let len = u32::try_from(len)
            .map_err(|_| IscsiError::Protocol(format!("transfer of {len} bytes is over 4 GiB")))?;
        let mut cmd = Pdu::new(Opcode::ScsiCommand);
        cmd.set_lun(lun);
        cmd.set_u32(pdu::OFF_20, len);
        cmd.bhs[pdu::OFF_32..pdu::OFF_32 + cdb.len()].copy_from_slice(cdb);
        // Unsolicited data: immediate in the command, then Data-Out PDUs up
        // to FirstBurstLength when InitialR2T=No.
        let mut immediate = 0usize;
        let mut unsolicited_end = 0usize;
        if let DataPhase::Out(b) = &*data {
            let first = (p.first_burst_length as usize).min(b.len());
            if p.immediate_data {
                immediate = first
                    .min(p.max_send_data_segment_length as usize)
                    .min(pdu::MAX_DATA_SEGMENT as usize);
            }
            if !p.initial_r2t {
                unsolicited_end = first;
            }
        }
        let more = unsolicited_end > immediate;
        // The F bit says no unsolicited Data-Out follows (tgtd issues an R2T
        // for data it was not told about, then resets on the duplicate).
        cmd.set_flags(flags | ATTR_SIMPLE | if more { 0 } else { pdu::FLAG_FINAL });

        let read_to = match data {
            DataPhase::In(b) => Some(ReadTo {
                ptr: b.as_mut_ptr(),
                len: b.len(),
            }),
            _ => None,
        };
        let mut task = TaskGuard {
            inner: &self.inner,
            task: Task::new(read_to),
            itt: None,
            ended: false,
        };
        let first: &[u8] = match &*data {
            DataPhase::Out(b) => &b[..immediate],
            _ => &[],
        };
        self.send_command(&mut cmd, first, &mut task)?;
        if let (DataPhase::Out(b), true) = (&*data, more) {
            self.data_out(
                cmd.itt(),
                lun,
                pdu::RESERVED_TAG,
                &b[immediate..unsolicited_end],
                immediate,
            )?;
        }
        Ok(task)
    }

    /// Waits for the end of a begun command, answering its R2Ts from `data`.
    fn finish(
        &self,
        task: &mut TaskGuard<'_>,
        lun: [u8; 8],
        data: &DataPhase<'_>,
    ) -> Result<Completion, IscsiError> {
        let itt = task.itt.unwrap_or(pdu::RESERVED_TAG);
        loop {
            match self.next_event(&task.task)? {
                Event::R2t(r) => {
                    let DataPhase::Out(b) = data else {
                        return Err(self.protocol("R2T for a command without write data"));
                    };
                    let end = r
                        .off
                        .checked_add(r.want)
                        .filter(|&e| e <= b.len() && r.want > 0);
                    let Some(end) = end else {
                        return Err(self.protocol(&format!(
                            "R2T for {} bytes at offset {} of a {}-byte write",
                            r.want,
                            r.off,
                            b.len()
                        )));
                    };
                    self.data_out(itt, lun, r.ttt, &b[r.off..end], r.off)?;
                }
                Event::End(end) => {
                    task.ended = true;
                    return match end {
                        End::Done(c) => Ok(c),
                        End::Failed(response) => Err(IscsiError::TargetFailure {
                            addr: self.inner.addr,
                            response,
                        }),
                        End::Down(why) => Err(self.inner.down_error(&why)),
                    };
                }
            }
        }
    }

    /// Waits until one of `pending`, all started on this session, has news
    /// (its end came, or an R2T to answer), so that its
    /// [`Pending::wait`] does not wait on the target; returns its index,
    /// `None` when `pending` is empty. With it, one thread refills its
    /// commands in the order they end, as an event loop does.
    pub fn wait_any(&self, pending: &[&Pending<'_>]) -> Result<Option<usize>, IscsiError> {
        if pending.iter().any(|p| !std::ptr::eq(p.session, self)) {
            return Err(IscsiError::Protocol(
                "waiting on a command of another session".into(),
            ));
        }
        if pending.is_empty() {
            return Ok(None);
        }
        let ready = || {
            pending
                .iter()
                .position(|p| p.task.task.ready.load(Ordering::Acquire))
        };
        self.wait_until(ready).map(Some)
    }

    /// What the reader has for `task`.
    fn next_event(&self, task: &Task) -> Result<Event, IscsiError> {
        loop {
            self.wait_until(|| task.ready.load(Ordering::Acquire).then_some(0))?;
            if task.ready.swap(false, Ordering::Acquire) {
                let mut st = task.lock();
                let ev = match st.r2ts.pop_front() {
                    Some(r) => Some(Event::R2t(r)),
                    None => st.end.take().map(Event::End),
                };
                if !st.r2ts.is_empty() || st.end.is_some() {
                    task.ready.store(true, Ordering::Release);
                }
                if let Some(ev) = ev {
                    return Ok(ev);
                }
            }
        }
    }

    /// Waits until `ready` says which task has news. Reads itself when
    /// nobody does; else a few yields (see [`YIELDS_BEFORE_SLEEP`]), then
    /// a sleep, all bounded by the command timeout, after which the path
    /// is failed.
    fn wait_until(&self, ready: impl Fn() -> Option<usize>) -> Result<usize, IscsiError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.timeout;
        let mut yields = 0;
        loop {
            if let Some(i) = ready() {
                return Ok(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = format!(
                    "no answer to a command in {:.0} s",
                    inner.timeout.as_secs_f64()
                );
                inner.fail(why.clone());
                return Err(inner.down_error(&why));
            }
            if inner.try_lead() {
                let r = inner.lead(|| ready().is_some(), deadline);
                if let Err(why) = r {
                    // Our tasks end with the others: next turn.
                    inner.fail(why);
                }
                inner.release_lead();
                continue;
            }
            if yields < YIELDS_BEFORE_SLEEP {
                yields += 1;
                std::thread::yield_now();
                continue;
            }
            // Spurious returns only cost another look.
            std::thread::park_timeout(left);
        }
    }

    /// Assigns a task tag and the next CmdSN once the window allows, and
    /// queues `cmd` (CmdSNs leave in order), writing the queue if nobody
    /// else is.
    fn send_command(
        &self,
        cmd: &mut Pdu,
        immediate: &[u8],
        task: &mut TaskGuard<'_>,
    ) -> Result<(), IscsiError> {
        let inner = &self.inner;
        // Large immediate data is written from the caller's buffer, by the
        // caller, so it waits for the socket before it takes a CmdSN.
        let direct = immediate.len() > COPY_MAX;
        let mut st = inner.lock_state();
        loop {
            if let Some(why) = &st.down {
                return Err(inner.down_error(why));
            }
            let open = pdu::sn_le(st.cmd_sn, st.max_cmd_sn);
            if open && !(direct && st.writing) {
                break;
            }
            let (s, timed_out) = inner.wait_changed(st);
            st = s;
            if timed_out && st.down.is_none() {
                let why = if pdu::sn_lt(st.max_cmd_sn, st.cmd_sn) {
                    "the target's command window stayed closed".to_string()
                } else if direct && st.writing {
                    format!(
                        "a send did not finish in {:.0} s",
                        inner.timeout.as_secs_f64()
                    )
                } else {
                    continue;
                };
                drop(st);
                inner.fail(why.clone());
                return Err(inner.down_error(&why));
            }
        }
        let itt = st.take_itt();
        st.tasks.insert(itt, task.task.clone());
        task.itt = Some(itt);
        cmd.set_itt(itt);
        cmd.set_u32(pdu::OFF_24, st.cmd_sn);
        cmd.set_u32(pdu::OFF_28, st.exp_stat_sn);
        st.cmd_sn = st.cmd_sn.wrapping_add(1);
        let sent = if direct {
            match cmd.frame(inner.digests, immediate) {
                Ok(f) => {
                    st.writing = true;
                    inner.write_queued(st, Some([&f.head, immediate, f.tail()]))
                }
                Err(e) => {
                    drop(st);
                    return Err(inner.fail_send(&e));
                }
            }
        } else {
            let r = cmd.encode_with_data_into(inner.digests, immediate, &mut st.queue);
            match r {
                Ok(()) => inner.push(st),
                Err(e) => {
                    drop(st);
                    return Err(inner.fail_send(&e));
                }
            }
        };
        sent.map_err(|why: String| inner.down_error(&why))
    }

    /// Data-Out PDUs of at most the target's MaxRecvDataSegmentLength,
    /// DataSN from 0 for each burst, F on the last: small ones queued
    /// together, large ones written from `data` one by one.
    fn data_out(
        &self,
        itt: u32,
        lun: [u8; 8],
        ttt: u32,
        data: &[u8],
        base: usize,
    ) -> Result<(), IscsiError> {
        let inner = &self.inner;
        let max = (inner.params.max_send_data_segment_length as usize)
            .clamp(1, pdu::MAX_DATA_SEGMENT as usize);
        let n = data.len().div_ceil(max);
        let pdu_for = |sn: usize, exp_stat_sn: u32| {
            let mut d = Pdu::new(Opcode::DataOut);
            d.set_itt(itt);
            d.set_lun(lun);
            d.set_u32(pdu::OFF_20, ttt);
            d.set_u32(pdu::OFF_28, exp_stat_sn);
            d.set_u32(pdu::OFF_36, sn as u32);
            d.set_u32(pdu::OFF_40, (base + sn * max) as u32);
            if sn + 1 == n {
                d.set_flags(pdu::FLAG_FINAL);
            }
            d
        };
        let down = |why: String| inner.down_error(&why);
        if max <= COPY_MAX || data.len() <= COPY_MAX {
            let mut st = inner.lock_state();
            if let Some(why) = &st.down {
                return Err(inner.down_error(why));
            }
            for (sn, chunk) in data.chunks(max).enumerate() {
                let d = pdu_for(sn, st.exp_stat_sn);
                if let Err(e) = d.encode_with_data_into(inner.digests, chunk, &mut st.queue) {
                    drop(st);
                    return Err(inner.fail_send(&e));
                }
            }
            return inner.push(st).map_err(down);
        }
        for (sn, chunk) in data.chunks(max).enumerate() {
            let st = inner.take_socket()?;
            let d = pdu_for(sn, st.exp_stat_sn);
            match d.frame(inner.digests, chunk) {
                Ok(f) => inner
                    .write_queued(st, Some([&f.head, chunk, f.tail()]))
                    .map_err(down)?,
                Err(e) => {
                    let mut st = st;
                    st.writing = false;
                    drop(st);
                    return Err(inner.fail_send(&e));
                }
            }
        }
        Ok(())
    }

    /// A protocol violation ends the connection (ERL 0 has no other recovery).
    fn protocol(&self, what: &str) -> IscsiError {
        let why = format!("protocol error: {what}");
        self.inner.fail(why.clone());
        self.inner.down_error(&why)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.inner.fail("session closed".into());
        if let Some(h) = self.keeper.take() {
            h.thread().unpark();
            h.join().ok();
        }
    }
}

/// A command's caller's hold on its task: on the way out (whatever the
/// way), it takes its buffer back from the reader and, unless the command
/// ended (which removed it), removes its routing entry.
struct TaskGuard<'a> {
    inner: &'a Inner,
    task: Arc<Task>,
    itt: Option<u32>,
    ended: bool,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        {
            let mut st = self.task.lock();
            st.read_to = None;
            st.gone = true;
        }
        if let (Some(itt), false) = (self.itt, self.ended) {
            self.inner.lock_state().tasks.remove(&itt);
        }
    }
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_rx(&self) -> MutexGuard<'_, Rx> {
        self.rx.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the read side if nobody has it.
    fn try_lead(&self) -> bool {
        self.leader
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Gives the read side up and, while commands still wait, wakes one of
    /// their callers (not ours) to take it: a command's answer must not
    /// wait for nobody.
    fn release_lead(&self) {
        self.leader.store(false, Ordering::Release);
        let me = std::thread::current().id();
        let st = self.lock_state();
        if let Some(t) = st.tasks.values().find(|t| t.caller.id() != me) {
            t.caller.unpark();
        }
    }

    /// Leading: reads PDUs for everyone until `ready` (one of ours has
    /// news, and what was already received is dealt with) or the deadline
    /// passes. An error is the connection's end.
    fn lead(&self, ready: impl Fn() -> bool, deadline: Instant) -> Result<(), String> {
        let mut rx = self.lock_rx();
        while !ready() || !rx.reader.buffer().is_empty() {
            if rx.reader.buffer().is_empty() {
                self.poll_briefly();
            }
            if !self.read_one(&mut rx)? && Instant::now() >= deadline {
                break;
            }
        }
        Ok(())
    }

    /// Reads and acts on one PDU; `false` when the read timed out between
    /// PDUs (then keepalive is looked after).
    fn read_one(&self, rx: &mut Rx) -> Result<bool, String> {
        let mut r = PduReader {
            r: &mut rx.reader,
            direct: rx.big,
            started: false,
            patience: self.patience,
            until: None,
        };
        let max = self.params.max_recv_data_segment_length;
        match Pdu::read_head(&mut r, self.digests, max) {
            Ok((p, len)) => {
                rx.big = len >= BIG_SEGMENT;
                take_pdu(self, &mut r, p, len)?;
                // Anything from the target shows the connection lives.
                rx.ping = None;
                rx.last = Instant::now();
                Ok(true)
            }
            Err(PduError::Timeout) => {
                self.idle_check(rx)?;
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Keepalive: pings a connection quiet for the NOP interval, and gives
    /// it up when the ping goes unanswered for the NOP timeout.
    fn idle_check(&self, rx: &mut Rx) -> Result<(), String> {
        match rx.ping {
            Some(sent) if sent.elapsed() >= self.nop_timeout => Err(format!(
                "no answer to a NOP-Out ping in {:.0} s",
                self.nop_timeout.as_secs_f64()
            )),
            Some(_) => Ok(()),
            None => match self.nop_interval {
                Some(i) if rx.last.elapsed() >= i => {
                    self.ping().map_err(|e| format!("sending a ping: {e}"))?;
                    rx.ping = Some(Instant::now());
                    Ok(())
                }
                _ => Ok(()),
            },
        }
    }

    /// Polls the socket for at most [`POLL_BEFORE_BLOCKING`] before the
    /// leader blocks in a read of it.
    fn poll_briefly(&self) {
        let start = Instant::now();
        while !self.socket_readable(Duration::ZERO) && start.elapsed() < POLL_BEFORE_BLOCKING {
            std::hint::spin_loop();
        }
    }

    /// Whether the socket has something to read (or has ended), waiting
    /// at most `timeout`.
    fn socket_readable(&self, timeout: Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call; the socket
        // stays open as long as `self`.
        let n = unsafe { libc::poll(&mut fd, 1, ms) };
        n > 0
    }

    /// Waits (at most a command timeout) for `changed`; true if it timed out.
    fn wait_changed<'a>(&'a self, mut st: MutexGuard<'a, State>) -> (MutexGuard<'a, State>, bool) {
        st.waiting += 1;
        let (mut st, t) = self
            .changed
            .wait_timeout(st, self.timeout)
            .unwrap_or_else(PoisonError::into_inner);
        st.waiting -= 1;
        (st, t.timed_out())
    }

    /// Waits until nobody writes, and takes the socket (sets `writing`).
    fn take_socket(&self) -> Result<MutexGuard<'_, State>, IscsiError> {
        let mut st = self.lock_state();
        loop {
            if let Some(why) = &st.down {
                return Err(self.down_error(why));
            }
            if !st.writing {
                st.writing = true;
                return Ok(st);
            }
            let (s, timed_out) = self.wait_changed(st);
            st = s;
            if timed_out && st.writing && st.down.is_none() {
                drop(st);
                let why = format!(
                    "a send did not finish in {:.0} s",
                    self.timeout.as_secs_f64()
                );
                self.fail(why.clone());
                return Err(self.down_error(&why));
            }
        }
    }

    /// After something was queued: writes the queue unless another thread
    /// is writing (it will write this too).
    fn push<'a>(&'a self, mut st: MutexGuard<'a, State>) -> Result<(), String> {
        if st.writing {
            return Ok(());
        }
        st.writing = true;
        self.write_queued(st, None)
    }

    /// Holding the socket (`writing` set by us): writes the queue with
    /// `extra` after it, then whatever others queued meanwhile, until the
    /// queue is empty, then lets the socket go.
    fn write_queued<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        mut extra: Option<[&[u8]; 3]>,
    ) -> Result<(), String> {
        loop {
            if st.down.is_some() || (st.queue.is_empty() && extra.is_none()) {
                st.writing = false;
                st.queue.clear();
                if st.waiting > 0 {
                    self.changed.notify_all();
                }
                return Ok(());
            }
            let spare = std::mem::take(&mut st.spare);
            let mut batch = std::mem::replace(&mut st.queue, spare);
            drop(st);
            let r = match extra.take() {
                Some([a, b, c]) => write_all_vectored(
                    &mut &self.socket,
                    &mut [
                        IoSlice::new(&batch),
                        IoSlice::new(a),
                        IoSlice::new(b),
                        IoSlice::new(c),
                    ],
                ),
                None => (&self.socket).write_all(&batch),
            };
            batch.clear();
            st = self.lock_state();
            st.spare = batch;
            if let Err(e) = r {
                st.writing = false;
                drop(st);
                let why = format!("send failed: {e}");
                self.fail(why.clone());
                return Err(why);
            }
        }
    }

    fn fail_send(&self, e: &io::Error) -> IscsiError {
        let why = format!("send failed: {e}");
        self.fail(why.clone());
        self.down_error(&why)
    }

    /// Marks the connection down (first reason wins), closes the socket
    /// (so a reader blocked inside a PDU lets go of its task) and fails
    /// every waiting command.
    fn fail(&self, why: String) {
        let mut st = self.lock_state();
        if st.down.is_none() {
            log::warn!("iSCSI connection to {} down: {why}", self.addr);
            st.down = Some(why.clone());
        }
        let reason = st.down.clone().unwrap_or(why);
        let tasks: Vec<_> = st.tasks.drain().map(|(_, t)| t).collect();
        st.queue.clear();
        drop(st);
        self.changed.notify_all();
        self.socket.shutdown(Shutdown::Both).ok();
        for t in tasks {
            t.end(End::Down(reason.clone()));
        }
    }

    fn down_error(&self, why: &str) -> IscsiError {
        IscsiError::PathDown {
            addr: self.addr,
            why: why.to_string(),
        }
    }

    /// Notes StatSN and the command window from a target PDU.
    fn note(&self, st: &mut State, p: &Pdu) {
        let moved = pdu::note_sequence(&mut st.exp_stat_sn, &mut st.max_cmd_sn, p);
        if moved && st.waiting > 0 {
            self.changed.notify_all();
        }
    }

    /// A keepalive NOP-Out: immediate, a fresh task tag (the NOP-In answer
    /// has nobody waiting for it), no data.
    fn ping(&self) -> Result<(), String> {
        let mut out = Pdu::new(Opcode::NopOut);
        out.set_immediate(true);
        out.set_flags(pdu::FLAG_FINAL);
        out.set_u32(pdu::OFF_20, pdu::RESERVED_TAG);
        let mut st = self.lock_state();
        let itt = st.take_itt();
        out.set_itt(itt);
        out.set_u32(pdu::OFF_24, st.cmd_sn);
        out.set_u32(pdu::OFF_28, st.exp_stat_sn);
        out.encode_into(self.digests, &mut st.queue);
        self.push(st)
    }

    fn ping_reply(&self, p: &Pdu) -> Result<(), String> {
        let mut out = Pdu::new(Opcode::NopOut);
        out.set_immediate(true);
        out.set_flags(pdu::FLAG_FINAL);
        out.set_itt(pdu::RESERVED_TAG);
        out.set_lun(p.lun());
        out.set_u32(pdu::OFF_20, p.u32_at(pdu::OFF_20));
        let mut st = self.lock_state();
        out.set_u32(pdu::OFF_24, st.cmd_sn);
        out.set_u32(pdu::OFF_28, st.exp_stat_sn);
        out.encode_into(self.digests, &mut st.queue);
        self.push(st)
    }
}

/// The keeper: reads while no command waits (NOP-In pings, a closed
/// connection, the target's async messages) and keeps an idle connection
/// alive; while commands wait, their callers read and it only looks in
/// every tick.
fn keep(inner: &Inner) {
    loop {
        let idle = {
            let st = inner.lock_state();
            if st.down.is_some() {
                return;
            }
            st.tasks.is_empty()
        };
        if idle && !inner.leader.load(Ordering::Acquire) {
            // Wakes as soon as anything comes (or the socket is shut down).
            inner.socket_readable(inner.tick);
        } else {
            std::thread::park_timeout(inner.tick);
        }
        if inner.lock_state().down.is_some() {
            return;
        }
        if !inner.try_lead() {
            continue;
        }
        let r = (|| {
            let mut rx = inner.lock_rx();
            while !rx.reader.buffer().is_empty() || inner.socket_readable(Duration::ZERO) {
                inner.read_one(&mut rx)?;
            }
            inner.idle_check(&mut rx)
        })();
        if let Err(why) = r {
            inner.fail(why);
        }
        inner.release_lead();
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The reads of one PDU: a read timeout before its first byte means idle
/// and is passed on; inside the PDU, reads go on through timeouts for the
/// session's patience (a segment stalled by a lost packet is not a dead
/// connection).
struct PduReader<'a> {
    r: &'a mut BufReader<TcpStream>,
    /// Every read skips the connection's buffer once it is empty. Set after
    /// a large data segment, as another is likely next: buffering its
    /// header would pull the first `READ_BUFFER` bytes of its segment into
    /// the buffer, to be copied a second time.
    direct: bool,
    started: bool,
    patience: Duration,
    until: Option<Instant>,
}

/// Reads this large or larger skip the connection's buffer once it is
/// empty: a Data-In segment goes from the socket straight into the caller's
/// buffer, not through the reader's and a second copy.
const DIRECT_READ: usize = 4096;

/// A data segment this large or larger makes the next PDU's reads direct.
const BIG_SEGMENT: usize = 64 << 10;

impl Read for PduReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let got = if (self.direct || buf.len() >= DIRECT_READ) && self.r.buffer().is_empty() {
                recv_all(self.r.get_ref(), buf)
            } else {
                self.r.read(buf)
            };
            match got {
                Ok(n) => {
                    self.started |= n > 0;
                    return Ok(n);
                }
                Err(e) if self.started && is_timeout(&e) => {
                    let until = *self
                        .until
                        .get_or_insert_with(|| Instant::now() + self.patience);
                    if Instant::now() >= until {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One `recv` that waits for all of `buf` (MSG_WAITALL), so a large segment
/// takes one call, not one per arriving burst; the socket's read timeout
/// still ends it early, with what came or with a timeout error. EINTR is
/// passed on, as `Read::read` does, for `read_exact` to retry.
fn recv_all(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes for the
    // whole call, and the descriptor is the open socket we borrow.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_WAITALL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Acts on one PDU from the target whose header was read; reads its data
/// segment. An error ends the connection.
fn take_pdu(inner: &Inner, reader: &mut impl Read, mut p: Pdu, len: usize) -> Result<(), String> {
    if p.opcode() == Some(Opcode::DataIn) {
        return data_in(inner, reader, &p, len);
    }
    p.data = pdu::read_segment_vec(reader, inner.digests, len).map_err(|e| e.to_string())?;
    let mut st = inner.lock_state();
    inner.note(&mut st, &p);
    match p.opcode() {
        Some(Opcode::NopIn) => {
            drop(st);
            if p.u32_at(pdu::OFF_20) != pdu::RESERVED_TAG {
                inner
                    .ping_reply(&p)
                    .map_err(|e| format!("answering a ping: {e}"))?;
            }
            // Else the answer to our keepalive: noted above.
        }
        Some(Opcode::AsyncMessage) => {
            let event = p.bhs[pdu::OFF_36];
            if matches!(
                event,
                ASYNC_REQUEST_LOGOUT | ASYNC_DROP_CONNECTION | ASYNC_DROP_ALL
            ) {
                return Err(format!(
                    "the target is closing the connection (async event {event})"
                ));
            }
        }
        Some(Opcode::Reject) => {
            return Err(format!(
                "the target rejected a PDU (reason {:#04x})",
                p.bhs[pdu::OFF_B2]
            ));
        }
        Some(Opcode::R2t) => {
            let Some(task) = st.tasks.get(&p.itt()).cloned() else {
                log::debug!("iSCSI {}: {p:?} for no waiting task", inner.addr);
                return Ok(());
            };
            drop(st);
            task.lock().r2ts.push_back(R2t {
                ttt: p.u32_at(pdu::OFF_20),
                off: p.u32_at(pdu::OFF_40) as usize,
                want: p.u32_at(pdu::OFF_44) as usize,
            });
            task.wake();
        }
        Some(Opcode::ScsiResponse) => {
            let Some(task) = st.tasks.remove(&p.itt()) else {
                log::debug!("iSCSI {}: {p:?} for no waiting task", inner.addr);
                return Ok(());
            };
            drop(st);
            let end = if p.bhs[pdu::OFF_B2] != RESPONSE_COMPLETED {
                End::Failed(p.bhs[pdu::OFF_B2])
            } else {
                let sense = match p.data.get(..2) {
                    Some(l) => {
                        let n = u16::from_be_bytes([l[0], l[1]]) as usize;
                        let end = (2 + n).min(p.data.len());
                        p.data[2..end].to_vec()
                    }
                    None => Vec::new(),
                };
                End::Done(Completion {
                    status: p.bhs[pdu::OFF_B3],
                    sense,
                    residual: residual(&p),
                })
            };
            task.end(end);
        }
        Some(Opcode::TaskMgmtResponse) => {
            // We send no task management requests.
            if st.tasks.contains_key(&p.itt()) {
                return Err(format!(
                    "protocol error: unexpected {p:?} during a SCSI command"
                ));
            }
            log::debug!("iSCSI {}: {p:?} for no waiting task", inner.addr);
        }
        Some(Opcode::LogoutResponse) => return Err("logged out".to_string()),
        _ => return Err(format!("unexpected {p:?} from the target")),
    }
    Ok(())
}

/// A Data-In: its data goes from the socket straight into the waiting
/// caller's buffer; with the status bit it ends the command.
fn data_in<R: Read>(inner: &Inner, reader: &mut R, p: &Pdu, len: usize) -> Result<(), String> {
    let last = p.flags() & pdu::DATA_IN_STATUS != 0;
    let task = {
        let mut st = inner.lock_state();
        inner.note(&mut st, p);
        if last {
            st.tasks.remove(&p.itt())
        } else {
            st.tasks.get(&p.itt()).cloned()
        }
    };
    let skip = |reader: &mut R| {
        pdu::read_segment_vec(reader, inner.digests, len)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let Some(task) = task else {
        log::debug!("iSCSI {}: {p:?} for no waiting task", inner.addr);
        return skip(reader);
    };
    let mut st = task.lock();
    if st.gone {
        drop(st);
        return skip(reader);
    }
    let placed = match &st.read_to {
        None => Err("protocol error: Data-In for a command without read data".to_string()),
        Some(to) => {
            let off = p.u32_at(pdu::OFF_40) as usize;
            match off.checked_add(len).filter(|&e| e <= to.len) {
                None => Err(format!(
                    "protocol error: Data-In of {len} bytes at offset {off} overruns the {}-byte buffer",
                    to.len
                )),
                Some(_) => {
                    // SAFETY: `to` is the waiting caller's buffer of
                    // `to.len` bytes, `off + len` is within it (checked
                    // above), and the caller does not touch it until it has
                    // taken `read_to` back under the task lock, which we
                    // hold (see `Task`).
                    let dst = unsafe { std::slice::from_raw_parts_mut(to.ptr.add(off), len) };
                    pdu::read_segment(reader, inner.digests, dst).map_err(|e| e.to_string())
                }
            }
        }
    };
    let end = match placed {
        Ok(()) if last => End::Done(Completion {
            status: p.bhs[pdu::OFF_B3],
            sense: Vec::new(),
            residual: residual(p),
        }),
        Ok(()) => return Ok(()),
        // Removed from the routing table above, so the failure that follows
        // would not reach it: end it here.
        Err(why) if last => {
            st.end.get_or_insert(End::Down(why.clone()));
            drop(st);
            task.wake();
            return Err(why);
        }
        Err(why) => return Err(why),
    };
    st.end.get_or_insert(end);
    drop(st);
    task.wake();
    Ok(())
}

fn residual(p: &Pdu) -> i64 {
    let r = i64::from(p.u32_at(pdu::OFF_44));
    if p.flags() & RESIDUAL_UNDERFLOW != 0 {
        r
    } else if p.flags() & RESIDUAL_OVERFLOW != 0 {
        -r
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::{login, login::isid, IscsiLun, LoginOptions};
    use crate::target::{LunConfig, TargetConfig, TargetServer};
    use crate::{BlockDev, FileDev, OpenOptions};

    const IQN: &str = "iqn.2026-11.org.ssv.test:session";
    const SIZE: u64 = 64 << 20;

    fn target(dir: &std::path::Path) -> TargetServer {
        let dev =
            FileDev::open(dir.join("lun"), &OpenOptions::new().create_size(Some(SIZE))).unwrap();
        TargetServer::start(TargetConfig::new(
            IQN,
            vec!["127.0.0.1:0".parse().unwrap()],
            vec![LunConfig::new(1, Arc::new(dev))],
        ))
        .unwrap()
    }

    fn connect(server: &TargetServer, n: u16) -> Connection {
        let o = LoginOptions::new("iqn.2026-11.org.ssv.host:session", isid(7, n));
        login(server.portals()[0], Some(IQN), &o).unwrap()
    }

    /// Threads sharing one session, each writing and reading back its own
    /// region in sizes that take every path (queued and directly written
    /// data, one and several Data-In PDUs per read), get their own bytes:
    /// whoever reads the socket places every answer in the right buffer.
    #[test]
    fn threads_sharing_a_session_get_their_own_data() {
        let dir = tempfile::tempdir().unwrap();
        let server = target(dir.path());
        let lun = IscsiLun::open(Session::new(connect(&server, 1)), 1).unwrap();
        let sizes = [512usize, 4096, 20 << 10, 64 << 10, 1 << 20];
        std::thread::scope(|s| {
            for t in 0..12u64 {
                let lun = &lun;
                s.spawn(move || {
                    let base = t * (SIZE / 12) / 4096 * 4096;
                    for round in 0..6u64 {
                        let len = sizes[((t + round) % sizes.len() as u64) as usize];
                        let data: Vec<u8> = (0..len)
                            .map(|i| (i as u64 * 31 + t * 7 + round) as u8)
                            .collect();
                        let off = base + round * 4096;
                        lun.write_at(&data, off).unwrap();
                        let mut back = vec![0u8; len];
                        lun.read_at(&mut back, off).unwrap();
                        assert!(back == data, "thread {t} round {round}: {len} bytes differ");
                    }
                });
            }
        });
        drop(lun);
        server.stop();
    }

    /// A command whose caller is blocked reading the socket (nobody else
    /// waits) still ends at its timeout, and fails the path with why.
    #[test]
    fn a_reading_caller_keeps_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let server = target(dir.path());
        let opts = SessionOptions {
            command_timeout: Duration::from_millis(600),
            ..SessionOptions::default()
        };
        let s = Session::with_options(connect(&server, 2), opts);
        server.faults().blackhole(0, true);
        let t = Instant::now();
        let mut buf = [0u8; 36];
        let r = s.execute(
            pdu::encode_lun(1),
            &[0x12, 0, 0, 0, 36, 0],
            DataPhase::In(&mut buf),
        );
        assert!(
            matches!(&r, Err(IscsiError::PathDown { why, .. }) if why.contains("no answer")),
            "{:?}",
            r.err()
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        server.faults().blackhole(0, false);
        server.stop();
    }

    /// With no command waiting, the keeper still reads: a connection the
    /// target drops is noticed without any I/O.
    #[test]
    fn an_idle_session_notices_a_dropped_connection() {
        let dir = tempfile::tempdir().unwrap();
        let server = target(dir.path());
        let s = Session::new(connect(&server, 3));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(s.down(), None);
        server.faults().drop_connections(0);
        let t = Instant::now();
        while s.down().is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "a dropped connection went unnoticed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server.stop();
    }
}
