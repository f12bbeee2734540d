//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use san::{check_io, BlockDev, DevId, Result};

/// An in-memory device, for tests that don't care about files.
pub struct MemDev {
    data: Mutex<Vec<u8>>,
    sector: u32,
    id: DevId,
    pub flushes: AtomicU64,
}

impl MemDev {
    pub fn new(size: usize, sector: u32) -> MemDev {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        MemDev {
            data: Mutex::new(vec![0; size]),
            sector,
            id: DevId(format!("mem:{n}")),
            flushes: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }
}

impl BlockDev for MemDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_io(self, offset, buf.len())?;
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_io(self, offset, buf.len())?;
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn logical_sector_size(&self) -> u32 {
        self.sector
    }
    fn physical_sector_size(&self) -> u32 {
        4096.max(self.sector)
    }
    fn identity(&self) -> &DevId {
        &self.id
    }
}

/// `len` bytes of a pattern that differs per `seed` and per position.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}
