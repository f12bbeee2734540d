//! The daemon's client protocol: one JSON object per line on a Unix stream
//! socket. Requests carry an `id` echoed by their reply; events carry
//! `event` and may arrive at any time after `register`.

use serde::{Deserialize, Serialize};

/// Where a lease lives: lockspace, resource, path, offset — sanlock's
/// `LS:RES:PATH:OFFSET` (a trailing `:SH` asks for a shared lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSpec {
    pub lockspace: String,
    pub resource: String,
    pub path: String,
    pub offset: u64,
}

impl ResourceSpec {
    /// Parses `LS:RES:PATH:OFFSET[:SH]`; returns the spec and whether `SH`
    /// was given. PATH may hold ':' (an iSCSI URI does).
    pub fn parse(s: &str) -> Result<(ResourceSpec, bool), String> {
        let (body, shared) = match s.strip_suffix(":SH") {
            Some(body) => (body, true),
            None => (s, false),
        };
        let [lockspace, resource, path, offset] = split_path_spec(body).ok_or_else(|| {
            format!(
                "{s:?}: expected LOCKSPACE:RESOURCE:PATH:OFFSET[:SH], e.g. pool:vol1:/dev/vg/leases:3145728"
            )
        })?;
        Ok((
            ResourceSpec {
                lockspace: lockspace.into(),
                resource: resource.into(),
                path: path.into(),
                offset: parse_offset(offset)?,
            },
            shared,
        ))
    }
}

impl std::fmt::Display for ResourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.lockspace, self.resource, self.path, self.offset
        )
    }
}

/// A lockspace to join: sanlock's `LS:HOST_ID:PATH:OFFSET`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockspaceSpec {
    pub lockspace: String,
    pub host_id: u64,
    pub path: String,
    pub offset: u64,
}

impl LockspaceSpec {
    /// Parses `LS:HOST_ID:PATH:OFFSET`; PATH may hold ':' (an iSCSI URI does).
    pub fn parse(s: &str) -> Result<LockspaceSpec, String> {
        let [lockspace, host_id, path, offset] = split_path_spec(s).ok_or_else(|| {
            format!("{s:?}: expected LOCKSPACE:HOST_ID:PATH:OFFSET, e.g. pool:1:/dev/vg/leases:0")
        })?;
        Ok(LockspaceSpec {
            lockspace: lockspace.into(),
            host_id: host_id
                .parse()
                .map_err(|_| format!("{s:?}: host id {host_id:?} is not a number"))?,
            path: path.into(),
            offset: parse_offset(offset)?,
        })
    }
}

/// Splits `A:B:PATH:OFFSET` into its four non-empty fields: the first two
/// from the left, the offset from the right, so PATH keeps its own ':'.
pub fn split_path_spec(s: &str) -> Option<[&str; 4]> {
    let (a, rest) = s.split_once(':')?;
    let (b, rest) = rest.split_once(':')?;
    let (path, offset) = rest.rsplit_once(':')?;
    let fields = [a, b, path, offset];
    fields.iter().all(|f| !f.is_empty()).then_some(fields)
}

/// A byte offset, optionally with a K/M/G suffix (binary).
pub fn parse_offset(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?} is not a byte offset (digits, optionally K/M/G)"))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Makes this connection a lease holder for `pid` (normally the caller):
    /// its leases are released when the connection closes.
    Register {
        pid: u32,
    },
    AddLockspace {
        spec: LockspaceSpec,
    },
    RemLockspace {
        lockspace: String,
    },
    /// `pid` acquires on behalf of another process, whose death releases it
    /// (`lockd client acquire -p`); without it, for this connection.
    Acquire {
        spec: ResourceSpec,
        shared: bool,
        /// Wait out a silent owner (up to host_dead) instead of failing.
        wait: bool,
        pid: Option<u32>,
    },
    Release {
        spec: ResourceSpec,
        pid: Option<u32>,
    },
    /// Asks the holder of a lease to give it up (request record).
    Request {
        spec: ResourceSpec,
        force_mode: u32,
    },
    Inquire {
        pid: Option<u32>,
    },
    Status,
    /// Test builds only (`lockd daemon --fault-injection`): delay or fail
    /// lease I/O to a path.
    Fault {
        path: String,
        read_delay_ms: u64,
        write_delay_ms: u64,
        fail: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// sanlock-style error code when `ok` is false.
    #[serde(default)]
    pub code: i32,
    #[serde(default)]
    pub result: serde_json::Value,
}

/// A lease as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub spec: ResourceSpec,
    pub shared: bool,
    pub lver: u64,
    pub pid: u32,
    /// CLOCK_MONOTONIC nanoseconds until which the lease is valid, unless
    /// the lockspace renews again.
    pub valid_until_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The lockspace renewed: leases in it are valid until this
    /// CLOCK_MONOTONIC time (ns). Stop lease-protected I/O after it.
    Renewed {
        lockspace: String,
        valid_until_ns: u64,
    },
    /// Another host asked for this lease (request record).
    Requested {
        lockspace: String,
        resource: String,
        force_mode: u32,
    },
    /// Renewal failed past id_renewal_fail: the leases are gone; holders are
    /// being stopped.
    LockspaceFailed { lockspace: String, reason: String },
}

/// What `status` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub io_timeout: u64,
    pub watchdog_fire: u64,
    /// The watchdog device in use, or why there is none.
    pub watchdog: String,
    pub lockspaces: Vec<LockspaceStatus>,
    pub leases: Vec<LeaseInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockspaceStatus {
    pub lockspace: String,
    pub host_id: u64,
    pub generation: u64,
    pub path: String,
    pub offset: u64,
    /// "joined", "failed"
    pub state: String,
    pub renewal_age_ms: u64,
    pub hosts: Vec<HostStatus>,
    pub io: IoCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    pub host_id: u64,
    pub generation: u64,
    pub name: String,
    /// "free", "unknown", "live", "fail", "dead"
    pub state: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IoCounts {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub timeouts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_like_sanlock() {
        let (r, sh) = ResourceSpec::parse("pool:vol:/dev/x:1M:SH").unwrap();
        assert!(sh);
        assert_eq!(r.offset, 1 << 20);
        assert_eq!(r.to_string(), "pool:vol:/dev/x:1048576");
        assert!(ResourceSpec::parse("pool:vol:/dev/x").is_err());
        assert!(ResourceSpec::parse("pool::/dev/x:0").is_err());
        assert!(ResourceSpec::parse("pool:v:/x:12Q").is_err());
        let l = LockspaceSpec::parse("pool:3:/dev/x:0").unwrap();
        assert_eq!(l.host_id, 3);
        assert!(LockspaceSpec::parse("pool:x:/dev/x:0").is_err());
        assert!(parse_offset("99999999999999999999G").is_err());
    }

    #[test]
    fn paths_may_be_iscsi_uris() {
        let uri = "iscsi://127.0.0.1:3260,127.0.0.2:3260/iqn.2026-11.io.ssv:pool/1";
        let (r, sh) = ResourceSpec::parse(&format!("pool:vol:{uri}:3M:SH")).unwrap();
        assert!(sh);
        assert_eq!((r.path.as_str(), r.offset), (uri, 3 << 20));
        assert_eq!(ResourceSpec::parse(&r.to_string()).unwrap().0, r);
        let l = LockspaceSpec::parse(&format!("pool:2:{uri}:0")).unwrap();
        assert_eq!((l.host_id, l.path.as_str(), l.offset), (2, uri, 0));
        assert!(LockspaceSpec::parse(&format!("pool:2:{uri}")).is_err());
    }

    #[test]
    fn requests_round_trip_as_json_lines() {
        let e = Envelope {
            id: 7,
            request: Request::Acquire {
                spec: ResourceSpec::parse("a:b:/c:0").unwrap().0,
                shared: false,
                wait: true,
                pid: None,
            },
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(!line.contains('\n'));
        let back: Envelope = serde_json::from_str(&line).unwrap();
        assert_eq!(back.id, 7);
        assert!(serde_json::from_str::<Envelope>(r#"{"id":1,"op":"nope"}"#).is_err());
    }
}
