//! Volumes written by other processes on this host (VMMs), and the VMs
//! ssvd runs.
//!
//! An attachment hands a volume to an external writer: ssvd answers with
//! what the writer needs to open it in-process (the VG, its PVs, the
//! chain's layers, the lease and lockd's socket) and records it, so that
//! neither a session nor a second attachment opens the volume meanwhile.
//! The writer takes the volume's lease itself (lockd then fences the
//! writer's process, not ssvd), grows its top LV through
//! `POST /v1/volumes/{id}/grow`, and for an online snapshot holds its I/O
//! and asks `POST /v1/volumes/{id}/attach/snapshot`: ssvd makes the new top
//! layer while the writer holds the lease here, and the writer reopens.

use crate::host::{lock, Host};
use crate::leases::slot_location;
use crate::model::SnapshotInfo;
use crate::snapshots::CreateSnapshot;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct AttachRequest {
    /// What writes the volume, e.g. `vmm` (for status and events).
    pub writer: String,
    /// The writer's process: its lease holder in lockd.
    pub pid: u32,
    /// Reads only: the writer takes the lease shared.
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttachedPv {
    /// The LUN's path or URI, as the pool records it.
    pub path: String,
    /// The PV's LVM UUID.
    pub uuid: String,
}

/// A lease as lockd names it (`LOCKSPACE:RESOURCE:PATH:OFFSET`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct LeaseSpec {
    pub lockspace: String,
    pub resource: String,
    pub path: String,
    pub offset: u64,
}

impl From<&LeaseSpec> for lockd::proto::ResourceSpec {
    fn from(l: &LeaseSpec) -> Self {
        lockd::proto::ResourceSpec {
            lockspace: l.lockspace.clone(),
            resource: l.resource.clone(),
            path: l.path.clone(),
            offset: l.offset,
        }
    }
}

/// What an external writer needs to open a volume itself.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attachment {
    pub volume: String,
    pub name: String,
    /// The pool, which is the VG's name.
    pub pool: String,
    pub writer: String,
    pub pid: u32,
    pub read_only: bool,
    /// The top layer's LV (written), then the layers below, top first.
    pub layers: Vec<String>,
    pub pvs: Vec<AttachedPv>,
    /// The volume's lease: the writer holds it (exclusive, or shared when
    /// read-only) for as long as it has the volume open.
    pub lease: LeaseSpec,
    /// lockd's socket on this host.
    pub lockd_socket: String,
    /// The pool's growth policy.
    pub threshold_percent: u8,
    pub chunk: u64,
}

/// What an online snapshot answers: the snapshot and the chain to reopen.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AttachedSnapshot {
    pub snapshot: SnapshotInfo,
    /// The volume's layers now, the new top first.
    pub layers: Vec<String>,
}

/// An attachment and whether its writer is holding its I/O for a layer
/// change right now.
pub(crate) struct Attached {
    pub info: Attachment,
    pub quiesced: bool,
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

impl Host {
    /// Hands the volume to an external writer (see the module's text).
    pub fn attach(&self, volume: &str, req: &AttachRequest) -> Result<Attachment> {
        if req.pid == 0 || !alive(req.pid) {
            return Err(Error::Invalid(format!(
                "process {} does not exist; attach from the writer's own process",
                req.pid
            )));
        }
        let (pool, rec) = self.resolve(volume)?;
        if lock(&self.sessions).contains_key(&rec.id) {
            return Err(Error::Conflict(format!(
                "volume {} is open in a session on this host; close it first (`ssvctl volume close {}`)",
                rec.id, rec.id
            )));
        }
        let _busy = self.mark_busy(&rec.id)?;
        {
            let mut att = lock(&self.attachments);
            if let Some(a) = att.get(&rec.id) {
                if a.info.pid == req.pid {
                    return Ok(a.info.clone());
                }
                if alive(a.info.pid) {
                    return Err(Error::Conflict(format!(
                        "volume {} is attached to {} (pid {}); detach it there first",
                        rec.id, a.info.writer, a.info.pid
                    )));
                }
                log::warn!(
                    "volume {}: dropping the attachment of pid {}, which is gone",
                    rec.id,
                    a.info.pid
                );
                att.remove(&rec.id);
            }
        }
        let vg = pool.refresh()?;
        self.locks.join(&vg)?;
        let (path, offset) = slot_location(&vg, rec.lease_slot)?;
        let policy = self.growth(&pool).0;
        let info = Attachment {
            volume: rec.id.clone(),
            name: rec.name.clone(),
            pool: pool.name().to_string(),
            writer: req.writer.clone(),
            pid: req.pid,
            read_only: req.read_only,
            layers: rec.layers.iter().map(|l| l.lv.clone()).collect(),
            pvs: vg
                .pvs
                .iter()
                .map(|p| AttachedPv {
                    path: p.device.clone().unwrap_or_default(),
                    uuid: p.id.to_string(),
                })
                .collect(),
            lease: LeaseSpec {
                lockspace: vg.name.clone(),
                resource: rec.id.clone(),
                path,
                offset,
            },
            lockd_socket: self.config.lockd.socket.display().to_string(),
            threshold_percent: policy.threshold_percent,
            chunk: policy.chunk,
        };
        lock(&self.attachments).insert(
            rec.id.clone(),
            Attached {
                info: info.clone(),
                quiesced: false,
            },
        );
        self.events.emit(
            "volume.attached",
            Some(pool.name()),
            Some(&rec.id),
            format!(
                "volume {} attached to {} (pid {}){}",
                rec.id,
                req.writer,
                req.pid,
                if req.read_only { ", read-only" } else { "" }
            ),
        );
        Ok(info)
    }

    /// Ends an attachment (the writer closed the volume, or exited).
    pub fn detach(&self, volume: &str) -> Result<()> {
        let (pool, rec) = self.resolve(volume)?;
        let Some(a) = lock(&self.attachments).remove(&rec.id) else {
            return Err(Error::NotFound(format!(
                "volume {} is not attached on this host",
                rec.id
            )));
        };
        self.events.emit(
            "volume.detached",
            Some(pool.name()),
            Some(&rec.id),
            format!(
                "volume {} detached from {} (pid {})",
                rec.id, a.info.writer, a.info.pid
            ),
        );
        Ok(())
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        let mut v: Vec<Attachment> = lock(&self.attachments)
            .values()
            .map(|a| a.info.clone())
            .collect();
        v.sort_by(|a, b| a.volume.cmp(&b.volume));
        v
    }

    /// An online snapshot for the attached writer, which has flushed and
    /// holds its I/O: the lease must be held by the writer's process here.
    /// The writer reopens the volume on the returned top afterwards.
    pub fn attached_snapshot(
        &self,
        volume: &str,
        pid: u32,
        req: &CreateSnapshot,
    ) -> Result<AttachedSnapshot> {
        let (_, rec) = self.resolve(volume)?;
        {
            let mut att = lock(&self.attachments);
            let a = att.get_mut(&rec.id).ok_or_else(|| {
                Error::Conflict(format!("volume {} is not attached on this host", rec.id))
            })?;
            if a.info.pid != pid || a.info.read_only {
                return Err(Error::Conflict(format!(
                    "volume {} is attached to pid {}{}: only its writer snapshots it this way",
                    rec.id,
                    a.info.pid,
                    if a.info.read_only { " read-only" } else { "" }
                )));
            }
            let held = self.locks.status()?.leases.iter().any(|l| {
                l.spec.resource == rec.id
                    && l.spec.lockspace == a.info.pool
                    && l.pid == pid
                    && !l.shared
            });
            if !held {
                return Err(Error::Conflict(format!(
                    "pid {pid} does not hold the lease of volume {} on this host",
                    rec.id
                )));
            }
            a.quiesced = true;
        }
        let out = self.create_snapshot(&rec.id, req);
        if let Some(a) = lock(&self.attachments).get_mut(&rec.id) {
            a.quiesced = false;
        }
        let (snapshot, _) = out?;
        let (_, rec) = self.find(&rec.id)?;
        let layers: Vec<String> = rec.layers.iter().map(|l| l.lv.clone()).collect();
        if let Some(a) = lock(&self.attachments).get_mut(&rec.id) {
            a.info.layers = layers.clone();
        }
        Ok(AttachedSnapshot { snapshot, layers })
    }

    /// Whether the volume's attached writer holds its I/O for a layer
    /// change; an error while it is attached and not holding it.
    pub(crate) fn attached_writer_quiesced(&self, id: &str) -> Result<bool> {
        match lock(&self.attachments).get(id) {
            None => Ok(false),
            Some(a) if a.quiesced => Ok(true),
            Some(a) => Err(Error::Conflict(format!(
                "volume {id} is attached to {} (pid {}); change it through its writer (e.g. `ssvctl vm snapshot`) or detach it first",
                a.info.writer, a.info.pid
            ))),
        }
    }

    pub(crate) fn is_attached(&self, id: &str) -> bool {
        lock(&self.attachments).contains_key(id)
    }
}
