//! The workers of one connection and what they share with its connection
//! thread. The connection thread reads PDUs, gathers each command's data
//! and queues the command in the [`Book`]; workers (started on demand, a
//! bounded number, see `book.rs`) run commands against their LU and answer
//! through the [`Sender`], so commands on one connection overlap. Workers
//! live inside the connection thread's scope: the connection ends only
//! when all of them have.

use super::book::{Book, Job};
use super::buf::IoBuf;
use super::nexus::Nexus;
use super::registry::ConnCtl;
use super::response::{self, Limits};
use super::scsi::{self, Command, DataIn, Outcome, OPTIMAL_TRANSFER_BYTES};
use super::sender::Sender;
use super::server::Target;
use super::ConnError;
use crate::scsi::Sense;
use std::sync::{Arc, Mutex, PoisonError};

/// A worker keeps its last read buffer up to this size for the next read
/// (larger ones are freed: a worker must not hold 8 MiB for good).
const KEEP_BUFFER: usize = OPTIMAL_TRANSFER_BYTES as usize;

pub(crate) struct Pool<'a> {
    /// The session's target; `None` in a discovery session.
    pub t: Option<&'a Target>,
    pub tpgt: u16,
    /// `None` in a discovery session, which has no SCSI tasks.
    pub nexus: Option<Nexus>,
    pub limits: Limits,
    pub sender: Sender,
    pub book: Book,
    ctl: Arc<ConnCtl>,
    /// Why a worker ended the connection, for the log.
    failure: Mutex<Option<ConnError>>,
}

impl<'a> Pool<'a> {
    pub fn new(
        t: Option<&'a Target>,
        tpgt: u16,
        nexus: Option<Nexus>,
        limits: Limits,
        sender: Sender,
        book: Book,
        ctl: Arc<ConnCtl>,
    ) -> Pool<'a> {
        Pool {
            t,
            tpgt,
            nexus,
            limits,
            sender,
            book,
            ctl,
            failure: Mutex::new(None),
        }
    }

    /// Ends the connection from a worker: queued tasks are dropped and the
    /// socket is shut down, which wakes the connection thread.
    pub fn fail(&self, e: ConnError) {
        log::debug!("connection {}: a worker ends it: {e}", self.ctl.id);
        let mut f = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if f.is_none() {
            *f = Some(e);
        }
        drop(f);
        self.book.close(false);
        self.ctl.close();
    }

    pub fn take_failure(&self) -> Option<ConnError> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Closes the book when the connection thread leaves the workers' scope,
/// by a return or by a panic, so the scope can join them: after a return,
/// queued tasks still run (unless the connection is closing); after a
/// panic, they are dropped.
pub(crate) struct Closer<'p, 'a>(pub &'p Pool<'a>);

impl Drop for Closer<'_, '_> {
    fn drop(&mut self) {
        let drain = !std::thread::panicking() && !self.0.ctl.closing();
        self.0.book.close(drain);
    }
}

/// One worker: runs jobs until the book says stop.
pub(crate) fn work(pool: &Pool<'_>) {
    let mut spare: Option<IoBuf> = None;
    while let Some(job) = pool.book.next() {
        let mut running = Running {
            pool,
            job: &job,
            answered: false,
        };
        let out = run(pool, &job, &mut spare);
        if let Err(e) = answer(pool, &out, &mut running) {
            pool.fail(e);
        }
        drop(running);
        if let DataIn::Buf(b) = out.data {
            if b.capacity() <= KEEP_BUFFER {
                spare = Some(b);
            }
        }
    }
}

/// A job between `Book::next` and its answer. Dropped unanswered (an
/// error before sending, or a panic), it still leaves the book, so nobody
/// waits for it forever; a panic also ends the connection.
struct Running<'p, 'a> {
    pool: &'p Pool<'a>,
    job: &'p Job,
    answered: bool,
}

impl Drop for Running<'_, '_> {
    fn drop(&mut self) {
        if !self.answered {
            self.pool.book.finish(self.job.itt, self.job.attr);
        }
        if std::thread::panicking() {
            self.pool
                .fail(ConnError::Closed("a worker panicked (a target bug)"));
        }
    }
}

fn run(pool: &Pool<'_>, job: &Job, spare: &mut Option<IoBuf>) -> Outcome {
    let (Some(t), Some(nexus)) = (pool.t, &pool.nexus) else {
        // The connection thread refuses SCSI commands without a nexus.
        return Outcome::check(Sense::LUN_NOT_SUPPORTED);
    };
    if let Some(sense) = job.refused {
        return Outcome::check(sense);
    }
    if let Some((status, sense)) = job.injected {
        return Outcome {
            status,
            sense,
            data: DataIn::Bytes(Vec::new()),
            wanted_out: 0,
        };
    }
    let cmd = Command {
        lun: job.lun,
        cdb: &job.cdb,
        data_out: &job.data,
        nexus,
        epoch: job.epoch,
    };
    scsi::execute(t, pool.tpgt, &cmd, spare)
}

/// Sends the answer. The task leaves the book under the writing lock, just
/// before its answer is written: its tag is free again before the
/// initiator can see the answer and reuse it, and the window in the answer
/// already has room for the next command.
fn answer(pool: &Pool<'_>, out: &Outcome, running: &mut Running<'_, '_>) -> Result<(), ConnError> {
    pool.sender.fault_delay()?;
    let job = running.job;
    pool.sender.send(|tx| {
        let w = pool.book.finish(job.itt, job.attr);
        running.answered = true;
        response::send(tx, w, job, out, pool.limits)
    })
}
