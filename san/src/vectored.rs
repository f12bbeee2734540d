//! `write_all` for a list of slices (`Write::write_all_vectored` is
//! unstable), shared by the NBD server, the iSCSI initiator and the target.

use std::io::{self, IoSlice, Write};

/// Writes every buffer, in as few system calls as the kernel allows.
pub(crate) fn write_all_vectored(w: &mut impl Write, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut bufs = bufs;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
