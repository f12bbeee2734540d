//! Thin disks: qcow2 images written straight into LVs (qcow2-in-LV), read
//! and written in-process through imago, growing their LV while they are
//! written, snapshotted as chains of LVs, merged and cloned.
//!
//! - [`format`] and [`layer`]: the qcow2 metadata ssv handles itself (header,
//!   empty image, backing name, allocated end); `thin/FORMAT.md`.
//! - [`engine`]: the seam to the qcow2 engine (imago behind it).
//! - [`growth`]: threshold, chunk, cap, parked writes, the [`Extender`] trait.
//! - [`store`]: where layers live ([`VgStore`] on a VG, [`DirStore`] on files).
//! - [`volume`]: create, open, I/O; [`chain`] snapshots, revert, merge;
//!   [`clone`] full and linked clones.

pub mod chain;
pub mod clone;
pub mod engine;
mod error;
pub mod format;
pub mod growth;
pub mod layer;
mod storage;
pub mod store;
pub mod volume;

pub use engine::{Engine, Extent};
pub use error::{Error, Result};
pub use growth::{Extender, GrowthPolicy, GrowthRequest, GrowthStats};
pub use store::{DirStore, LvStore, StoreExtender, VgStore};
pub use volume::{create, CreateOptions, OpenOptions, Volume};
