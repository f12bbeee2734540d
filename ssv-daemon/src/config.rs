//! `ssv.toml`: one file per host. Everything has a default except where
//! the pool's LUNs are, so the embedded default (a sparse file as the LUN)
//! needs three lines.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/ssv/ssv.toml";
pub const DEFAULT_SOCKET: &str = "/run/ssv/ssvd.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This host's id in every pool's lockspace: 1 to 2000, unique per pool.
    pub host_id: u64,
    /// Where ssvd keeps local state (exports' sockets, job records).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub lockd: LockdConfig,
    #[serde(default)]
    pub nbd: NbdConfig,
    #[serde(default)]
    pub growth: GrowthConfig,
    #[serde(default)]
    pub io: IoConfig,
    #[serde(default)]
    pub iscsi: IscsiConfig,
    #[serde(default)]
    pub export: ExportConfig,
    #[serde(default)]
    pub vm: VmsConfig,
    /// Where the pools' LUNs are.
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Unix socket (mode 0600).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Also serve on TCP at this address; needs `token_file`.
    #[serde(default)]
    pub tcp: Option<String>,
    /// File holding the bearer token TCP clients must send.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: default_socket(),
            tcp: None,
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockdConfig {
    #[serde(default = "default_lockd_socket")]
    pub socket: PathBuf,
    /// Seconds to wait for a busy lease (the pool lease is held for
    /// milliseconds, so this only runs out when a holder is stuck).
    #[serde(default = "default_lease_wait")]
    pub lease_wait_secs: u64,
}

impl Default for LockdConfig {
    fn default() -> Self {
        LockdConfig {
            socket: default_lockd_socket(),
            lease_wait_secs: default_lease_wait(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdConfig {
    /// Serve open volumes over NBD on this Unix socket
    /// (default: `STATE_DIR/nbd.sock`).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// And on this TCP address.
    #[serde(default)]
    pub tcp: Option<String>,
}

/// `[vm]`: the VMs ssvd runs (`POST /v1/vms`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmsConfig {
    /// The `ssv-vmm` binary (default: next to ssvd's own).
    #[serde(default)]
    pub vmm: Option<PathBuf>,
    /// Seconds a stopping VM gets to shut down before it is killed
    /// (default 10).
    #[serde(default)]
    pub stop_timeout_secs: Option<u64>,
    /// Stop the VMs when ssvd stops (default false: they keep running and
    /// the next ssvd adopts them, so restarting ssvd spares the guests).
    #[serde(default)]
    pub stop_with_ssvd: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowthConfig {
    /// Size of a new volume's LV.
    #[serde(default = "default_chunk")]
    pub initial: String,
    /// Grow when the allocated end passes this percentage of the LV.
    #[serde(default = "default_threshold")]
    pub threshold_percent: u8,
    /// Bytes added per extension.
    #[serde(default = "default_chunk")]
    pub chunk: String,
    /// This many percentage points before the threshold, a writer posts a
    /// notice in the growth mailbox, so a host committing extensions for
    /// others grows this LV in the same commit (one commit per burst of
    /// hosts crossing together). 0: no notices.
    #[serde(default = "default_notice_lead")]
    pub notice_lead_percent: u8,
}

impl Default for GrowthConfig {
    fn default() -> Self {
        GrowthConfig {
            initial: default_chunk(),
            threshold_percent: default_threshold(),
            chunk: default_chunk(),
            notice_lead_percent: default_notice_lead(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoConfig {
    /// Volume data this host keeps in flight to one pool's LUNs; more waits
    /// in ssvd. The pool's small synchronous I/O (LVM commits, the growth
    /// mailbox) queues behind at most this much of this host's data, so
    /// extensions stay fast while volumes are written at full speed. Raise
    /// it for a host whose LUNs need more in flight to reach their
    /// throughput. "0": no bound.
    #[serde(default = "default_data_in_flight")]
    pub data_in_flight: String,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            data_in_flight: default_data_in_flight(),
        }
    }
}

/// One place LUNs come from: a `[[lun]]` entry with one of `file`,
/// `device` or `iscsi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LunEntry", into = "LunEntry")]
pub enum LunSource {
    /// A file used as a LUN (the embedded default: a sparse file).
    File(PathBuf),
    /// A local block device.
    Device(PathBuf),
    /// An iSCSI LU over every portal of its URI (multipath), e.g.
    /// `iscsi = "iscsi://192.0.2.1:3260,192.0.2.2:3260/iqn.2026-01.com.example:store/1"`.
    /// The URI is the LUN's path everywhere (pool create, PV device hint,
    /// lockd's lease path), so every host must be able to reach those portals.
    Iscsi {
        /// As written by [`san::iscsi::IscsiUri`]'s `Display` (checked at load).
        uri: String,
        /// CHAP user, with `chap_secret_file` (a file holding only the secret).
        chap_user: Option<String>,
        chap_secret_file: Option<PathBuf>,
    },
}

impl LunSource {
    /// The string that names this LUN (in the API and in LVM metadata).
    pub fn path(&self) -> String {
        match self {
            LunSource::File(p) | LunSource::Device(p) => p.display().to_string(),
            LunSource::Iscsi { uri, .. } => uri.clone(),
        }
    }
}

/// A `[[lun]]` table as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LunEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iscsi: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chap_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chap_secret_file: Option<PathBuf>,
}

impl TryFrom<LunEntry> for LunSource {
    type Error = String;

    fn try_from(e: LunEntry) -> std::result::Result<LunSource, String> {
        let chap = e.chap_user.is_some() || e.chap_secret_file.is_some();
        match (e.file, e.device, e.iscsi) {
            (Some(p), None, None) if !chap => Ok(LunSource::File(p)),
            (None, Some(p), None) if !chap => Ok(LunSource::Device(p)),
            (None, None, Some(u)) => {
                let uri: san::iscsi::IscsiUri = u.parse().map_err(|e| format!("[[lun]] {e}"))?;
                if e.chap_user.is_some() != e.chap_secret_file.is_some() {
                    return Err(format!(
                        "[[lun]] {u}: CHAP needs both chap_user and chap_secret_file"
                    ));
                }
                Ok(LunSource::Iscsi {
                    uri: uri.to_string(),
                    chap_user: e.chap_user,
                    chap_secret_file: e.chap_secret_file,
                })
            }
            (_, _, None) if chap => {
                Err("[[lun]]: chap_user and chap_secret_file go with iscsi only".into())
            }
            _ => Err(
                "each [[lun]] needs exactly one of file = PATH, device = PATH or iscsi = URI"
                    .into(),
            ),
        }
    }
}

impl From<LunSource> for LunEntry {
    fn from(l: LunSource) -> LunEntry {
        match l {
            LunSource::File(p) => LunEntry {
                file: Some(p),
                ..LunEntry::default()
            },
            LunSource::Device(p) => LunEntry {
                device: Some(p),
                ..LunEntry::default()
            },
            LunSource::Iscsi {
                uri,
                chap_user,
                chap_secret_file,
            } => LunEntry {
                iscsi: Some(uri),
                chap_user,
                chap_secret_file,
                ..LunEntry::default()
            },
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiConfig {
    /// ssvd's initiator name for `iscsi` LUNs [default:
    /// `iqn.2026-11.io.ssv:host<HOST_ID>-ssvd`]. It must differ from
    /// lockd's and from every other host's (see `san::iscsi::uri`).
    #[serde(default)]
    pub initiator_name: Option<String>,
}

/// How open volumes are exported besides NBD (`[nbd]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Serve each open volume as an iSCSI target on these portals
    /// (`"IP:PORT"`, e.g. `["192.0.2.1:3260"]`); none: no iSCSI export.
    #[serde(default)]
    pub iscsi_portals: Vec<String>,
    /// A volume's target is `<prefix>:<volume id>`, its LUN 0 the volume.
    #[serde(default = "default_iqn_prefix")]
    pub iscsi_iqn_prefix: String,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            iscsi_portals: Vec::new(),
            iscsi_iqn_prefix: default_iqn_prefix(),
        }
    }
}

pub const DEFAULT_IQN_PREFIX: &str = "iqn.2026-11.io.ssv:export";

fn default_iqn_prefix() -> String {
    DEFAULT_IQN_PREFIX.into()
}

/// An export portal: a specific address (the volume's URI names it, so a
/// wildcard would tell clients nothing) and a fixed port.
fn parse_export_portal(p: &str) -> Result<SocketAddr> {
    let bad = |why: &str| {
        Error::Invalid(format!(
            "[export] iscsi_portals: {p:?} {why}; write \"IP:PORT\", e.g. \"192.0.2.1:3260\" or \"[2001:db8::1]:3260\""
        ))
    };
    let a: SocketAddr = p
        .parse()
        .map_err(|_| bad("is not an IP address and port"))?;
    if a.ip().is_unspecified() {
        return Err(bad(
            "listens on every address, but the URI clients get must name one",
        ));
    }
    if a.port() == 0 {
        return Err(bad(
            "has port 0, but the URI clients get needs a fixed port",
        ));
    }
    Ok(a)
}

/// `iqn.YYYY-MM.reversed.domain[:anything]` in lowercase letters, digits,
/// '.', '-' and ':', leaving room for `:<volume id>` in 223 bytes.
fn check_iqn_prefix(p: &str) -> Result<()> {
    let b = p.as_bytes();
    let dated = b.len() > 12
        && p.starts_with("iqn.")
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..11].iter().all(u8::is_ascii_digit)
        && b[11] == b'.';
    let chars = b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b':'));
    let room = p.len() + 1 + crate::names::MAX_ID <= 223;
    if dated && chars && room && !p.ends_with([':', '.']) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "[export] iscsi_iqn_prefix = {p:?}: write an iSCSI name like {DEFAULT_IQN_PREFIX:?} \
         (iqn.YYYY-MM.reversed.domain, then optionally ':' and more; lowercase letters, digits, \
         '.', '-' and ':'; at most {} bytes, so that \":<volume id>\" fits)",
        222 - crate::names::MAX_ID
    )))
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ssv")
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_lockd_socket() -> PathBuf {
    lockd::client::default_socket()
}
fn default_lease_wait() -> u64 {
    30
}
fn default_chunk() -> String {
    "1g".into()
}
fn default_data_in_flight() -> String {
    "1m".into()
}
fn default_threshold() -> u8 {
    thin::growth::DEFAULT_THRESHOLD_PERCENT
}
fn default_notice_lead() -> u8 {
    thin::growth::DEFAULT_NOTICE_LEAD_PERCENT
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Invalid(format!(
                "cannot read the configuration {}: {e} (write one; `ssvd --help` shows an example)",
                path.display()
            ))
        })?;
        Config::parse(&text).map_err(|e| e.context(path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let c: Config = toml::from_str(text).map_err(|e| Error::Invalid(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<()> {
        if !(1..=2000).contains(&self.host_id) {
            return Err(Error::Invalid(format!(
                "host_id = {}: must be 1 to 2000 and unique among the hosts sharing a pool",
                self.host_id
            )));
        }
        if self.api.tcp.is_some() && self.api.token_file.is_none() {
            return Err(Error::Invalid(
                "[api] tcp needs token_file: TCP clients must send a bearer token".into(),
            ));
        }
        if !(1..=99).contains(&self.growth.threshold_percent) {
            return Err(Error::Invalid(format!(
                "[growth] threshold_percent = {}: must be 1 to 99",
                self.growth.threshold_percent
            )));
        }
        if self.growth.notice_lead_percent >= self.growth.threshold_percent {
            return Err(Error::Invalid(format!(
                "[growth] notice_lead_percent = {}: must be below threshold_percent ({}); 0 turns notices off",
                self.growth.notice_lead_percent, self.growth.threshold_percent
            )));
        }
        let chunk = parse_size(&self.growth.chunk).map_err(|e| e.context("[growth] chunk"))?;
        parse_size(&self.growth.initial).map_err(|e| e.context("[growth] initial"))?;
        if chunk == 0 {
            return Err(Error::Invalid("[growth] chunk must not be 0".into()));
        }
        parse_size(&self.io.data_in_flight).map_err(|e| e.context("[io] data_in_flight"))?;
        let mut seen = Vec::new();
        for p in &self.export.iscsi_portals {
            let a = parse_export_portal(p)?;
            if seen.contains(&a) {
                return Err(Error::Invalid(format!(
                    "[export] iscsi_portals lists {a} twice; list each portal once"
                )));
            }
            seen.push(a);
        }
        check_iqn_prefix(&self.export.iscsi_iqn_prefix)?;
        Ok(())
    }

    /// Where open volumes are exported over iSCSI (checked at load); empty: nowhere.
    pub fn iscsi_export_portals(&self) -> Vec<SocketAddr> {
        self.export
            .iscsi_portals
            .iter()
            .filter_map(|p| parse_export_portal(p).ok())
            .collect()
    }

    pub fn growth_policy(&self) -> thin::GrowthPolicy {
        thin::GrowthPolicy {
            threshold_percent: self.growth.threshold_percent,
            notice_lead_percent: self.growth.notice_lead_percent,
            chunk: parse_size(&self.growth.chunk).unwrap_or(thin::growth::DEFAULT_CHUNK),
            cap: None,
        }
    }

    /// The bound on volume data in flight per pool; `None`: unbounded.
    pub fn data_in_flight(&self) -> Option<u64> {
        parse_size(&self.io.data_in_flight).ok().filter(|&n| n > 0)
    }

    pub fn initial_lv_size(&self) -> u64 {
        parse_size(&self.growth.initial).unwrap_or(thin::growth::DEFAULT_INITIAL_SIZE)
    }

    /// ssvd's iSCSI initiator name: configured, or the rule's
    /// (`san::iscsi::ssvd_initiator_name`).
    pub fn initiator_name(&self) -> String {
        self.iscsi
            .initiator_name
            .clone()
            .unwrap_or_else(|| san::iscsi::ssvd_initiator_name(self.host_id))
    }

    pub fn nbd_socket(&self) -> PathBuf {
        self.nbd
            .socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("nbd.sock"))
    }
}

/// Sizes as operators write them: bytes, or a number with k, m, g, t
/// (binary; an optional trailing "b"/"ib"). Bare numbers are bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let bad = || {
        Error::Invalid(format!(
            "size {s:?}: write bytes or a number with k, m, g or t (e.g. 10g)"
        ))
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    let v = n * (1u64 << shift) as f64;
    if v >= u64::MAX as f64 || v.fract() != 0.0 {
        return Err(bad());
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_needs_three_lines() {
        let c = Config::parse("host_id = 1\n[[lun]]\nfile = \"/var/lib/ssv/lun0.img\"\n").unwrap();
        assert_eq!(
            c.luns,
            vec![LunSource::File("/var/lib/ssv/lun0.img".into())]
        );
        assert_eq!(c.api.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.growth_policy(), thin::GrowthPolicy::default());
        assert_eq!(c.initial_lv_size(), 1 << 30);
        assert_eq!(c.data_in_flight(), Some(1 << 20));
    }

    #[test]
    fn data_in_flight() {
        let c = Config::parse("host_id = 1\n[io]\ndata_in_flight = \"8m\"").unwrap();
        assert_eq!(c.data_in_flight(), Some(8 << 20));
        let c = Config::parse("host_id = 1\n[io]\ndata_in_flight = \"0\"").unwrap();
        assert_eq!(c.data_in_flight(), None);
        let e = Config::parse("host_id = 1\n[io]\ndata_in_flight = \"lots\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[io] data_in_flight"), "{e}");
    }

    #[test]
    fn mistakes_are_named() {
        let e = Config::parse("host_id = 0").unwrap_err().to_string();
        assert!(e.contains("1 to 2000"), "{e}");
        let e = Config::parse("host_id = 1\nhostid = 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hostid"), "{e}");
        let e = Config::parse("host_id = 1\n[api]\ntcp = \"127.0.0.1:1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_file"), "{e}");
        let e = Config::parse("host_id = 1\n[growth]\nchunk = \"1x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("chunk") && e.contains("10g"), "{e}");
    }

    #[test]
    fn iscsi_luns() {
        let uri = "iscsi://127.0.0.1:3260,127.0.0.2:3260/iqn.2026-11.io.ssv.test:t1/1";
        let c = Config::parse(&format!(
            "host_id = 2\n[[lun]]\niscsi = \"{uri}\"\n[[lun]]\niscsi = \"{uri}\"\nchap_user = \"u\"\nchap_secret_file = \"/etc/ssv/chap\"\n[[lun]]\ndevice = \"/dev/sdb\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.luns[0],
            LunSource::Iscsi {
                uri: uri.into(),
                chap_user: None,
                chap_secret_file: None
            }
        );
        assert_eq!(c.luns[0].path(), uri);
        assert!(matches!(&c.luns[1], LunSource::Iscsi { chap_user: Some(u), .. } if u == "u"));
        assert_eq!(c.luns[2], LunSource::Device("/dev/sdb".into()));
        assert_eq!(c.initiator_name(), "iqn.2026-11.io.ssv:host2-ssvd");
        // What serializes, loads back the same.
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap().luns, c.luns);
        let c = Config::parse("host_id = 2\n[iscsi]\ninitiator_name = \"iqn.x:y\"").unwrap();
        assert_eq!(c.initiator_name(), "iqn.x:y");

        for (bad, says) in [
            ("iscsi = \"iscsi://127.0.0.1/iqn.a:b/1\"", "HOST:PORT"),
            (
                "iscsi = \"iscsi://127.0.0.1:3260/iqn.a:b/1\"\nchap_user = \"u\"",
                "both",
            ),
            ("file = \"/x\"\nchap_user = \"u\"", "iscsi only"),
            ("file = \"/x\"\ndevice = \"/y\"", "exactly one"),
            ("", "exactly one"),
            (
                "iscsi = \"iscsi://127.0.0.1:3260/iqn.a:b/1\"\nchap = 1",
                "chap",
            ),
        ] {
            let e = Config::parse(&format!("host_id = 1\n[[lun]]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn export_table() {
        let c = Config::parse("host_id = 1").unwrap();
        assert!(c.iscsi_export_portals().is_empty());
        assert_eq!(c.export.iscsi_iqn_prefix, DEFAULT_IQN_PREFIX);
        let c = Config::parse(
            "host_id = 1\n[export]\niscsi_portals = [\"127.0.0.1:3260\", \"[::1]:3261\"]\niscsi_iqn_prefix = \"iqn.2026-01.com.example:ssv\"\n",
        )
        .unwrap();
        assert_eq!(
            c.iscsi_export_portals(),
            vec![
                "127.0.0.1:3260".parse::<SocketAddr>().unwrap(),
                "[::1]:3261".parse().unwrap()
            ]
        );
        assert_eq!(c.export.iscsi_iqn_prefix, "iqn.2026-01.com.example:ssv");
        let long = format!("iqn.2026-01.com.{}", "a".repeat(200));
        for (bad, says) in [
            ("iscsi_portals = [\"127.0.0.1\"]", "IP:PORT"),
            ("iscsi_portals = [\"storage:3260\"]", "IP:PORT"),
            ("iscsi_portals = [\"0.0.0.0:3260\"]", "must name one"),
            ("iscsi_portals = [\"127.0.0.1:0\"]", "fixed port"),
            (
                "iscsi_portals = [\"127.0.0.1:3260\", \"127.0.0.1:3260\"]",
                "twice",
            ),
            ("iscsi_portals = \"127.0.0.1:3260\"", "sequence"),
            ("iscsi_iqn_prefix = \"ssv\"", "iqn.YYYY-MM"),
            (
                "iscsi_iqn_prefix = \"iqn.2026-01.com.Example\"",
                "lowercase",
            ),
            (
                "iscsi_iqn_prefix = \"iqn.2026-01.com.example:\"",
                "iqn.YYYY-MM",
            ),
            (&*format!("iscsi_iqn_prefix = \"{long}\""), "at most"),
            ("iscsi_portal = []", "iscsi_portal"),
        ] {
            let e = Config::parse(&format!("host_id = 1\n[export]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10g").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        for bad in ["", "g", "-1g", "1.1", "nan", "1e30t"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
