//! LUN URIs: one string that names an iSCSI LU and every path to it, so it
//! can stand wherever a device path does (an ssvd `[[lun]]` entry, the
//! `device` hint of a PV in LVM metadata, a lockd lease path).
//!
//! ```text
//! iscsi://PORTAL[,PORTAL…]/TARGET/LUN
//! PORTAL = IPv4:PORT | [IPv6]:PORT        e.g. 127.0.0.1:3260, [::1]:3260
//! TARGET = iqn.… | eui.… | naa.…          letters, digits, '.', '-', ':'
//! LUN    = 0…65535 (decimal)
//! ```
//!
//! Several portals are several paths to the same LU (multipath). Hosts are
//! IP addresses, not names: a storage path must not depend on name
//! resolution, and the portal is what a path is re-logged in to.
//!
//! # Initiator names
//!
//! Two sessions with the same initiator name and ISID to one target are
//! one I_T nexus: a second login reinstates (kills) the first session.
//! ssvd and lockd run on the same host and log in to the same targets, so
//! each daemon has its own name, made here and nowhere else
//! ([`initiator_name`]):
//!
//! - ssvd: `iqn.2026-11.io.ssv:host<ID>-ssvd`, `<ID>` its configured host id
//!   ([`ssvd_initiator_name`]); ISID qualifier: the host id.
//! - lockd: `iqn.2026-11.io.ssv:<HOST>-lockd` ([`lockd_initiator_name`]),
//!   `<HOST>` the host name by default (lockd learns host ids per lockspace,
//!   later than it may need the LU); `lockd daemon --initiator-name` sets
//!   another, e.g. `host<ID>-lockd` when several hosts share one machine;
//!   ISID qualifier: [`LOCKD_ISID_QUALIFIER`], never a host id, so even a
//!   misconfigured equal name cannot make the two daemons one nexus.
//!
//! Each path's ISID is [`isid`]`(qualifier, path index)`.

use super::login::isid;
use super::{IscsiError, LoginOptions, Multipath, MultipathOptions, PathConfig};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

const SCHEME: &str = "iscsi://";
/// The form, for error messages.
pub const URI_FORM: &str = "iscsi://HOST:PORT[,HOST:PORT…]/TARGET-IQN/LUN, e.g. iscsi://192.0.2.1:3260,192.0.2.2:3260/iqn.2026-01.com.example:lun-store/1";
/// RFC 7143 §4.2.7.1: iSCSI names are at most 223 bytes.
const MAX_NAME: usize = 223;
/// Enough for any sane multipath map; bounds what a config can make us open.
const MAX_PORTALS: usize = 32;
/// Prefix of every initiator name ssv daemons use.
pub const IQN_PREFIX: &str = "iqn.2026-11.io.ssv";
/// lockd's ISID qualifier ("LKD"): above every ssvd host id (≤ 2000).
pub const LOCKD_ISID_QUALIFIER: u32 = 0x004c_4b44;
/// Bounds for one login exchange when [`open_uri`] derives it from io_timeout.
const MIN_LOGIN_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A parsed LUN URI. `Display` writes it back in the same form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IscsiUri {
    /// In the order given (the order paths are numbered in).
    pub portals: Vec<SocketAddr>,
    pub target: String,
    pub lun: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an iSCSI LUN URI: {why}; expected {URI_FORM}")]
pub struct UriError {
    pub input: String,
    pub why: String,
}

/// Whether `s` is meant as a LUN URI (its scheme is `iscsi://`), so that it
/// is parsed as one (and its errors shown) rather than opened as a path.
pub fn is_iscsi_uri(s: &str) -> bool {
    s.get(..SCHEME.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME))
}

impl FromStr for IscsiUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<IscsiUri, UriError> {
        let err = |why: String| UriError {
            // Bounded: the input may be anything.
            input: s.chars().take(300).collect(),
            why,
        };
        if !is_iscsi_uri(s) {
            return Err(err("it does not start with iscsi://".into()));
        }
        let rest = &s[SCHEME.len()..];
        let mut parts = rest.split('/');
        let (Some(portals), Some(target), Some(lun), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err(
                "it needs exactly three parts after iscsi://: portals, target and LUN, separated by '/'".into(),
            ));
        };
        let mut list = Vec::new();
        for p in portals.split(',') {
            let addr = parse_portal(p).map_err(err)?;
            if list.contains(&addr) {
                return Err(err(format!("portal {addr} is listed twice")));
            }
            list.push(addr);
        }
        if list.len() > MAX_PORTALS {
            return Err(err(format!("more than {MAX_PORTALS} portals")));
        }
        check_name(target).map_err(err)?;
        let lun = parse_lun(lun).map_err(err)?;
        Ok(IscsiUri {
            portals: list,
            target: target.to_string(),
            lun,
        })
    }
}

fn parse_portal(p: &str) -> Result<SocketAddr, String> {
    if p.is_empty() {
        return Err("a portal is empty (check the commas)".into());
    }
    let (host, port) = if let Some(v6) = p.strip_prefix('[') {
        let (h, rest) = v6
            .split_once(']')
            .ok_or_else(|| format!("portal {p:?}: '[' without ']'"))?;
        let port = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("portal {p:?}: expected [IPv6]:PORT"))?;
        (h, port)
    } else {
        p.rsplit_once(':')
            .ok_or_else(|| format!("portal {p:?}: expected HOST:PORT (e.g. 192.0.2.1:3260)"))?
    };
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("portal {p:?}: {host:?} is not an IP address (IPv4, or IPv6 in brackets; no host names)")
    })?;
    if p.starts_with('[') != ip.is_ipv6() {
        return Err(format!(
            "portal {p:?}: IPv6 addresses go in brackets, IPv4 addresses do not"
        ));
    }
    let port = parse_decimal(port)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n != 0)
        .ok_or_else(|| format!("portal {p:?}: port {port:?} is not 1 to 65535"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Digits only (no sign, no spaces), at most 10 of them.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_lun(s: &str) -> Result<u16, String> {
    parse_decimal(s)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("LUN {s:?} is not a number from 0 to 65535"))
}

/// The iSCSI name rules that matter here (RFC 3720 §3.2.6): a known type
/// prefix and no character that would make the URI ambiguous.
fn check_name(t: &str) -> Result<(), String> {
    let lower = t.get(..4).map(str::to_ascii_lowercase);
    if !matches!(lower.as_deref(), Some("iqn." | "eui." | "naa.")) || t.len() <= 4 {
        return Err(format!(
            "target {t:?} is not an iSCSI name (iqn.…, eui.… or naa.…)"
        ));
    }
    if t.len() > MAX_NAME {
        return Err(format!("target name is longer than {MAX_NAME} bytes"));
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')))
    {
        return Err(format!(
            "target {t:?} has {c:?}; iSCSI names use letters, digits, '.', '-' and ':'"
        ));
    }
    Ok(())
}

impl fmt::Display for IscsiUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SCHEME)?;
        for (i, p) in self.portals.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            // SocketAddr writes IPv6 as [addr]:port.
            write!(f, "{p}")?;
        }
        write!(f, "/{}/{}", self.target, self.lun)
    }
}

impl IscsiUri {
    /// One form per LU and set of portals, whatever their order: what a
    /// process keys its open devices by, so that two spellings of one LU
    /// share one set of sessions instead of reinstating each other's.
    pub fn canonical(&self) -> String {
        let mut c = self.clone();
        c.portals.sort();
        c.target.make_ascii_lowercase();
        c.to_string()
    }

    /// One path per portal; path `i` logs in with `login` and ISID
    /// `isid(host_qualifier, i)`.
    pub fn paths(&self, login: &LoginOptions, host_qualifier: u32) -> Vec<PathConfig> {
        self.portals
            .iter()
            .enumerate()
            .map(|(i, &portal)| {
                let mut l = login.clone();
                // MAX_PORTALS keeps i far below u16::MAX.
                l.isid = isid(host_qualifier, i as u16);
                PathConfig {
                    portal,
                    target: self.target.clone(),
                    lun: self.lun,
                    login: l,
                }
            })
            .collect()
    }
}

/// Opens the LU `uri` names as a multipath map: one path per portal, the
/// ISIDs from `host_qualifier` (see the module documentation for names and
/// qualifiers). Each login exchange may take io_timeout (2 to 15 s).
pub fn open_uri(
    uri: &IscsiUri,
    initiator_name: &str,
    host_qualifier: u32,
    opts: MultipathOptions,
) -> Result<Multipath, IscsiError> {
    let mut login = LoginOptions::new(initiator_name, [0; 6]);
    login.timeout = opts.io_timeout.clamp(MIN_LOGIN_TIMEOUT, MAX_LOGIN_TIMEOUT);
    open_uri_with(uri, &login, host_qualifier, opts)
}

/// As [`open_uri`], with the login settings (CHAP, timeout) of `login`;
/// its ISID is replaced per path.
pub fn open_uri_with(
    uri: &IscsiUri,
    login: &LoginOptions,
    host_qualifier: u32,
    opts: MultipathOptions,
) -> Result<Multipath, IscsiError> {
    Multipath::open(uri.paths(login, host_qualifier), opts)
}

/// The initiator name of ssv daemon `daemon` on host `host`:
/// `iqn.2026-11.io.ssv:<host>-<daemon>`, lowercased, with every character an
/// iSCSI name may not hold replaced by '-'.
pub fn initiator_name(host: &str, daemon: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '.' | '-') => c,
                _ => '-',
            })
            .collect()
    };
    let host = if host.is_empty() { "host" } else { host };
    let mut name = format!("{IQN_PREFIX}:{}-{}", clean(host), clean(daemon));
    name.truncate(MAX_NAME);
    name
}

/// ssvd's initiator name on host id `host_id`.
pub fn ssvd_initiator_name(host_id: u64) -> String {
    initiator_name(&format!("host{host_id}"), "ssvd")
}

/// lockd's default initiator name on host `hostname`.
pub fn lockd_initiator_name(hostname: &str) -> String {
    initiator_name(hostname, "lockd")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TWO: &str = "iscsi://127.0.0.1:3260,127.0.0.2:3260/iqn.2026-11.io.ssv.test:t1/1";

    #[test]
    fn parses_and_writes_back() {
        let u: IscsiUri = TWO.parse().unwrap();
        assert_eq!(u.portals.len(), 2);
        assert_eq!(u.portals[1], "127.0.0.2:3260".parse().unwrap());
        assert_eq!(u.target, "iqn.2026-11.io.ssv.test:t1");
        assert_eq!(u.lun, 1);
        assert_eq!(u.to_string(), TWO);
        let v6: IscsiUri = "iscsi://[::1]:3261/eui.0123456789abcdef/0".parse().unwrap();
        assert_eq!(v6.to_string(), "iscsi://[::1]:3261/eui.0123456789abcdef/0");
        assert!(is_iscsi_uri(TWO) && is_iscsi_uri("ISCSI://x"));
        assert!(!is_iscsi_uri("/dev/sda") && !is_iscsi_uri("iscsi:/") && !is_iscsi_uri(""));
    }

    #[test]
    fn mistakes_are_named_with_the_expected_form() {
        for (bad, says) in [
            ("/dev/sda", "iscsi://"),
            ("iscsi://127.0.0.1:3260/iqn.a:b", "three parts"),
            ("iscsi://127.0.0.1:3260/iqn.a:b/1/", "three parts"),
            ("iscsi://127.0.0.1/iqn.a:b/1", "HOST:PORT"),
            ("iscsi://127.0.0.1:0/iqn.a:b/1", "port"),
            ("iscsi://127.0.0.1:70000/iqn.a:b/1", "port"),
            ("iscsi://san.example:3260/iqn.a:b/1", "not an IP address"),
            ("iscsi://::1:3260/iqn.a:b/1", "brackets"),
            ("iscsi://[127.0.0.1]:3260/iqn.a:b/1", "brackets"),
            ("iscsi://[::1/iqn.a:b/1", "']'"),
            ("iscsi://127.0.0.1:3260,/iqn.a:b/1", "empty"),
            ("iscsi://127.0.0.1:3260,127.0.0.1:3260/iqn.a:b/1", "twice"),
            ("iscsi://127.0.0.1:3260/target1/1", "iSCSI name"),
            ("iscsi://127.0.0.1:3260/iqn.a b/1", "letters, digits"),
            ("iscsi://127.0.0.1:3260/iqn.a:b/65536", "LUN"),
            ("iscsi://127.0.0.1:3260/iqn.a:b/-1", "LUN"),
            ("iscsi://127.0.0.1:3260/iqn.a:b/+1", "LUN"),
        ] {
            let e = bad.parse::<IscsiUri>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("iscsi://HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn canonical_ignores_portal_order() {
        let a: IscsiUri = TWO.parse().unwrap();
        let b: IscsiUri = "iscsi://127.0.0.2:3260,127.0.0.1:3260/IQN.2026-11.io.ssv.test:t1/1"
            .parse()
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn paths_have_one_isid_each() {
        let u: IscsiUri = TWO.parse().unwrap();
        let p = u.paths(&LoginOptions::new("iqn.x:y", [0; 6]), 7);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].login.isid, isid(7, 0));
        assert_eq!(p[1].login.isid, isid(7, 1));
        assert_eq!(
            (p[1].lun, p[1].target.as_str()),
            (1, "iqn.2026-11.io.ssv.test:t1")
        );
    }

    #[test]
    fn daemons_on_one_host_have_different_names() {
        assert_eq!(ssvd_initiator_name(3), "iqn.2026-11.io.ssv:host3-ssvd");
        assert_eq!(
            lockd_initiator_name("host3"),
            "iqn.2026-11.io.ssv:host3-lockd"
        );
        assert_eq!(
            lockd_initiator_name("Node_7.example"),
            "iqn.2026-11.io.ssv:node-7.example-lockd"
        );
        const { assert!(LOCKD_ISID_QUALIFIER > 2000) };
        let long = lockd_initiator_name(&"x".repeat(500));
        assert!(long.len() <= MAX_NAME);
        check_name(&long).unwrap();
    }

    fn portal() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), 1..=u16::MAX)
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
            (any::<[u16; 8]>(), 1..=u16::MAX)
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC*") {
            let _ = s.parse::<IscsiUri>();
            let _ = is_iscsi_uri(&s);
        }

        #[test]
        fn near_misses_never_panic(s in "iscsi://[0-9.:\\[\\],a-f/]{0,60}(/iqn\\.[a-z:.]{0,10})?(/[0-9+-]{0,7})?") {
            if let Ok(u) = s.parse::<IscsiUri>() {
                prop_assert_eq!(u.to_string().parse::<IscsiUri>().unwrap(), u);
            }
        }

        #[test]
        fn round_trip(
            portals in proptest::collection::btree_set(portal(), 1..5),
            target in "(iqn|eui|naa)\\.[a-zA-Z0-9.:-]{1,60}",
            lun in any::<u16>(),
        ) {
            let u = IscsiUri { portals: portals.into_iter().collect(), target, lun };
            let text = u.to_string();
            prop_assert!(is_iscsi_uri(&text));
            prop_assert_eq!(text.parse::<IscsiUri>().unwrap(), u);
        }
    }
}
