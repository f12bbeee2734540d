//! x86_64: real mode for the test guest, the Linux boot protocol.
