//! Disks opened through ssvd: `ssvd=SOCKET,volume=ID[,readonly]`.
//!
//! ssvd attaches the volume to this process and answers with its VG, PVs,
//! layers and lease; the VMM opens the PVs itself, reads the VG with the
//! `lvm` crate, takes the lease ([`crate::leases`]) and opens the
//! `thin::Volume` in-process. The top LV grows through ssvd
//! (`POST /v1/volumes/{id}/grow`), whose answer, the LV's segments on the
//! PVs, becomes the LV device the volume writes from then on.
//!
//! I/O passes a gate: an online snapshot closes it (writes wait), flushes,
//! has ssvd make the new top layer, reopens the volume on it and opens the
//! gate again. The disk's [`Fence`] stops every I/O once its lease is lost.

use crate::api::{kind, DiskControl, DiskStatus, EventHub};
use crate::devices::virtio::block::{Disk, DiskError, Fence};
use crate::leases::{LeaseError, Leases};
use san::BlockDev;
use serde_json::{json, Value};
use ssvd::client::{Client, ClientError};
use ssvd::vms::Attachment;
use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// `ssvd=SOCKET,volume=ID[,readonly]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsvdDiskSpec {
    pub socket: PathBuf,
    /// Volume id or unique name.
    pub volume: String,
    pub read_only: bool,
}

impl FromStr for SsvdDiskSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut socket, mut volume, mut read_only) = (None, None, false);
        for item in s.split(',') {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            let slot = match k {
                "ssvd" => &mut socket,
                "volume" => &mut volume,
                "readonly" | "ro" if v.is_empty() => {
                    read_only = true;
                    continue;
                }
                _ => return Err(format!("unknown disk option {item:?} in {s:?}")),
            };
            if v.is_empty() || slot.replace(v.to_string()).is_some() {
                return Err(format!("{k}= given empty or twice in {s:?}"));
            }
        }
        Ok(SsvdDiskSpec {
            socket: socket
                .ok_or_else(|| format!("no ssvd=SOCKET in disk {s:?}"))?
                .into(),
            volume: volume.ok_or_else(|| format!("no volume=ID in disk {s:?}"))?,
            read_only,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    #[error("disk {volume}: ssvd: {source}")]
    Ssvd {
        volume: String,
        #[source]
        source: ClientError,
    },
    #[error("disk {volume}: ssvd's answer: {what}")]
    Answer { volume: String, what: String },
    #[error("disk {volume}: {what}")]
    Open { volume: String, what: String },
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// The pool's LVs as this process sees them: the VG as read from the PVs
/// it opened, each PV by its name in the VG.
pub struct AttachedStore {
    vg: Mutex<lvm::OpenVg>,
    pvs: Vec<lvm::PvDev>,
    /// The opened PVs by their LVM UUID.
    by_uuid: HashMap<String, Arc<dyn BlockDev>>,
}

fn store_err(what: String) -> thin::Error {
    thin::Error::Unsupported(what)
}

impl AttachedStore {
    fn open(att: &Attachment) -> Result<AttachedStore, String> {
        let mut pvs = Vec::new();
        let mut by_uuid = HashMap::new();
        for p in &att.pvs {
            let pv = ssvd::luns::open_attached(&p.path, p.iscsi.as_ref())
                .map_err(|e| format!("PV {}: {e}", p.path))?;
            by_uuid.insert(p.uuid.clone(), pv.dev.clone());
            pvs.push(pv);
        }
        let vg = lvm::OpenVg::open(&pvs, Some(&att.pool))
            .map_err(|e| format!("reading VG {}: {e}", att.pool))?;
        Ok(AttachedStore {
            vg: Mutex::new(vg),
            pvs,
            by_uuid,
        })
    }

    /// Reads the VG again (ssvd changed it: a new layer).
    fn reload(&self) -> Result<(), String> {
        let mut vg = self.vg.lock().unwrap_or_else(PoisonError::into_inner);
        let name = vg.vg().name.clone();
        *vg = lvm::OpenVg::open(&self.pvs, Some(&name))
            .map_err(|e| format!("reading VG {name} again: {e}"))?;
        Ok(())
    }

    fn devs_by_name(&self, vg: &lvm::Vg) -> HashMap<String, Arc<dyn BlockDev>> {
        vg.pvs
            .iter()
            .filter_map(|p| Some((p.name.clone(), self.by_uuid.get(&p.id.to_string())?.clone())))
            .collect()
    }

    /// The LV as a device over the segments ssvd answered after growing it.
    pub fn device_from_mapping(
        &self,
        mapping: &ssvd::volumes::LvMapping,
    ) -> Result<Arc<dyn BlockDev>, String> {
        let vg = self
            .vg
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .vg()
            .clone();
        let ext = vg.extent_bytes();
        let mut lv = vg
            .lv(&mapping.lv)
            .cloned()
            .ok_or_else(|| format!("LV {} is not in VG {} as read here", mapping.lv, vg.name))?;
        let mut segments = Vec::new();
        let mut end = 0;
        for s in &mapping.segments {
            let pv = vg
                .pvs
                .iter()
                .find(|p| p.id.to_string() == s.pv_uuid)
                .ok_or_else(|| {
                    format!(
                        "LV {} grew onto PV {} ({}), which this VM did not open; restart the VM",
                        mapping.lv, s.pv_uuid, s.pv_path
                    )
                })?;
            let first = pv.pe_start.saturating_mul(512);
            let whole = |n: u64| n % ext == 0;
            if s.offset != end
                || !whole(s.offset)
                || !whole(s.length)
                || s.length == 0
                || s.pv_offset < first
                || !whole(s.pv_offset - first)
            {
                return Err(format!(
                    "LV {}: segment at {} of {} bytes on PV offset {} does not fit the VG's {ext}-byte extents",
                    mapping.lv, s.offset, s.length, s.pv_offset
                ));
            }
            segments.push(lvm::Segment::linear(
                s.offset / ext,
                s.length / ext,
                &pv.name,
                (s.pv_offset - first) / ext,
            ));
            end = s.offset + s.length;
        }
        if end != mapping.size {
            return Err(format!(
                "LV {}: segments cover {end} bytes of {}",
                mapping.lv, mapping.size
            ));
        }
        lv.segments = segments;
        let dev = lvm::LvDev::new(&vg, &lv, &self.devs_by_name(&vg))
            .map_err(|e| format!("LV {}: {e}", mapping.lv))?;
        Ok(Arc::new(dev))
    }
}

/// ssvd makes and removes layers; this process only opens them.
impl thin::LvStore for AttachedStore {
    fn open(&self, name: &str) -> thin::Result<Arc<dyn BlockDev>> {
        let vg = self.vg.lock().unwrap_or_else(PoisonError::into_inner);
        let dev = vg
            .lv_dev(name)
            .map_err(|e| store_err(format!("LV {name}: {e}")))?;
        Ok(Arc::new(dev))
    }
    fn create(&self, name: &str, _: u64, _: &[String]) -> thin::Result<Arc<dyn BlockDev>> {
        Err(store_err(format!("LV {name}: ssvd creates layers")))
    }
    fn extend(&self, name: &str, _: u64) -> thin::Result<Arc<dyn BlockDev>> {
        Err(store_err(format!(
            "LV {name}: ssvd extends LVs (the extender asks it)"
        )))
    }
    fn remove(&self, name: &str) -> thin::Result<()> {
        Err(store_err(format!("LV {name}: ssvd removes layers")))
    }
    fn exists(&self, name: &str) -> thin::Result<bool> {
        let vg = self.vg.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(vg.vg().lv(name).is_some())
    }
}

/// How long a growth request waits for an ssvd that cannot be reached
/// (restarting) before the write fails.
const SSVD_AWAY: Duration = Duration::from_secs(60);

/// Grows the top LV through ssvd's growth service.
struct SsvdExtender {
    client: Client,
    volume: String,
    store: Arc<AttachedStore>,
    events: Arc<EventHub>,
}

impl thin::Extender for SsvdExtender {
    fn extend(&self, req: &thin::GrowthRequest) -> Result<Arc<dyn BlockDev>, String> {
        let body = json!({"lv": req.lv, "min_size": req.min_size, "target_size": req.target_size});
        let path = format!("/v1/volumes/{}/grow", self.volume);
        let until = Instant::now() + SSVD_AWAY;
        let mut pause = Duration::from_millis(50);
        let answer = loop {
            match self.client.post(&path, &body) {
                // ssvd is restarting: the write waits for it (growth is
                // asked by size, so asking again is harmless).
                Err(e @ (ClientError::Connect { .. } | ClientError::Io(_)))
                    if Instant::now() < until =>
                {
                    if pause == Duration::from_millis(50) {
                        log::warn!("growing LV {}: {e}; waiting for ssvd", req.lv);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                r => {
                    break r.map_err(|e| match &e {
                        // thin turns this into ENOSPC: the pool is full.
                        ClientError::Api { status: 507, .. } => format!("no space: {e}"),
                        _ => format!("growing LV {} through ssvd: {e}", req.lv),
                    })?;
                }
            }
        };
        let mapping: ssvd::volumes::LvMapping = serde_json::from_value(answer)
            .map_err(|e| format!("ssvd's mapping of LV {}: {e}", req.lv))?;
        let dev = self.store.device_from_mapping(&mapping)?;
        self.events.emit(
            kind::DISK_GROWN,
            json!({"disk": self.volume, "lv": req.lv, "lv_size": mapping.size}),
        );
        Ok(dev)
    }

    /// Told to ssvd once; a lost notice only costs the extension its
    /// combining.
    fn notice(&self, req: &thin::GrowthRequest) {
        let body = json!({"lv": req.lv, "min_size": req.min_size,
            "target_size": req.target_size, "notice": true});
        let path = format!("/v1/volumes/{}/grow", self.volume);
        if let Err(e) = self.client.post(&path, &body) {
            log::debug!("growth notice for LV {}: {e}", req.lv);
        }
    }
}

/// A thin volume opened through ssvd, as the block device's [`Disk`].
pub struct SsvdDisk {
    id: String,
    read_only: bool,
    client: Client,
    store: Arc<AttachedStore>,
    opts: thin::OpenOptions,
    gate: RwLock<Option<Arc<thin::Volume>>>,
    /// The size last seen, for while the gate is closed.
    capacity: AtomicU64,
    cluster_size: u64,
    fence: Fence,
    leases: Option<Arc<Leases>>,
    closed: AtomicBool,
}

fn thin_err(e: thin::Error) -> DiskError {
    match e.root() {
        thin::Error::NoSpace(_) => DiskError::NoSpace(e.to_string()),
        _ => DiskError::Io(e.to_string()),
    }
}

impl SsvdDisk {
    /// Attaches and opens the volume. Writable disks need `leases` (this
    /// process's lockd connection; made from the attachment's lockd socket
    /// when `None` is passed in and the disk is writable, and handed back).
    pub fn open(
        spec: &SsvdDiskSpec,
        leases: &mut Option<Arc<Leases>>,
        events: Arc<EventHub>,
    ) -> Result<Arc<SsvdDisk>, DiskOpenError> {
        let client = Client::unix(&spec.socket);
        let volume = spec.volume.clone();
        let answer = client
            .post(
                &format!("/v1/volumes/{}/attach", seg(&volume)),
                &json!({"writer": "vmm", "pid": std::process::id(), "read_only": spec.read_only}),
            )
            .map_err(|source| DiskOpenError::Ssvd {
                volume: volume.clone(),
                source,
            })?;
        let att: Attachment =
            serde_json::from_value(answer).map_err(|e| DiskOpenError::Answer {
                volume: volume.clone(),
                what: e.to_string(),
            })?;
        let detach = |e: DiskOpenError| {
            if let Err(d) = client.delete(&format!("/v1/volumes/{}/attach", att.volume)) {
                log::warn!("disk {}: detaching after a failed open: {d}", att.volume);
            }
            e
        };
        Self::open_attached(spec, &client, att.clone(), leases, events).map_err(detach)
    }

    fn open_attached(
        spec: &SsvdDiskSpec,
        client: &Client,
        att: Attachment,
        leases: &mut Option<Arc<Leases>>,
        events: Arc<EventHub>,
    ) -> Result<Arc<SsvdDisk>, DiskOpenError> {
        let id = att.volume.clone();
        let open_err = |what: String| DiskOpenError::Open {
            volume: id.clone(),
            what,
        };
        let top = att
            .layers
            .first()
            .cloned()
            .ok_or_else(|| open_err("ssvd answered no layers".into()))?;
        let store = Arc::new(AttachedStore::open(&att).map_err(open_err)?);
        let fence = Fence::new().map_err(|e| open_err(format!("creating its fence: {e}")))?;
        let l = match leases {
            Some(l) => l.clone(),
            None => {
                let l = Arc::new(Leases::connect(
                    std::path::Path::new(&att.lockd_socket),
                    events.clone(),
                )?);
                *leases = Some(l.clone());
                l
            }
        };
        let f = fence.clone();
        l.acquire(
            &id,
            &(&att.lease).into(),
            spec.read_only,
            Box::new(move || f.trip()),
        )?;
        let mut opts = if spec.read_only {
            thin::OpenOptions::read_only()
        } else {
            thin::OpenOptions::default().with_extender(Arc::new(SsvdExtender {
                client: client.clone(),
                volume: id.clone(),
                store: store.clone(),
                events,
            }))
        };
        opts.policy.threshold_percent = att.threshold_percent;
        opts.policy.chunk = att.chunk;
        let v = match thin::Volume::open(&*store, &top, &opts) {
            Ok(v) => v,
            Err(e) => {
                l.release(&id);
                return Err(open_err(format!("opening layer {top}: {e}")));
            }
        };
        Ok(Arc::new(SsvdDisk {
            read_only: spec.read_only,
            client: client.clone(),
            capacity: AtomicU64::new(v.virtual_size()),
            cluster_size: v.cluster_size(),
            gate: RwLock::new(Some(Arc::new(v))),
            store,
            opts,
            fence,
            leases: Some(l),
            closed: AtomicBool::new(false),
            id,
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The switch the block device and the lease share.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    fn with<T>(&self, f: impl FnOnce(&thin::Volume) -> thin::Result<T>) -> Result<T, DiskError> {
        if self.fence.is_tripped() {
            return Err(DiskError::Io(format!(
                "disk {}: its lease was lost; no I/O reaches it",
                self.id
            )));
        }
        let g = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        let v = g
            .as_ref()
            .ok_or_else(|| DiskError::Io(format!("disk {} is closed", self.id)))?;
        f(v).map_err(thin_err)
    }

    /// Flushes, gives the lease back and ends the attachment.
    pub fn close(&self) -> Result<(), String> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let v = self
            .gate
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let flushed = match v {
            Some(v) if !self.fence.is_tripped() => v.flush().map_err(|e| e.to_string()),
            _ => Ok(()),
        };
        if let Some(l) = &self.leases {
            l.release(&self.id);
        }
        if let Err(e) = self
            .client
            .delete(&format!("/v1/volumes/{}/attach", self.id))
        {
            log::warn!("disk {}: detaching: {e}", self.id);
        }
        flushed
    }

    /// The online snapshot (see the module's text).
    fn snapshot_now(&self, name: &str) -> Result<Value, String> {
        let mut g = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        if self.fence.is_tripped() {
            return Err(format!("disk {}: its lease was lost", self.id));
        }
        if self.read_only {
            return Err(format!(
                "disk {} is read-only: snapshot its volume in ssvd",
                self.id
            ));
        }
        let v = g
            .take()
            .ok_or_else(|| format!("disk {} is closed", self.id))?;
        if let Err(e) = v.flush() {
            *g = Some(v);
            return Err(format!(
                "disk {}: flushing before the snapshot: {e}",
                self.id
            ));
        }
        let old_top = v.layers()[0].clone();
        // Closed before ssvd freezes the layer: nothing of ours writes it after.
        drop(v);
        let answer = self.client.post(
            &format!("/v1/volumes/{}/attach/snapshot", self.id),
            &json!({"pid": std::process::id(), "name": name}),
        );
        let (top, out) = match answer {
            Ok(a) => match a["layers"][0].as_str() {
                Some(top) => (top.to_string(), Ok(a["snapshot"].clone())),
                None => (old_top, Err(format!("ssvd answered no new top: {a}"))),
            },
            Err(e) => (old_top, Err(format!("ssvd: {e}"))),
        };
        let reopened = self.store.reload().and_then(|()| {
            thin::Volume::open(&*self.store, &top, &self.opts)
                .map_err(|e| format!("opening layer {top}: {e}"))
        });
        match reopened {
            Ok(v) => *g = Some(Arc::new(v)),
            Err(e) => {
                log::error!("disk {}: reopening after the snapshot: {e}", self.id);
                return Err(match out {
                    Ok(_) => format!("snapshot made, but the disk could not reopen: {e}"),
                    Err(o) => format!("{o}; and the disk could not reopen: {e}"),
                });
            }
        }
        out
    }
}

impl Drop for SsvdDisk {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            log::warn!("disk {}: closing: {e}", self.id);
        }
    }
}

impl Disk for SsvdDisk {
    fn capacity(&self) -> u64 {
        let g = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = g.as_ref() {
            self.capacity.store(v.virtual_size(), Ordering::Relaxed);
        }
        self.capacity.load(Ordering::Relaxed)
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn discard_granularity(&self) -> u64 {
        self.cluster_size
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        crate::devices::virtio::block::disk::check_range(
            offset,
            buf.len() as u64,
            self.capacity(),
        )?;
        self.with(|v| v.read(buf, offset))
    }
    fn write(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        crate::devices::virtio::block::disk::check_range(
            offset,
            buf.len() as u64,
            self.capacity(),
        )?;
        self.with(|v| v.write(buf, offset))
    }
    fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.with(|v| v.flush())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        crate::devices::virtio::block::disk::check_range(offset, len, self.capacity())?;
        self.with(|v| v.discard(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        crate::devices::virtio::block::disk::check_range(offset, len, self.capacity())?;
        self.with(|v| v.write_zeroes(offset, len))
    }
}

impl DiskControl for SsvdDisk {
    fn id(&self) -> &str {
        &self.id
    }
    fn status(&self) -> DiskStatus {
        let g = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        let (lv_size, allocated_end, layers, growth) = match g.as_ref() {
            Some(v) => (
                v.lv_size(),
                v.allocated_end(),
                v.layers().to_vec(),
                (!self.read_only).then(|| v.growth().into()),
            ),
            None => (0, 0, Vec::new(), None),
        };
        drop(g);
        DiskStatus {
            id: self.id.clone(),
            read_only: self.read_only,
            virtual_size: self.capacity(),
            lv_size,
            allocated_end,
            layers,
            fenced: self.fence.is_tripped(),
            growth,
        }
    }
    fn snapshot(&self, name: &str) -> Result<Value, String> {
        self.snapshot_now(name)
    }
}

/// Opens every ssvd disk, each as a virtio-blk device appended to `blocks`
/// whose space events go to `space`; all share one lockd registration.
pub fn open_all(
    specs: &[SsvdDiskSpec],
    queues: u16,
    hub: &Arc<EventHub>,
    space: &Arc<crate::api::vm::SpaceEvents>,
    blocks: &mut Vec<crate::devices::virtio::block::Block>,
) -> Result<Vec<Arc<SsvdDisk>>, DiskOpenError> {
    let mut leases = None;
    let mut disks = Vec::new();
    for spec in specs {
        let d = SsvdDisk::open(spec, &mut leases, hub.clone())?;
        let mut opts = crate::devices::virtio::block::BlockOptions::new(d.id());
        opts.events = space.clone();
        opts.num_queues = queues;
        let block = crate::devices::virtio::block::Block::new(d.clone(), opts, d.fence().clone())
            .map_err(|e| DiskOpenError::Open {
            volume: d.id().to_string(),
            what: e.to_string(),
        })?;
        blocks.push(block);
        disks.push(d);
    }
    Ok(disks)
}

/// A path segment percent-encoded (volume names may hold any character).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s: SsvdDiskSpec = "ssvd=/run/ssv/ssvd.sock,volume=v1,readonly"
            .parse()
            .unwrap();
        assert_eq!(
            s,
            SsvdDiskSpec {
                socket: "/run/ssv/ssvd.sock".into(),
                volume: "v1".into(),
                read_only: true
            }
        );
        for bad in [
            "",
            "ssvd=/s",
            "volume=v",
            "ssvd=/s,volume=v,volume=w",
            "ssvd=,volume=v",
            "ssvd=/s,volume=v,readonly=yes",
            "ssvd=/s,volume=v,top=x",
        ] {
            assert!(bad.parse::<SsvdDiskSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(seg("a b/ü"), "a%20b%2F%C3%BC");
    }
}
