//! Architecture code. The pure parts (boot tables, device tree) build and
//! are unit-tested on any host; the parts that talk to KVM are compiled for
//! their own architecture only.

pub mod aarch64;
pub mod x86_64;
