//! How ssv objects are named on disk. Everything lives in the LVM metadata
//! (DESIGN.md, "The pool on disk"): LV names derive from ids, and human
//! names, roles and lease slots are LV or VG tags. LVM's tag alphabet is
//! narrow, so human text is stored base64url-encoded, never as given.

use crate::{Error, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

/// Marks every LV and VG ssv owns.
pub const TAG_SSV: &str = "ssv";
/// VG tag: this VG is an ssv pool (format version 1).
pub const TAG_POOL: &str = "ssv.pool=1";
/// VG tags: the pool's growth policy (bytes, bytes, percent), which every
/// host follows.
pub const TAG_POOL_INITIAL: &str = "ssv.initial=";
pub const TAG_POOL_CHUNK: &str = "ssv.chunk=";
pub const TAG_POOL_THRESHOLD: &str = "ssv.threshold=";
/// VG tag: the growth mailbox's slot in the leases LV (`mailbox.rs`);
/// a pool without it predates the mailbox and is refused.
pub const TAG_MAILBOX: &str = "ssv.mailbox=";
/// The reserved LV holding the pool's leases.
pub const LEASES_LV: &str = "ssv_leases";
/// Layer tags.
pub const TAG_VOLUME: &str = "ssv.vol=";
pub const TAG_LAYER: &str = "ssv.layer=";
pub const TAG_TOP: &str = "ssv.top";
pub const TAG_NAME: &str = "ssv.name=";
pub const TAG_LEASE: &str = "ssv.lease=";
pub const TAG_SNAPSHOT: &str = "ssv.snap=";
pub const TAG_SNAPSHOT_NAME: &str = "ssv.sname=";
pub const TAG_CREATED: &str = "ssv.ctime=";
/// A layer in the middle of being made: ignored by listings, removed by
/// the next cleanup (a crash between creating and tagging leaves one).
pub const TAG_PENDING: &str = "ssv.pending";

/// Longest id we accept: it is part of LV names and lease names (48 bytes).
pub const MAX_ID: usize = 40;
/// Longest human name, in bytes of UTF-8 (its tag stays under lvm2's old
/// 128-character limit).
pub const MAX_NAME: usize = 64;
/// Longest pool name: the pool name is the lockd lockspace name (48 bytes).
pub const MAX_POOL_NAME: usize = 40;

/// Ids of volumes, snapshots and jobs: 1 to 40 of `a-z 0-9 -`, not starting
/// with `-` (UUIDs qualify). They appear in LV names and lease names.
pub fn check_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what} id {id:?}: use 1 to {MAX_ID} characters of a-z, 0-9 and '-' (a UUID works), not starting with '-'"
        )))
    }
}

/// A new random id (a version 4 UUID, lower case).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    // getrandom only fails without any entropy source; the time-based
    // fallback keeps ids unique on one host even then.
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (t ^ u128::from(std::process::id()) << 64).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Human names: any UTF-8 up to [`MAX_NAME`] bytes, without control characters.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} name {name:?}: use 1 to {MAX_NAME} bytes without control characters"
        )));
    }
    Ok(())
}

/// Pool names are VG names and lockspace names: 1 to 40 of `A-Z a-z 0-9 _ - .`,
/// not starting with `-` or `.`.
pub fn check_pool_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_POOL_NAME
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "pool name {name:?}: use 1 to {MAX_POOL_NAME} characters of A-Z, a-z, 0-9, '_', '-', '.', not starting with '-' or '.'"
        )))
    }
}

/// The LV of layer `n` of volume `id`.
pub fn layer_lv(volume: &str, n: u32) -> String {
    format!("vol-{volume}.{n}")
}

pub fn encode(text: &str) -> String {
    B64.encode(text.as_bytes())
}

pub fn decode(tag_value: &str) -> Option<String> {
    B64.decode(tag_value)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// The value of the first tag starting with `prefix`.
pub fn tag_value<'a>(tags: &'a [String], prefix: &str) -> Option<&'a str> {
    tags.iter().find_map(|t| t.strip_prefix(prefix))
}

pub fn has_tag(tags: &[String], tag: &str) -> bool {
    tags.iter().any(|t| t == tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn new_ids_are_valid_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        check_id("volume", &a).unwrap();
        assert_eq!(a.len(), 36);
        lvm::names::check_lv_name("pool0", &layer_lv(&a, 12)).unwrap();
    }

    #[test]
    fn bad_ids_and_names_are_refused_with_what_to_use() {
        for id in ["", "-a", "A", "a_b", "a/b", &"a".repeat(41)] {
            let e = check_id("volume", id).unwrap_err().to_string();
            assert!(e.contains("a-z, 0-9"), "{e}");
        }
        assert!(check_name("volume", "").is_err());
        assert!(check_name("volume", "a\nb").is_err());
        check_name("volume", "Datenbank (prod) ünd 🙂").unwrap();
        assert!(check_pool_name("a:b").is_err());
        check_pool_name("pool0").unwrap();
    }

    proptest! {
        #[test]
        fn any_name_round_trips_through_a_valid_tag(name in "\\PC{1,40}") {
            let tag = format!("{TAG_NAME}{}", encode(&name));
            lvm::names::check_tag(&tag).unwrap();
            prop_assert_eq!(decode(tag_value(std::slice::from_ref(&tag), TAG_NAME).unwrap()), Some(name));
        }

        #[test]
        fn decode_never_panics(s in ".{0,64}") {
            let _ = decode(&s);
        }
    }
}
