//! The writing half of a connection in full feature phase, shared by the
//! connection thread (R2T, NOP, Text, task management, Logout) and its
//! workers (command answers). An answer's PDUs go out together under one
//! lock, StatSN is taken in send order (RFC 7143 §4.2.2.2: any order of
//! responses is fine for SIMPLE tasks), and threads that queue up behind
//! each other share one flush, made by the last of them, so a burst of
//! small answers leaves in one write.

use super::book::Window;
use super::faults::Faults;
use super::registry::ConnCtl;
use super::wire::WireTx;
use super::ConnError;
use crate::iscsi::pdu::{self, Pdu, BHS_LEN};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// What an answer does with StatSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stat {
    /// A status-bearing answer: takes the next StatSN.
    Take,
    /// R2T and NOP-In pings carry the next StatSN without taking it.
    Show,
    /// Data-In without status: the field is reserved.
    Skip,
}

/// The writing half and StatSN, behind the lock.
pub(crate) struct Tx {
    wire: WireTx,
    stat_sn: u32,
}

impl Tx {
    pub fn send(&mut self, p: &Pdu) -> Result<(), ConnError> {
        self.wire.send(p)
    }

    pub fn send_parts(&mut self, bhs: &[u8; BHS_LEN], data: &[u8]) -> Result<(), ConnError> {
        self.wire.send_parts(bhs, data)
    }

    /// Fills StatSN as `stat` says, and ExpCmdSN and MaxCmdSN from `w`,
    /// which the caller read after taking the lock: the window only ever
    /// grows, so answers leave with non-decreasing values.
    pub fn stamp(&mut self, bhs: &mut [u8; BHS_LEN], w: Window, stat: Stat) {
        match stat {
            Stat::Take => {
                put_u32(bhs, pdu::OFF_24, self.stat_sn);
                self.stat_sn = self.stat_sn.wrapping_add(1);
            }
            Stat::Show => put_u32(bhs, pdu::OFF_24, self.stat_sn),
            Stat::Skip => {}
        }
        put_u32(bhs, pdu::OFF_28, w.exp_cmd_sn);
        put_u32(bhs, pdu::OFF_32, w.max_cmd_sn);
    }
}

fn put_u32(bhs: &mut [u8; BHS_LEN], off: usize, v: u32) {
    bhs[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) struct Sender {
    tx: Mutex<Tx>,
    /// Threads inside [`Sender::send`], waiting for the lock or holding it.
    senders: AtomicUsize,
    ctl: Arc<ConnCtl>,
    faults: Faults,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl Sender {
    pub fn new(wire: WireTx, stat_sn: u32, ctl: Arc<ConnCtl>, faults: Faults) -> Sender {
        Sender {
            peer: wire.peer,
            local: wire.local,
            tx: Mutex::new(Tx { wire, stat_sn }),
            senders: AtomicUsize::new(0),
            ctl,
            faults,
        }
    }

    /// Runs `f` with the writing half, then flushes unless another thread
    /// is already waiting to send: that one (or the last one after it)
    /// flushes for both. A thread counted here always reaches the check
    /// below, so the last writer of a burst always flushes it.
    pub fn send<R>(&self, f: impl FnOnce(&mut Tx) -> Result<R, ConnError>) -> Result<R, ConnError> {
        self.senders.fetch_add(1, Ordering::SeqCst);
        let mut tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let r = f(&mut tx);
        let last = self.senders.fetch_sub(1, Ordering::SeqCst) == 1;
        let r = r?;
        if last {
            tx.wire.flush()?;
        }
        Ok(r)
    }

    /// Waits for the portal's delay fault before an answer, without the lock.
    pub fn fault_delay(&self) -> Result<(), ConnError> {
        WireTx::fault_delay(&self.ctl, &self.faults)
    }
}
