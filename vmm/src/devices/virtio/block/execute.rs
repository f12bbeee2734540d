//! Carrying out a parsed request: data moves between guest memory and the
//! disk through a bounce buffer, in chunks, so a request of any size costs
//! at most one chunk of host memory and a multi-buffer request one disk
//! call per chunk rather than one per buffer.

use super::chain::Chain;
use super::disk::{Disk, DiskError};
use super::events::Fence;
use super::request::{Range, Request};
use super::spec::{ID_BYTES, S_IOERR, S_OK};
use crate::memory::GuestMemory;
use std::sync::Arc;

/// Largest disk call the device makes.
pub const CHUNK: usize = 1 << 20;

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Complete it: `status`, and `written` bytes put in its writable
    /// buffers (the status byte not counted).
    Done { status: u8, written: u32 },
    /// The pool is full: hold it and try again later.
    NoSpace(String),
}

impl Outcome {
    fn ioerr() -> Outcome {
        Outcome::Done {
            status: S_IOERR,
            written: 0,
        }
    }
    fn ok(written: u64) -> Outcome {
        Outcome::Done {
            status: S_OK,
            written: u32::try_from(written).unwrap_or(u32::MAX),
        }
    }
}

/// Runs requests of one queue against the disk.
pub struct Executor {
    disk: Arc<dyn Disk>,
    fence: Fence,
    id: [u8; ID_BYTES],
    name: String,
    bounce: Vec<u8>,
}

enum Stop {
    Failed,
    NoSpace(String),
}

impl Executor {
    pub fn new(name: &str, disk: Arc<dyn Disk>, fence: Fence, serial: &str) -> Executor {
        // Serials longer than the field are cut; shorter ones end in NULs.
        let mut id = [0u8; ID_BYTES];
        let s = serial.as_bytes();
        let n = s.len().min(ID_BYTES);
        id[..n].copy_from_slice(&s[..n]);
        Executor {
            disk,
            fence,
            id,
            name: name.to_string(),
            bounce: Vec::new(),
        }
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Every disk call goes through here: none once the fence tripped.
    fn disk_call(
        &self,
        what: &str,
        f: impl FnOnce(&dyn Disk) -> Result<(), DiskError>,
    ) -> Result<(), Stop> {
        if self.fence.is_tripped() {
            log::debug!("disk {}: {what} refused, the disk is fenced", self.name);
            return Err(Stop::Failed);
        }
        match f(&*self.disk) {
            Ok(()) => Ok(()),
            Err(DiskError::NoSpace(e)) => Err(Stop::NoSpace(e)),
            Err(e) => {
                log::warn!("disk {}: {what} failed: {e}", self.name);
                Err(Stop::Failed)
            }
        }
    }

    fn buffer(&mut self, len: u64) -> Vec<u8> {
        let n = usize::try_from(len).unwrap_or(CHUNK).min(CHUNK);
        let mut b = std::mem::take(&mut self.bounce);
        if b.len() < n {
            b.resize(n, 0);
        }
        b
    }

    pub fn execute(&mut self, mem: &GuestMemory, chain: &Chain, req: &Request) -> Outcome {
        let res = match req {
            Request::In { offset, len } => self.read(mem, chain, *offset, *len).map(|()| *len),
            Request::Out { offset, len } => self.write(mem, chain, *offset, *len).map(|()| 0),
            Request::Flush => self.disk_call("flush", |d| d.flush()).map(|()| 0),
            Request::GetId { len } => {
                let n = (*len).min(ID_BYTES as u64) as usize;
                match chain.writable.write_at(mem, 0, &self.id[..n]) {
                    Ok(()) => Ok(n as u64),
                    Err(_) => Err(Stop::Failed),
                }
            }
            Request::Discard(ranges) => self.ranges(ranges, true).map(|()| 0),
            Request::WriteZeroes(ranges) => self.ranges(ranges, false).map(|()| 0),
        };
        match res {
            Ok(written) => Outcome::ok(written),
            Err(Stop::Failed) => Outcome::ioerr(),
            Err(Stop::NoSpace(e)) => Outcome::NoSpace(e),
        }
    }

    fn read(
        &mut self,
        mem: &GuestMemory,
        chain: &Chain,
        offset: u64,
        len: u64,
    ) -> Result<(), Stop> {
        let mut buf = self.buffer(len);
        let mut done = 0u64;
        let mut res = Ok(());
        while done < len && res.is_ok() {
            let n = (len - done).min(buf.len() as u64) as usize;
            res = self
                .disk_call("read", |d| d.read(&mut buf[..n], offset + done))
                .and_then(|()| {
                    chain
                        .writable
                        .write_at(mem, done, &buf[..n])
                        .map_err(|_| Stop::Failed)
                });
            done += n as u64;
        }
        self.bounce = buf;
        res
    }

    fn write(
        &mut self,
        mem: &GuestMemory,
        chain: &Chain,
        offset: u64,
        len: u64,
    ) -> Result<(), Stop> {
        let mut buf = self.buffer(len);
        let mut done = 0u64;
        let mut res = Ok(());
        while done < len && res.is_ok() {
            let n = (len - done).min(buf.len() as u64) as usize;
            res = chain
                .readable
                .read_at(mem, super::spec::HEADER_LEN + done, &mut buf[..n])
                .map_err(|_| Stop::Failed)
                .and_then(|()| self.disk_call("write", |d| d.write(&buf[..n], offset + done)));
            done += n as u64;
        }
        self.bounce = buf;
        res
    }

    fn ranges(&self, ranges: &[Range], discard: bool) -> Result<(), Stop> {
        for r in ranges {
            if discard {
                self.disk_call("discard", |d| d.discard(r.offset, r.len))?;
            } else {
                self.disk_call("write zeroes", |d| d.write_zeroes(r.offset, r.len, r.unmap))?;
            }
        }
        Ok(())
    }
}
