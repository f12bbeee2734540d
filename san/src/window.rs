//! A byte range of another device seen as a device of its own, so a user of
//! part of a LUN (a metadata area, a lease area, an LV's extent run) cannot
//! address anything outside its part.

use std::sync::Arc;

use crate::{check_io, BlockDev, DevId, Error, Result};

/// The bytes `[offset, offset + len)` of an inner device, addressed from 0.
pub struct WindowDev {
    inner: Arc<dyn BlockDev>,
    offset: u64,
    len: u64,
    id: DevId,
}

impl WindowDev {
    /// `offset` and `len` must be multiples of the inner logical sector size
    /// and lie inside the inner device, else [`Error::BadWindow`].
    pub fn new(inner: Arc<dyn BlockDev>, offset: u64, len: u64) -> Result<WindowDev> {
        let size = inner.size();
        let sector = u64::from(inner.logical_sector_size());
        let inside = offset.checked_add(len).is_some_and(|end| end <= size);
        if sector == 0 || offset % sector != 0 || len % sector != 0 || !inside {
            return Err(Error::BadWindow { offset, len, size });
        }
        let id = DevId(format!("{}@{offset}+{len}", inner.identity()));
        Ok(WindowDev {
            inner,
            offset,
            len,
            id,
        })
    }

    /// Where the window starts on the inner device.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn inner(&self) -> &Arc<dyn BlockDev> {
        &self.inner
    }
}

impl std::fmt::Debug for WindowDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowDev").field("id", &self.id).finish()
    }
}

impl BlockDev for WindowDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_io(self, offset, buf.len())?;
        self.inner.read_at(buf, self.offset + offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_io(self, offset, buf.len())?;
        self.inner.write_at(buf, self.offset + offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        crate::check_range(self.logical_sector_size(), self.len, offset, len)?;
        self.inner.write_zeroes(self.offset + offset, len)
    }

    fn zeroes_cheaply(&self) -> bool {
        self.inner.zeroes_cheaply()
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }

    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }

    fn identity(&self) -> &DevId {
        &self.id
    }
}
