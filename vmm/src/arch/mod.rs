//! Architecture code. The pure parts (boot tables, device tree) are
//! unit-tested on their host; the parts that talk to KVM are compiled for
//! their own architecture only.
//!
//! `x86_64` is built on x86_64 hosts only: its boot structures come from
//! linux-loader's x86 bindings. `aarch64` builds everywhere; only its
//! KVM-calling functions and the `Image` loader are gated to aarch64, so its
//! device tree and layout are tested on any host.

pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
