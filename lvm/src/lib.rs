//! The LVM2 on-disk format, natively: PV labels, metadata areas and their
//! circular buffers, the text metadata, allocation and crash-safe commits,
//! and LVs as block devices. Stock lvm2 reads what this crate writes, and this
//! crate reads what lvm2 writes. The format is specified in
//! `shared/specs/lvm2-format.md`; section numbers (§) in comments refer to it.

pub mod alloc;
pub mod crc;
mod error;
mod io;
pub mod label;
pub mod lvdev;
pub mod mda;
pub mod model;
pub mod names;
pub mod open_vg;
pub mod ops;
pub mod pv;
pub mod scan;
pub mod text;
mod validate;

pub use error::{Error, Result};
pub use lvdev::LvDev;
pub use model::{Lv, Pv, Segment, SegmentKind, Stripe, Vg};
pub use open_vg::{Health, OpenVg};
pub use ops::Stamp;
pub use pv::{format_pv, PvFormat};
pub use scan::{scan, PvDev};
pub use validate::check_extent_size;
