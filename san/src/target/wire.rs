//! One connection's byte stream: PDUs in and out with the negotiated
//! digests, reads that wake up every [`TICK`] to notice stop requests and
//! faults, and the blackhole fault (neither read nor write while it is on).

use super::faults::Faults;
use super::registry::ConnCtl;
use super::{ConnError, TICK};
use crate::iscsi::pdu::{Digests, Pdu, PduError};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A peer that stops in the middle of a PDU for this long is dropped.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// A peer that does not take our bytes for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const BUFFER: usize = 256 << 10;

/// The reading half: wakes every tick; between PDUs a tick with no data
/// is reported as `TimedOut` so the caller can run its timers.
struct TickReader {
    inner: BufReader<TcpStream>,
    ctl: Arc<ConnCtl>,
    faults: Faults,
    /// Bytes handed out so far, and at the start of the current PDU.
    consumed: u64,
    mark: u64,
    last_progress: Instant,
}

impl Read for TickReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.ctl.closing() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed by the target",
                ));
            }
            if self.faults.blackholed(self.ctl.portal) {
                std::thread::sleep(TICK);
                self.last_progress = Instant::now();
                continue;
            }
            match self.inner.read(buf) {
                Ok(n) => {
                    self.consumed += n as u64;
                    self.last_progress = Instant::now();
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.consumed == self.mark {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    if self.last_progress.elapsed() > STALL_LIMIT {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the peer stalled inside a PDU",
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

pub(crate) struct Wire {
    reader: TickReader,
    writer: BufWriter<TcpStream>,
    pub digests: Digests,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl Wire {
    pub fn new(stream: TcpStream, ctl: Arc<ConnCtl>, faults: Faults) -> io::Result<Wire> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TICK))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let reader = TickReader {
            inner: BufReader::with_capacity(BUFFER, stream.try_clone()?),
            ctl,
            faults,
            consumed: 0,
            mark: 0,
            last_progress: Instant::now(),
        };
        Ok(Wire {
            reader,
            writer: BufWriter::with_capacity(BUFFER, stream),
            digests: Digests::default(),
            peer,
            local,
        })
    }

    pub fn portal(&self) -> usize {
        self.reader.ctl.portal
    }

    /// The next PDU, or `None` after a tick with nothing to read.
    pub fn recv(&mut self, max_data: u32) -> Result<Option<Pdu>, ConnError> {
        self.reader.mark = self.reader.consumed;
        let at_boundary = |r: &TickReader| r.consumed == r.mark;
        match Pdu::read_from(&mut self.reader, self.digests, max_data) {
            Ok(p) => Ok(Some(p)),
            Err(PduError::Timeout) if at_boundary(&self.reader) => Ok(None),
            Err(PduError::Io(e))
                if e.kind() == io::ErrorKind::TimedOut && at_boundary(&self.reader) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Queues a PDU; [`Wire::flush`] sends what is queued.
    pub fn send(&mut self, p: &Pdu) -> Result<(), ConnError> {
        self.hold_while_blackholed()?;
        p.write_to(&mut self.writer, self.digests)?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), ConnError> {
        self.hold_while_blackholed()?;
        self.writer.flush()?;
        Ok(())
    }

    fn hold_while_blackholed(&self) -> Result<(), ConnError> {
        while self.reader.faults.blackholed(self.portal()) {
            self.check_open()?;
            std::thread::sleep(TICK);
        }
        self.check_open()
    }

    pub fn check_open(&self) -> Result<(), ConnError> {
        if self.reader.ctl.closing() {
            return Err(ConnError::Closed("connection closed on request"));
        }
        Ok(())
    }

    /// Sleeps for the portal's delay fault, if any, in ticks so a close
    /// request still ends the connection promptly.
    pub fn fault_delay(&self) -> Result<(), ConnError> {
        let until = Instant::now() + self.reader.faults.delay(self.portal());
        loop {
            self.check_open()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(TICK));
        }
    }
}
