//! Clones: linked (a new top over a snapshot) at once; full (a copy of
//! the allocated data) as a job whose progress the API reports.

use crate::host::{lock, Host, VolumeDetail};
use crate::model::{SnapshotInfo, VolumeRecord};
use crate::names::*;
use crate::pool::Pool;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thin::CreateOptions;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloneMode {
    /// Copies the allocated data into an independent volume (a job).
    Full,
    /// A new volume over the snapshot, sharing its data read-only.
    Linked,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateClone {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub mode: CloneMode,
    /// Clone this snapshot of the volume; without it (full clones only)
    /// the volume itself, which must not be open for writing meanwhile.
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobInfo {
    pub id: String,
    pub kind: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CloneStarted {
    /// The clone exists (linked clones, or a repeated create).
    Done(VolumeDetail),
    /// A full clone is copying; follow the job.
    Job(JobInfo),
}

impl Host {
    /// A linked clone now, or a full clone as a job (returned).
    pub fn clone_volume(self: &Arc<Self>, volume: &str, req: &CreateClone) -> Result<CloneStarted> {
        check_name("volume", &req.name)?;
        let id = self.pick_id("volume", &req.id)?;
        let (pool, rec) = self.resolve(volume)?;
        if let Ok((p, existing)) = self.find(&id) {
            if existing.name == req.name {
                return Ok(CloneStarted::Done(self.detail(&p, existing)?));
            }
            return Err(Error::Conflict(format!(
                "volume {id} exists already as {:?}",
                existing.name
            )));
        }
        let snap = req
            .snapshot
            .as_deref()
            .map(|s| Self::snapshot_of(&rec, s))
            .transpose()?
            .cloned();
        let lv = layer_lv(&id, 0);
        match req.mode {
            CloneMode::Linked => {
                let Some(s) = snap else {
                    return Err(Error::Invalid(
                        "a linked clone needs a snapshot as its base (the volume's top keeps changing); pass --snapshot".into(),
                    ));
                };
                let _busy = self.mark_busy(&id)?;
                self.drop_pending(&pool, &lv)?;
                thin::clone::linked_clone(
                    &*pool,
                    &s.lv,
                    &lv,
                    &CreateOptions {
                        initial_lv_size: self.growth(&pool).1,
                        tags: Self::pending_tags(&id, 0),
                        ..CreateOptions::default()
                    },
                )?;
                self.publish_volume(&pool, &id, &lv, &req.name)?;
                self.events.emit(
                    "volume.created",
                    Some(pool.name()),
                    Some(&id),
                    format!("linked clone {id} of {} at snapshot {}", rec.id, s.id),
                );
                let (p, r) = self.find(&id)?;
                Ok(CloneStarted::Done(self.detail(&p, r)?))
            }
            CloneMode::Full => {
                let job = new_id();
                lock(&self.jobs).insert(
                    job.clone(),
                    JobInfo {
                        id: job.clone(),
                        kind: "full_clone".into(),
                        state: "running".into(),
                        done_bytes: 0,
                        total_bytes: 0,
                        volume: Some(id.clone()),
                        error: None,
                    },
                );
                let me = self.clone();
                let (job2, name) = (job.clone(), req.name.clone());
                std::thread::Builder::new()
                    .name(format!("clone-{id}"))
                    .spawn(move || {
                        let r = me.full_clone(&pool, &rec, snap.as_ref(), &id, &name, &job2);
                        let mut jobs = lock(&me.jobs);
                        if let Some(j) = jobs.get_mut(&job2) {
                            match r {
                                Ok(()) => j.state = "done".into(),
                                Err(e) => {
                                    j.state = "failed".into();
                                    j.error = Some(e.to_string());
                                }
                            }
                        }
                        drop(jobs);
                        me.events.emit(
                            "job.finished",
                            Some(pool.name()),
                            Some(&id),
                            format!("full clone job {job2} finished"),
                        );
                    })
                    .map_err(|e| Error::Storage(format!("starting the clone job: {e}")))?;
                Ok(CloneStarted::Job(self.job(&job)?))
            }
        }
    }

    pub(crate) fn full_clone(
        &self,
        pool: &Arc<Pool>,
        rec: &VolumeRecord,
        snap: Option<&SnapshotInfo>,
        id: &str,
        name: &str,
        job: &str,
    ) -> Result<()> {
        let _busy = self.mark_busy(id)?;
        let lv = layer_lv(id, 0);
        self.drop_pending(pool, &lv)?;
        let copy = || -> Result<()> {
            let src = snap.map_or(rec.top.as_str(), |s| s.lv.as_str());
            let ext: Arc<dyn thin::Extender> = Arc::new(self.extender(pool));
            thin::clone::full_clone(
                &**pool,
                src,
                &lv,
                &CreateOptions {
                    initial_lv_size: self.growth(pool).1,
                    tags: Self::pending_tags(id, 0),
                    ..CreateOptions::default()
                },
                Some(ext),
                &mut |p| {
                    if let Some(j) = lock(&self.jobs).get_mut(job) {
                        j.done_bytes = p.done;
                        j.total_bytes = p.total;
                    }
                },
            )?;
            Ok(())
        };
        match snap {
            // Snapshot layers never change: no lease needed to read them.
            Some(_) => copy()?,
            None => {
                if lock(&self.sessions).contains_key(&rec.id) {
                    return Err(Error::Conflict(format!(
                        "volume {} is open for writing here; clone a snapshot of it instead (`ssvctl snapshot create`)",
                        rec.id
                    )));
                }
                self.quiesced(pool, rec, copy)?;
            }
        }
        self.publish_volume(pool, id, &lv, name)?;
        self.events.emit(
            "volume.created",
            Some(pool.name()),
            Some(id),
            format!("full clone {id} of {}", rec.id),
        );
        Ok(())
    }

    pub fn job(&self, id: &str) -> Result<JobInfo> {
        lock(&self.jobs)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no job {id} on this host")))
    }

    pub fn jobs(&self) -> Vec<JobInfo> {
        lock(&self.jobs).values().cloned().collect()
    }
}
