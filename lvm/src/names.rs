//! Names, tags and UUIDs as LVM2 accepts them (spec §12, §13).

use crate::{Error, Result};
use std::fmt;

pub const NAME_MAX: usize = 127;
/// len(VG) + len(LV) must stay within this (device-mapper name limits).
pub const VG_LV_NAME_MAX: usize = 124;

const LV_RESERVED_PREFIXES: &[&str] = &["snapshot", "pvmove"];
const LV_RESERVED_SUBSTRINGS: &[&str] = &[
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_wcorig", "_mimage", "_mlog", "_rimage",
    "_rmeta", "_tdata", "_tmeta", "_vdata", "_imeta", "_iorig", "_pmspare", "_vorigin",
];

/// Character and length rules shared by VG and LV names (no reserved words).
pub(crate) fn check_name(kind: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            kind,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > NAME_MAX {
        return bad("longer than 127 characters");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are reserved");
    }
    if name.starts_with('-') {
        return bad("must not start with `-`");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
    {
        return bad("only A-Z a-z 0-9 + _ . - are allowed");
    }
    Ok(())
}

/// Keys at the top level of the metadata text, beside the VG section: a VG
/// of that name would make a text with a duplicate key, which no reader takes.
const VG_RESERVED: &[&str] = &[
    "contents",
    "version",
    "description",
    "creation_host",
    "creation_time",
    "creation_host_system_id",
];

pub fn check_vg_name(name: &str) -> Result<()> {
    check_name("VG", name)?;
    if VG_RESERVED.contains(&name) {
        let reason = "reserved: a top-level key of the metadata text";
        return Err(Error::InvalidName {
            kind: "VG",
            name: name.to_string(),
            reason,
        });
    }
    Ok(())
}

/// An LV name, also checked against its VG's name length (spec §13).
pub fn check_lv_name(vg: &str, name: &str) -> Result<()> {
    check_name("LV", name)?;
    let bad = |reason| {
        Err(Error::InvalidName {
            kind: "LV",
            name: name.to_string(),
            reason,
        })
    };
    if LV_RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return bad("names starting with `snapshot` or `pvmove` are reserved");
    }
    if LV_RESERVED_SUBSTRINGS.iter().any(|s| name.contains(s)) {
        return bad(
            "contains a suffix reserved for LVM's internal LVs (such as _mlog, _rimage, _tdata)",
        );
    }
    if vg.len() + name.len() > VG_LV_NAME_MAX {
        return bad("VG and LV names together are longer than 124 characters");
    }
    Ok(())
}

pub fn check_tag(tag: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidTag {
            tag: tag.to_string(),
            reason,
        })
    };
    if tag.is_empty() {
        return bad("empty");
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_+.-/=!:&#".contains(&b))
    {
        return bad("only A-Z a-z 0-9 _ + . - / = ! : & # are allowed");
    }
    Ok(())
}

pub const UUID_LEN: usize = 32;
const UUID_ALPHABET: &[u8; 64] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!#";
/// lvm generates only from the alphanumerics.
const UUID_GENERATED: usize = 62;
const UUID_GROUPS: [usize; 7] = [6, 4, 4, 4, 4, 4, 6];

/// An LVM UUID: 32 characters, printed with dashes in groups 6-4-4-4-4-4-6.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid([u8; UUID_LEN]);

impl Uuid {
    pub fn generate() -> Result<Uuid> {
        let mut out = [0u8; UUID_LEN];
        let mut i = 0;
        while i < UUID_LEN {
            let mut raw = [0u8; 64];
            getrandom::fill(&mut raw).map_err(|e| {
                Error::InvalidArgument(format!("no random numbers for a UUID: {e}"))
            })?;
            // Rejection sampling keeps the distribution uniform over 62 characters.
            for b in raw {
                if i < UUID_LEN && usize::from(b) < 248 {
                    out[i] = UUID_ALPHABET[usize::from(b) % UUID_GENERATED];
                    i += 1;
                }
            }
        }
        Ok(Uuid(out))
    }

    /// Parses a UUID with or without dashes (dashes anywhere are ignored, as lvm does).
    pub fn parse(s: &str) -> Result<Uuid> {
        let mut out = [0u8; UUID_LEN];
        let mut n = 0;
        for b in s.bytes().filter(|&b| b != b'-') {
            if n == UUID_LEN || !UUID_ALPHABET.contains(&b) {
                return Err(Error::Metadata(format!(
                    "invalid UUID {s:?}: needs exactly 32 characters from 0-9 a-z A-Z ! #"
                )));
            }
            out[n] = b;
            n += 1;
        }
        if n != UUID_LEN {
            return Err(Error::Metadata(format!(
                "invalid UUID {s:?}: {n} characters, 32 needed"
            )));
        }
        Ok(Uuid(out))
    }

    pub fn from_bytes(raw: &[u8; UUID_LEN]) -> Result<Uuid> {
        let s =
            std::str::from_utf8(raw).map_err(|_| Error::Metadata("UUID is not ASCII".into()))?;
        Uuid::parse(s)
    }

    /// The undashed form stored in the pv_header.
    pub fn as_bytes(&self) -> &[u8; UUID_LEN] {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pos = 0;
        for (i, len) in UUID_GROUPS.iter().enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            // The alphabet is ASCII, so every byte is a char.
            for &b in &self.0[pos..pos + len] {
                fmt::Write::write_char(f, char::from(b))?;
            }
            pos += len;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvm_name_rules() {
        for ok in ["a+b.c_d-e", "vg0", "snapsho", "x"] {
            check_lv_name("vg", ok).unwrap();
        }
        for bad in [
            "snapshotx",
            "pvmove0",
            "a_mlog",
            "x_pmspare",
            ".",
            "..",
            "-x",
            "a@b",
            "",
            "a b",
        ] {
            assert!(check_lv_name("vg", bad).is_err(), "{bad} accepted");
        }
        check_lv_name("specvg", &"a".repeat(118)).unwrap();
        assert!(check_lv_name("specvg", &"a".repeat(119)).is_err());
    }

    #[test]
    fn lvm_tag_rules() {
        check_tag("Tag.1_+-/=!:&#").unwrap();
        check_tag("-hyph").unwrap();
        check_tag(&"a".repeat(5000)).unwrap();
        for bad in ["", "a@b", "a b", "a\"b"] {
            assert!(check_tag(bad).is_err());
        }
    }

    #[test]
    fn uuid_forms() {
        let u = Uuid::generate().unwrap();
        let dashed = u.to_string();
        assert_eq!(dashed.len(), 38);
        assert_eq!(dashed.matches('-').count(), 6);
        assert_eq!(Uuid::parse(&dashed).unwrap(), u);
        assert_eq!(Uuid::from_bytes(u.as_bytes()).unwrap(), u);
        assert!(u.as_bytes().iter().all(|b| b.is_ascii_alphanumeric()));
        assert!(Uuid::parse("short").is_err());
        assert!(Uuid::parse(&"a".repeat(33)).is_err());
        assert!(Uuid::parse(&format!("{}@", "a".repeat(31))).is_err());
        Uuid::parse(&format!("{}!#", "a".repeat(30))).unwrap();
    }
}
