//! One connection's byte stream: PDUs in and out with the negotiated
//! digests, reads that wake up every [`TICK`] to notice stop requests and
//! faults, and the blackhole fault (neither read nor write while it is on).
//! Login uses a whole [`Wire`]; full feature phase splits it into the
//! reading half (the connection thread) and the writing half (shared by
//! whoever answers, behind a lock).

use super::faults::Faults;
use super::registry::ConnCtl;
use super::{ConnError, TICK};
use crate::iscsi::pdu::{self, Digests, Pdu, PduError, BHS_LEN, MAX_DATA_SEGMENT};
use crate::vectored::write_all_vectored;
use std::io::{self, BufReader, BufWriter, IoSlice, Read, Write};
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
    rx: WireRx,
    tx: WireTx,
    pub peer: SocketAddr,
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
            ctl: ctl.clone(),
            faults: faults.clone(),
            consumed: 0,
            mark: 0,
            last_progress: Instant::now(),
        };
        Ok(Wire {
            rx: WireRx {
                reader,
                digests: Digests::default(),
            },
            tx: WireTx {
                writer: BufWriter::with_capacity(BUFFER, stream),
                ctl,
                faults,
                digests: Digests::default(),
                peer,
                local,
            },
            peer,
        })
    }

    pub fn recv(&mut self, max_data: u32) -> Result<Option<Pdu>, ConnError> {
        self.rx.recv(max_data)
    }

    pub fn send(&mut self, p: &Pdu) -> Result<(), ConnError> {
        self.tx.send(p)
    }

    pub fn flush(&mut self) -> Result<(), ConnError> {
        self.tx.flush()
    }

    /// The two halves for full feature phase, with the negotiated digests.
    pub fn split(self, digests: Digests) -> (WireRx, WireTx) {
        let (mut rx, mut tx) = (self.rx, self.tx);
        rx.digests = digests;
        tx.digests = digests;
        (rx, tx)
    }
}

/// The reading half.
pub(crate) struct WireRx {
    reader: TickReader,
    digests: Digests,
}

impl WireRx {
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
}

/// The writing half, with what answering needs besides the bytes: the
/// portal's faults and whether the connection is closing.
pub(crate) struct WireTx {
    writer: BufWriter<TcpStream>,
    ctl: Arc<ConnCtl>,
    faults: Faults,
    digests: Digests,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl WireTx {
    fn portal(&self) -> usize {
        self.ctl.portal
    }

    /// Queues a PDU; [`WireTx::flush`] sends what is queued.
    pub fn send(&mut self, p: &Pdu) -> Result<(), ConnError> {
        if !p.ahs.is_empty() {
            // The target never sends an AHS; the codec handles one anyway.
            self.hold_while_blackholed()?;
            p.write_to(&mut self.writer, self.digests)?;
            return Ok(());
        }
        self.send_parts(&p.bhs, &p.data)
    }

    /// Queues a PDU given as its header and a borrowed data segment, so a
    /// Data-In goes from the read buffer to the socket without a copy of
    /// its own (large segments bypass the write buffer in one writev).
    pub fn send_parts(&mut self, bhs: &[u8; BHS_LEN], data: &[u8]) -> Result<(), ConnError> {
        self.hold_while_blackholed()?;
        let len = data.len().min(MAX_DATA_SEGMENT as usize);
        let data = &data[..len];
        let mut head = [0u8; BHS_LEN + 4];
        head[..BHS_LEN].copy_from_slice(bhs);
        head[pdu::OFF_AHS_LEN] = 0;
        head[pdu::OFF_DATA_LEN..pdu::OFF_DATA_LEN + 3]
            .copy_from_slice(&(len as u32).to_be_bytes()[1..]);
        let mut head_len = BHS_LEN;
        if self.digests.header {
            let c = crc32c::crc32c(&head[..BHS_LEN]);
            head[BHS_LEN..].copy_from_slice(&c.to_le_bytes());
            head_len += 4;
        }
        // Padding to a 4-byte boundary, then the data digest (over the
        // data and its padding) when negotiated.
        let pad = pdu::pad4(len) - len;
        let mut tail = [0u8; 3 + 4];
        let mut tail_len = pad;
        if len > 0 && self.digests.data {
            let c = crc32c::crc32c_append(crc32c::crc32c(data), &tail[..pad]);
            tail[pad..pad + 4].copy_from_slice(&c.to_le_bytes());
            tail_len += 4;
        }
        let mut parts = [
            IoSlice::new(&head[..head_len]),
            IoSlice::new(data),
            IoSlice::new(&tail[..tail_len]),
        ];
        write_all_vectored(&mut self.writer, &mut parts)?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), ConnError> {
        self.hold_while_blackholed()?;
        self.writer.flush()?;
        Ok(())
    }

    fn hold_while_blackholed(&self) -> Result<(), ConnError> {
        while self.faults.blackholed(self.portal()) {
            self.check_open()?;
            std::thread::sleep(TICK);
        }
        self.check_open()
    }

    fn check_open(&self) -> Result<(), ConnError> {
        check_open(&self.ctl)
    }

    /// Sleeps for the portal's delay fault, if any, in ticks so a close
    /// request still ends the connection promptly. Needs no `&mut`: those
    /// who answer wait here without holding the writing half.
    pub fn fault_delay(ctl: &ConnCtl, faults: &Faults) -> Result<(), ConnError> {
        let delay = faults.delay(ctl.portal);
        if delay.is_zero() {
            // The common case: no clock reads on every answer.
            return check_open(ctl);
        }
        let until = Instant::now() + delay;
        loop {
            check_open(ctl)?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(TICK));
        }
    }
}

fn check_open(ctl: &ConnCtl) -> Result<(), ConnError> {
    if ctl.closing() {
        return Err(ConnError::Closed("connection closed on request"));
    }
    Ok(())
}
