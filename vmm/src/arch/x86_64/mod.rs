//! x86_64: real mode for the test guest, the Linux boot protocol.

#[cfg(target_arch = "x86_64")]
pub mod machine;
#[cfg(target_arch = "x86_64")]
pub mod realmode;
