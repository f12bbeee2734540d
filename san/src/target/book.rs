//! The tasks of one connection, from the command's acceptance until its
//! answer is on its way, and the CmdSN window they take (RFC 7143 §4.2.2.1).
//! A task first waits for its Data-Out (the connection thread keeps its
//! transfer state), then is queued, then runs on a worker. The window
//! shrinks by every non-immediate task in any of those stages, so an
//! initiator never has more than the queue depth of commands in flight.
//!
//! The queue honours task attributes: an ORDERED task starts when nothing
//! else runs and nothing starts while it runs; HEAD OF QUEUE goes first;
//! every other attribute is SIMPLE. The connection thread also waits here
//! for running tasks before task management and Logout answer.

use super::buf::IoBuf;
use super::lu::Epoch;
use super::registry::ConnCtl;
use super::{ConnError, TICK};
use crate::iscsi::pdu::{sn_le, sn_lt, RESERVED_TAG};
use crate::scsi::Sense;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Immediate commands do not count against the CmdSN window; this many
/// more tasks than the queue depth may be in flight before we give up.
const IMMEDIATE_SLACK: usize = 8;

/// Workers per connection at most. Each blocks in its device call, so this
/// bounds the I/O a connection keeps in flight; past it, more threads cost
/// context switches and gain nothing on a few CPUs (4 KiB reads at depth 32
/// on O_DIRECT ran fastest with 16 workers, as tgtd has 16 per LU).
const MAX_WORKERS: usize = 16;

/// SCSI Command byte 1, bits 0-2: task attribute.
const ATTR_MASK: u8 = 0x07;
const ATTR_ORDERED: u8 = 2;
const ATTR_HEAD_OF_QUEUE: u8 = 3;

/// ExpCmdSN and MaxCmdSN as an answer carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SAM task attribute, as far as the queue cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attr {
    Simple,
    Ordered,
    HeadOfQueue,
}

impl Attr {
    pub fn of_flags(flags: u8) -> Attr {
        match flags & ATTR_MASK {
            ATTR_ORDERED => Attr::Ordered,
            ATTR_HEAD_OF_QUEUE => Attr::HeadOfQueue,
            // Untagged and ACA (unsupported) run as SIMPLE.
            _ => Attr::Simple,
        }
    }
}

/// A task whose data is complete, ready to run.
pub(crate) struct Job {
    pub itt: u32,
    pub lun: u16,
    pub cdb: [u8; 16],
    pub read: bool,
    pub edtl: u32,
    pub data: IoBuf,
    /// Ends in CHECK CONDITION with this sense without running: more
    /// Data-Out than we buffer was announced, or some of it was lost.
    pub refused: Option<Sense>,
    pub epoch: Epoch,
    pub attr: Attr,
    /// An injected answer (fault hook), taken when the task became ready.
    pub injected: Option<(u8, Option<Sense>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Data,
    Queued,
    Running,
}

struct Live {
    lun: u16,
    windowed: bool,
    stage: Stage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Open,
    /// The connection thread is done reading: run what is queued, then stop.
    Drain,
    /// The connection is closing: drop what is queued.
    Stop,
}

/// What ABORT TASK found of a task that was not waiting for data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abort {
    /// Queued: removed before it started; it gets no answer.
    Dequeued,
    /// Running: waited for; its answer has been sent.
    Finished,
    Unknown,
}

struct State {
    exp_cmd_sn: u32,
    /// Live tasks that count against the window.
    windowed: u32,
    live: HashMap<u32, Live>,
    queue: VecDeque<Job>,
    running: usize,
    /// An ORDERED task runs.
    barrier: bool,
    workers: usize,
    /// Workers waiting for a job.
    idle: usize,
    /// Connection threads waiting for tasks to finish.
    watchers: usize,
    end: End,
}

impl State {
    fn window(&self, depth: u32) -> Window {
        Window {
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self
                .exp_cmd_sn
                .wrapping_add(depth.saturating_sub(self.windowed))
                .wrapping_sub(1),
        }
    }

    fn drop_live(&mut self, itt: u32) {
        if let Some(l) = self.live.remove(&itt) {
            if l.windowed {
                self.windowed -= 1;
            }
        }
    }

    /// The next job a worker may start, if any.
    fn take(&mut self) -> Option<Job> {
        if self.barrier {
            return None;
        }
        let front = self.queue.front()?;
        if front.attr == Attr::Ordered && self.running > 0 {
            return None;
        }
        let job = self.queue.pop_front()?;
        self.running += 1;
        self.barrier = job.attr == Attr::Ordered;
        if let Some(l) = self.live.get_mut(&job.itt) {
            l.stage = Stage::Running;
        }
        Some(job)
    }

    fn running_on(&self, lun: u16) -> bool {
        self.live
            .values()
            .any(|l| l.lun == lun && l.stage == Stage::Running)
    }
}

pub(crate) struct Book {
    depth: u32,
    max_workers: usize,
    ctl: Arc<ConnCtl>,
    state: Mutex<State>,
    /// Workers wait here for jobs.
    work: Condvar,
    /// The connection thread waits here for tasks to finish.
    settled: Condvar,
}

impl Book {
    pub fn new(exp_cmd_sn: u32, depth: u32, ctl: Arc<ConnCtl>) -> Book {
        Book {
            depth,
            max_workers: (depth as usize + IMMEDIATE_SLACK).min(MAX_WORKERS),
            ctl,
            state: Mutex::new(State {
                exp_cmd_sn,
                windowed: 0,
                live: HashMap::new(),
                queue: VecDeque::new(),
                running: 0,
                barrier: false,
                workers: 0,
                idle: 0,
                watchers: 0,
                end: End::Open,
            }),
            work: Condvar::new(),
            settled: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn window(&self) -> Window {
        self.lock().window(self.depth)
    }

    /// Whether to process a request with CmdSN `sn`: non-immediate ones
    /// outside the window are silently ignored (RFC 7143 §4.2.2.1); a gap
    /// inside it cannot be filled on one connection at ERL 0, so it ends the
    /// connection. `task` (tag and LUN of a SCSI command) is registered in
    /// the same step, so no answer ever shows the window of a command
    /// counted in ExpCmdSN but not yet in flight.
    pub fn admit(
        &self,
        sn: u32,
        immediate: bool,
        task: Option<(u32, u16)>,
    ) -> Result<bool, ConnError> {
        let mut s = self.lock();
        if !immediate {
            let max = s.window(self.depth).max_cmd_sn;
            if sn == s.exp_cmd_sn && sn_le(sn, max) {
                s.exp_cmd_sn = s.exp_cmd_sn.wrapping_add(1);
            } else if sn_lt(s.exp_cmd_sn, sn) && sn_le(sn, max) {
                return Err(ConnError::Protocol(format!(
                    "CmdSN {sn} skips ahead of ExpCmdSN {}",
                    s.exp_cmd_sn
                )));
            } else {
                log::debug!(
                    "connection {}: CmdSN {sn} outside the window {}..={max}: ignored",
                    self.ctl.id,
                    s.exp_cmd_sn
                );
                return Ok(false);
            }
        }
        if let Some((itt, lun)) = task {
            if itt == RESERVED_TAG || s.live.contains_key(&itt) {
                return Err(ConnError::Protocol(format!(
                    "task tag {itt:#x} is reserved or in use"
                )));
            }
            if s.live.len() >= self.depth as usize + IMMEDIATE_SLACK {
                return Err(ConnError::Protocol("too many tasks in flight".into()));
            }
            let windowed = !immediate;
            s.live.insert(
                itt,
                Live {
                    lun,
                    windowed,
                    stage: Stage::Data,
                },
            );
            if windowed {
                s.windowed += 1;
            }
        }
        Ok(true)
    }

    /// A task that was waiting for data is gone (aborted or reset).
    pub fn forget(&self, itt: u32) {
        self.lock().drop_live(itt);
    }

    /// Queues a ready task; `true` when no worker is free to take it and
    /// the caller should start one (see [`Book::worker_started`]).
    pub fn queue(&self, job: Job) -> bool {
        let mut s = self.lock();
        if let Some(l) = s.live.get_mut(&job.itt) {
            l.stage = Stage::Queued;
        }
        if job.attr == Attr::HeadOfQueue {
            s.queue.push_front(job);
        } else {
            s.queue.push_back(job);
        }
        let short = s.queue.len() > s.idle && s.workers < self.max_workers;
        let wake = s.idle > 0;
        // Notified after unlocking: a worker woken under the lock would
        // only go back to sleep on it.
        drop(s);
        if wake {
            self.work.notify_one();
        }
        short
    }

    pub fn worker_started(&self) {
        self.lock().workers += 1;
    }

    pub fn workers(&self) -> usize {
        self.lock().workers
    }

    /// The next job for a worker; `None` when the worker should end.
    pub fn next(&self) -> Option<Job> {
        let mut s = self.lock();
        loop {
            if s.end == End::Stop {
                return None;
            }
            if let Some(job) = s.take() {
                // Wake another worker for the job behind this one.
                let wake = s.idle > 0 && !s.barrier && !s.queue.is_empty();
                drop(s);
                if wake {
                    self.work.notify_one();
                }
                return Some(job);
            }
            if s.end == End::Drain && s.queue.is_empty() {
                return None;
            }
            s.idle += 1;
            s = self.work.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.idle -= 1;
        }
    }

    /// A running task is answered (called just before its answer is
    /// written, so its tag is free before the initiator can reuse it); the
    /// window to put in that answer, which no longer counts the task.
    pub fn finish(&self, itt: u32, attr: Attr) -> Window {
        let mut s = self.lock();
        s.drop_live(itt);
        s.running -= 1;
        if attr == Attr::Ordered {
            s.barrier = false;
        }
        let w = s.window(self.depth);
        let wake = s.watchers > 0;
        drop(s);
        if wake {
            self.settled.notify_all();
        }
        w
    }

    /// Waits, as the connection thread, while `busy` holds; gives up when
    /// the connection closes.
    fn wait_while(
        &self,
        mut s: MutexGuard<'_, State>,
        busy: impl Fn(&State) -> bool,
    ) -> Result<(), ConnError> {
        while busy(&s) {
            if s.end == End::Stop || self.ctl.closing() {
                return Err(ConnError::Closed("connection closed on request"));
            }
            s.watchers += 1;
            s = self
                .settled
                .wait_timeout(s, TICK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            s.watchers -= 1;
        }
        Ok(())
    }

    /// ABORT TASK of a task not waiting for data: a queued one is removed,
    /// a running one is waited for (a running command is never interrupted).
    pub fn abort(&self, itt: u32) -> Result<Abort, ConnError> {
        let mut s = self.lock();
        let Some(stage) = s.live.get(&itt).map(|l| l.stage) else {
            return Ok(Abort::Unknown);
        };
        match stage {
            Stage::Queued => {
                s.queue.retain(|j| j.itt != itt);
                s.drop_live(itt);
                Ok(Abort::Dequeued)
            }
            Stage::Running => {
                self.wait_while(s, |s| s.live.contains_key(&itt))?;
                Ok(Abort::Finished)
            }
            Stage::Data => Ok(Abort::Unknown),
        }
    }

    /// LUN RESET on this connection: removes the queued tasks of `lun`
    /// (returned, they get no answer) and waits for its running ones.
    pub fn drain_lun(&self, lun: u16) -> Result<Vec<u32>, ConnError> {
        let mut s = self.lock();
        let mut gone = Vec::new();
        s.queue.retain(|j| {
            let hit = j.lun == lun;
            if hit {
                gone.push(j.itt);
            }
            !hit
        });
        for &itt in &gone {
            s.drop_live(itt);
        }
        self.wait_while(s, |s| s.running_on(lun))?;
        Ok(gone)
    }

    /// Waits until nothing is queued or running (before a Logout answer).
    pub fn drain(&self) -> Result<(), ConnError> {
        let s = self.lock();
        self.wait_while(s, |s| s.running > 0 || !s.queue.is_empty())
    }

    /// The connection thread is done: workers run what is queued
    /// (`drain`) or drop it, then end.
    pub fn close(&self, drain: bool) {
        let mut s = self.lock();
        if s.end != End::Stop {
            s.end = if drain { End::Drain } else { End::Stop };
        }
        if !drain {
            s.queue.clear();
        }
        self.work.notify_all();
        self.settled.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::registry::Registry;
    use std::net::{TcpListener, TcpStream};

    fn ctl() -> Arc<ConnCtl> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        Registry::default().add(0, s)
    }

    fn job(itt: u32, attr: Attr) -> Job {
        Job {
            itt,
            lun: 1,
            cdb: [0; 16],
            read: false,
            edtl: 0,
            data: IoBuf::new(),
            refused: None,
            epoch: Epoch::default(),
            attr,
            injected: None,
        }
    }

    #[test]
    fn the_window_shrinks_with_tasks_in_flight() {
        let b = Book::new(10, 2, ctl());
        assert_eq!(b.window().max_cmd_sn, 11);
        assert!(b.admit(10, false, Some((1, 1))).unwrap());
        assert_eq!(
            b.window(),
            Window {
                exp_cmd_sn: 11,
                max_cmd_sn: 11
            }
        );
        assert!(b.admit(11, false, Some((2, 1))).unwrap());
        // Full: the next CmdSN is outside the window and ignored.
        assert_eq!(b.window().max_cmd_sn, 11);
        assert!(!b.admit(12, false, Some((3, 1))).unwrap());
        // Immediate commands pass, tags must be unique.
        assert!(b.admit(12, true, Some((3, 1))).unwrap());
        assert!(b.admit(12, true, Some((3, 1))).is_err());
        b.forget(1);
        assert_eq!(b.window().max_cmd_sn, 12);
        assert!(b.queue(job(2, Attr::Simple)));
        b.worker_started();
        let j = b.next().unwrap();
        assert_eq!(b.finish(j.itt, j.attr).max_cmd_sn, 13);
        // A gap inside the window ends the connection.
        assert!(b.admit(13, false, None).is_err());
        assert!(!b.admit(14, false, None).unwrap(), "beyond MaxCmdSN");
    }

    #[test]
    fn ordered_tasks_run_alone() {
        let b = Book::new(0, 8, ctl());
        for (itt, attr) in [(1, Attr::Simple), (2, Attr::Ordered), (3, Attr::Simple)] {
            b.admit(itt - 1, false, Some((itt, 1))).unwrap();
            b.queue(job(itt, attr));
        }
        let s = b.lock().take().unwrap();
        assert_eq!(s.itt, 1);
        assert!(b.lock().take().is_none(), "ORDERED waits for task 1");
        b.finish(1, Attr::Simple);
        let o = b.lock().take().unwrap();
        assert_eq!(o.itt, 2);
        assert!(b.lock().take().is_none(), "nothing starts beside ORDERED");
        b.finish(2, Attr::Ordered);
        assert_eq!(b.lock().take().unwrap().itt, 3);
        b.admit(3, false, Some((4, 1))).unwrap();
        b.admit(4, false, Some((5, 1))).unwrap();
        b.queue(job(5, Attr::Simple));
        b.queue(job(4, Attr::HeadOfQueue));
        assert_eq!(b.lock().queue.front().map(|j| j.itt), Some(4));
        assert_eq!(b.abort(4).unwrap(), Abort::Dequeued);
        assert_eq!(b.abort(4).unwrap(), Abort::Unknown);
    }
}
