//! What a target serves: its name, portals, LUNs, CHAP account and the
//! limits it negotiates. Checked once by [`TargetConfig::validate`].

use super::TargetError;
use crate::iscsi::pdu::MAX_DATA_SEGMENT;
use crate::iscsi::Chap;
use crate::BlockDev;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// LUN numbers the SAM flat addressing of `pdu::encode_lun` can carry.
const MAX_LUN: u16 = 0x3fff;
/// RFC 7143 §13.12-14: length keys range over 512..2^24-1.
const MIN_SEGMENT: u32 = 512;

/// One logical unit.
#[derive(Clone)]
pub struct LunConfig {
    pub lun: u16,
    pub dev: Arc<dyn BlockDev>,
    /// Stable identity of the LU: VPD 0x83's NAA-6 designator and VPD 0x80's
    /// serial are derived from it, so the same LU exported by two targets (or
    /// one target restarted) has the same WWID. Defaults to the device's.
    pub id: String,
    /// Thin provisioned: UNMAP and WRITE SAME with UNMAP deallocate
    /// (`BlockDev::write_zeroes`), LBPME/LBPRZ are reported.
    pub thin: bool,
    /// Writes fail with DATA PROTECT 07/27/00.
    pub read_only: bool,
}

impl LunConfig {
    pub fn new(lun: u16, dev: Arc<dyn BlockDev>) -> LunConfig {
        LunConfig {
            lun,
            id: dev.identity().0.clone(),
            dev,
            thin: false,
            read_only: false,
        }
    }

    pub fn thin(mut self, yes: bool) -> LunConfig {
        self.thin = yes;
        self
    }

    pub fn read_only(mut self, yes: bool) -> LunConfig {
        self.read_only = yes;
        self
    }

    pub fn id(mut self, id: &str) -> LunConfig {
        self.id = id.to_string();
        self
    }
}

impl std::fmt::Debug for LunConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LunConfig(lun {}, {}, id {:?}, thin {}, ro {})",
            self.lun,
            self.dev.identity(),
            self.id,
            self.thin,
            self.read_only
        )
    }
}

/// What the target accepts and answers in operational negotiation (RFC
/// 7143 §13), plus its own timers.
#[derive(Clone, Debug)]
pub struct TargetParams {
    /// Declared: the largest data segment we accept per PDU.
    pub max_recv_data_segment_length: u32,
    /// Our side of min(): the largest solicited burst (one R2T) and Data-In sequence.
    pub max_burst_length: u32,
    /// Our side of min(): immediate plus unsolicited data per command.
    pub first_burst_length: u32,
    /// Our side of OR: `true` forbids unsolicited Data-Out.
    pub initial_r2t: bool,
    /// Our side of AND.
    pub immediate_data: bool,
    /// Whether CRC32C digests are accepted when the initiator asks for them.
    pub digests: bool,
    /// Commands in flight per session: MaxCmdSN = ExpCmdSN + depth - 1.
    pub queue_depth: u32,
    /// Send a NOP-In ping after this much silence (None: never).
    pub nop_interval: Option<Duration>,
    /// Drop the connection when a ping is not answered within this.
    pub nop_timeout: Duration,
    /// A connection that has not finished login by then is dropped.
    pub login_timeout: Duration,
}

impl Default for TargetParams {
    fn default() -> TargetParams {
        TargetParams {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 65_536,
            initial_r2t: false,
            immediate_data: true,
            digests: true,
            queue_depth: 32,
            nop_interval: None,
            nop_timeout: Duration::from_secs(5),
            login_timeout: Duration::from_secs(15),
        }
    }
}

/// A target: one IQN, its portals (each its own target portal group, tags
/// 1, 2, … in order) and LUNs.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub iqn: String,
    /// Port 0 binds an ephemeral port; `TargetServer::portals` tells which.
    pub portals: Vec<SocketAddr>,
    pub luns: Vec<LunConfig>,
    /// When set, every login (discovery too) must pass CHAP with it.
    pub chap: Option<Chap>,
    pub params: TargetParams,
}

impl TargetConfig {
    pub fn new(iqn: &str, portals: Vec<SocketAddr>, luns: Vec<LunConfig>) -> TargetConfig {
        TargetConfig {
            iqn: iqn.to_string(),
            portals,
            luns,
            chap: None,
            params: TargetParams::default(),
        }
    }

    pub fn validate(&self) -> Result<(), TargetError> {
        let bad = |m: String| Err(TargetError::Config(m));
        check_target(&self.iqn, &self.luns)?;
        if self.portals.is_empty() || self.portals.len() > usize::from(u16::MAX) {
            return bad("a target needs at least one portal".into());
        }
        let p = &self.params;
        for (name, v) in [
            ("MaxRecvDataSegmentLength", p.max_recv_data_segment_length),
            ("MaxBurstLength", p.max_burst_length),
            ("FirstBurstLength", p.first_burst_length),
        ] {
            if !(MIN_SEGMENT..=MAX_DATA_SEGMENT).contains(&v) {
                return bad(format!(
                    "{name}={v} is outside {MIN_SEGMENT}..={MAX_DATA_SEGMENT}"
                ));
            }
        }
        if p.first_burst_length > p.max_burst_length {
            return bad("FirstBurstLength must not exceed MaxBurstLength".into());
        }
        if !(1..=1024).contains(&p.queue_depth) {
            return bad(format!("queue depth {} is outside 1..=1024", p.queue_depth));
        }
        if let Some(c) = &self.chap {
            if c.user.is_empty() || c.secret.is_empty() {
                return bad("CHAP user and secret must not be empty".into());
            }
        }
        Ok(())
    }
}

/// A target's own part of the configuration: its name and LUNs (also what
/// `TargetServer::add_target` checks).
pub(crate) fn check_target(iqn: &str, luns: &[LunConfig]) -> Result<(), TargetError> {
    let bad = |m: String| Err(TargetError::Config(m));
    if iqn.is_empty() || iqn.len() > 223 || iqn.contains(['\0', ',']) {
        return bad(format!(
            "target name {iqn:?} must be 1-223 bytes without NUL or ','"
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for l in luns {
        if l.lun > MAX_LUN || !seen.insert(l.lun) {
            return bad(format!("LUN {} is duplicated or above {MAX_LUN}", l.lun));
        }
        let bs = l.dev.logical_sector_size();
        if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
            return bad(format!(
                "LUN {}: logical block size {bs} unsupported",
                l.lun
            ));
        }
    }
    Ok(())
}
