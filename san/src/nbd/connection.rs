//! One connection after the handshake: a reader (the connection's thread)
//! decodes requests, answers the malformed ones itself and queues the
//! others; workers (started on demand, at most `workers` per connection,
//! scoped to the connection thread) run them against the device and send
//! their replies, one at a time under the writer's lock, in completion
//! order, so requests in flight on one connection overlap.

use super::export::Export;
use super::handshake;
use super::ops::{self, Span, BUF_ALIGN};
use super::proto::{self, Request, SimpleReply};
use super::queue::{Job, Queue};
use super::registry::ConnCtl;
use super::server::Shared;
use super::stream::Stream;
use super::ConnError;
use crate::vectored::write_all_vectored;
use crate::AlignedBuf;
use std::io::{self, IoSlice, Read};
use std::sync::{Mutex, PoisonError};
use std::thread::{self, Scope};

/// Serves one accepted connection until it ends.
pub(crate) fn serve(sh: &Shared, mut s: Stream, ctl: &ConnCtl) {
    let id = ctl.id;
    let export = match handshake::negotiate(sh, &mut s, ctl) {
        Ok(Some(e)) => e,
        Ok(None) => {
            log::debug!("NBD connection {id}: the client aborted the handshake");
            return;
        }
        Err(e) => {
            if ctl.closing() {
                log::debug!("NBD connection {id}: closed by the server during the handshake");
            } else {
                log::info!("NBD connection {id}: handshake failed: {e}");
            }
            return;
        }
    };
    log::info!("NBD connection {id}: serving export {:?}", export.name);
    let setup = s
        .set_read_timeout(None)
        .and_then(|()| s.set_write_timeout(None))
        .and_then(|()| s.try_clone());
    let writer = match setup {
        Ok(w) => w,
        Err(e) => {
            log::warn!("NBD connection {id}: cannot set up the socket: {e}");
            return;
        }
    };
    let conn = Conn {
        export: &export,
        ctl,
        writer: Mutex::new(writer),
        queue: Queue::default(),
        max_workers: sh.workers,
    };
    let end = thread::scope(|scope| {
        let _closer = Closer(&conn);
        conn.read_loop(&mut s, scope)
    });
    match end {
        Ok(End::Disc) => log::info!("NBD connection {id}: the client disconnected"),
        Ok(End::Eof) => log::info!("NBD connection {id}: the client closed the connection"),
        Err(_) | Ok(End::Closed) if ctl.closing() => {
            log::info!("NBD connection {id}: closed by the server")
        }
        Ok(End::Closed) => log::info!("NBD connection {id}: closed"),
        Err(e) => log::info!("NBD connection {id}: ended: {e}"),
    }
}

enum End {
    /// NBD_CMD_DISC.
    Disc,
    /// The client closed its side.
    Eof,
    /// The queue was closed (a worker failed, or the server closes).
    Closed,
}

/// What the reader decided about a request.
enum Check {
    Disc,
    /// Answer with this error without running it.
    Reject(u32),
    /// Run it; it holds `cost` bytes of the budget.
    Run {
        cost: usize,
    },
}

struct Conn<'a> {
    export: &'a Export,
    ctl: &'a ConnCtl,
    writer: Mutex<Stream>,
    queue: Queue,
    max_workers: usize,
}

/// Closes the queue when the reader leaves the workers' scope, by a return
/// or a panic, so the scope can join them: queued requests still run
/// unless the server is closing the connection or something panicked.
struct Closer<'c, 'a>(&'c Conn<'a>);

impl Drop for Closer<'_, '_> {
    fn drop(&mut self) {
        let drain = !thread::panicking() && !self.0.ctl.closing();
        self.0.queue.close(drain);
    }
}

/// Gives a job's budget back when it is done, even by a panic, which also
/// ends the connection.
struct Running<'c, 'a>(&'c Conn<'a>, usize);

impl Drop for Running<'_, '_> {
    fn drop(&mut self) {
        self.0.queue.done(self.1);
        if thread::panicking() {
            self.0.fail("a worker panicked (a server bug)");
        }
    }
}

impl<'a> Conn<'a> {
    fn fail(&self, why: &str) {
        log::debug!("NBD connection {}: ending it: {why}", self.ctl.id);
        self.queue.close(false);
        self.ctl.close();
    }

    /// Sends a simple reply, with `data` after it (reads only).
    fn reply(&self, cookie: u64, error: u32, data: &[u8]) -> io::Result<()> {
        let h = proto::encode_simple_reply(&SimpleReply { error, cookie });
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        write_all_vectored(&mut *w, &mut [IoSlice::new(&h), IoSlice::new(data)])
    }

    fn read_loop<'s>(&'s self, s: &mut Stream, scope: &'s Scope<'s, '_>) -> Result<End, ConnError> {
        loop {
            let mut h = [0u8; proto::REQUEST_LEN];
            match s.read_exact(&mut h) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(End::Eof),
                Err(e) => return Err(e.into()),
            }
            let req = proto::decode_request(&h)?;
            let cost = match self.check(&req) {
                Check::Disc => return Ok(End::Disc),
                Check::Reject(error) => {
                    if req.kind == proto::CMD_WRITE {
                        skip(s, u64::from(req.len))?;
                    }
                    log::debug!(
                        "NBD connection {}: refusing {req:?} with error {error}",
                        self.ctl.id
                    );
                    self.reply(req.cookie, error, &[])?;
                    continue;
                }
                Check::Run { cost } => cost,
            };
            if !self.queue.admit(cost) {
                if req.kind == proto::CMD_WRITE {
                    skip(s, u64::from(req.len))?;
                }
                return Ok(End::Closed);
            }
            let payload = if req.kind == proto::CMD_WRITE && req.len > 0 {
                match read_payload(s, &req, self.export.sector()) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.queue.done(cost);
                        return Err(e.into());
                    }
                }
            } else {
                None
            };
            let job = Job { req, payload, cost };
            if self.queue.push(job, self.max_workers) {
                let spawned = thread::Builder::new()
                    .name(format!("nbd-worker-{}", self.ctl.id))
                    .spawn_scoped(scope, move || self.work());
                if let Err(e) = spawned {
                    self.queue.worker_failed();
                    return Err(ConnError::Spawn(e));
                }
            }
        }
    }

    fn check(&self, r: &Request) -> Check {
        let e = self.export;
        let allowed = match r.kind {
            proto::CMD_READ | proto::CMD_WRITE | proto::CMD_FLUSH | proto::CMD_TRIM => {
                proto::CMD_FLAG_FUA
            }
            proto::CMD_WRITE_ZEROES => proto::CMD_FLAG_FUA | proto::CMD_FLAG_NO_HOLE,
            proto::CMD_DISC => return Check::Disc,
            _ => return Check::Reject(proto::EINVAL),
        };
        if r.flags & !allowed != 0 {
            return Check::Reject(proto::EINVAL);
        }
        let writes = matches!(
            r.kind,
            proto::CMD_WRITE | proto::CMD_TRIM | proto::CMD_WRITE_ZEROES
        );
        if writes && e.read_only {
            return Check::Reject(proto::EPERM);
        }
        let data = matches!(r.kind, proto::CMD_READ | proto::CMD_WRITE);
        if data && r.len > proto::MAX_REQUEST {
            return Check::Reject(proto::EINVAL);
        }
        if r.kind == proto::CMD_FLUSH {
            return Check::Run { cost: 0 };
        }
        let inside = r
            .offset
            .checked_add(u64::from(r.len))
            .is_some_and(|end| end <= e.size());
        if !inside {
            let write = matches!(r.kind, proto::CMD_WRITE | proto::CMD_WRITE_ZEROES);
            return Check::Reject(if write { proto::ENOSPC } else { proto::EINVAL });
        }
        let cost = if data {
            Span::new(r.offset, r.len, e.sector()).len
        } else {
            0
        };
        Check::Run { cost }
    }

    fn work(&self) {
        while let Some(job) = self.queue.next() {
            let _running = Running(self, job.cost);
            if self.ctl.closing() {
                continue;
            }
            let cookie = job.req.cookie;
            if let Err(e) = self.run(job) {
                self.fail(&format!(
                    "cannot send the reply to request {cookie:#x}: {e}"
                ));
            }
        }
    }

    fn run(&self, job: Job) -> io::Result<()> {
        let r = job.req;
        let e = self.export;
        let fua = r.flags & proto::CMD_FLAG_FUA != 0;
        let done = match r.kind {
            proto::CMD_READ => {
                return match ops::read(e, r.offset, r.len) {
                    Ok((buf, head)) => self.reply(r.cookie, 0, &buf[head..head + r.len as usize]),
                    Err(error) => self.reply(r.cookie, error, &[]),
                };
            }
            proto::CMD_WRITE => match job.payload {
                Some(mut buf) => ops::write(e, &mut buf, r.offset, r.len, fua),
                None if fua => ops::flush(e),
                None => Ok(()),
            },
            proto::CMD_FLUSH => ops::flush(e),
            proto::CMD_TRIM => ops::trim(e, r.offset, r.len, fua),
            proto::CMD_WRITE_ZEROES => {
                let no_hole = r.flags & proto::CMD_FLAG_NO_HOLE != 0;
                ops::write_zeroes(e, r.offset, r.len, no_hole, fua)
            }
            _ => Err(proto::EINVAL),
        };
        self.reply(r.cookie, done.err().unwrap_or(0), &[])
    }
}

/// Reads a write's payload into a buffer laid out as its sector span.
fn read_payload(s: &mut Stream, r: &Request, sector: u64) -> io::Result<AlignedBuf> {
    let span = Span::new(r.offset, r.len, sector);
    let mut buf = AlignedBuf::new(span.len, BUF_ALIGN);
    s.read_exact(&mut buf[span.head..span.head + r.len as usize])?;
    Ok(buf)
}

/// Reads and drops the payload of a refused write.
fn skip(s: &mut Stream, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut s.by_ref().take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
