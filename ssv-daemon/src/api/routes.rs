//! Routes, one handler each; the OpenAPI document is derived from them.

use super::{blocking, ApiError, ErrorBody, State};
use crate::clones::{CloneMode, CloneStarted, CreateClone, JobInfo};
use crate::events::Event;
use crate::host::*;
use crate::luns::LunInfo;
use crate::model::{SnapshotInfo, VolumeRecord};
use crate::pool::{PoolLun, PoolStatus};
use crate::snapshots::CreateSnapshot;
use crate::vms::{
    AttachRequest, AttachedPv, AttachedSnapshot, Attachment, CreateVm, LeaseSpec, VmInfo,
};
use crate::volumes::{CreateVolume, GrowRequest, LvMapping, SegmentMap};
use axum::body::Body;
use axum::extract::{Path, State as S};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ssvd",
        description = "ssv's per-host service: pools, thin volumes, snapshots, clones, sessions"
    ),
    paths(
        host_status,
        list_luns,
        list_pools,
        create_pool,
        show_pool,
        add_lun,
        list_volumes,
        create_volume,
        show_volume,
        delete_volume,
        resize_volume,
        grow_lv,
        attach_volume,
        detach_volume,
        attached_snapshot,
        list_vms,
        start_vm,
        show_vm,
        delete_vm,
        stop_vm,
        pause_vm,
        resume_vm,
        snapshot_vm,
        vm_console,
        open_session,
        close_session,
        list_snapshots,
        create_snapshot,
        delete_snapshot,
        revert_snapshot,
        create_clone,
        list_jobs,
        show_job,
        events,
        metrics
    ),
    components(schemas(
        ErrorBody,
        HostStatus,
        LunInfo,
        PoolStatus,
        PoolLun,
        CreatePool,
        AddLun,
        CreateVolume,
        VolumeRecord,
        VolumeDetail,
        GrowthInfo,
        GrowRequest,
        LvMapping,
        SegmentMap,
        AttachRequest,
        Attachment,
        AttachedPv,
        LeaseSpec,
        AttachedSnapshot,
        WriterSnapshot,
        CreateVm,
        VmInfo,
        VmSnapshot,
        Resize,
        SnapshotInfo,
        CreateSnapshot,
        CreateClone,
        CloneMode,
        CloneStarted,
        JobInfo,
        Event,
        crate::model::LayerInfo
    ))
)]
pub struct ApiDoc;

pub fn router(state: State) -> Router {
    Router::new()
        .route("/v1/host", get(host_status))
        .route("/v1/luns", get(list_luns))
        .route("/v1/pools", get(list_pools).post(create_pool))
        .route("/v1/pools/{name}", get(show_pool))
        .route("/v1/pools/{name}/luns", post(add_lun))
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/volumes/{id}", get(show_volume).delete(delete_volume))
        .route("/v1/volumes/{id}/resize", post(resize_volume))
        .route("/v1/volumes/{id}/grow", post(grow_lv))
        .route(
            "/v1/volumes/{id}/attach",
            post(attach_volume).delete(detach_volume),
        )
        .route("/v1/volumes/{id}/attach/snapshot", post(attached_snapshot))
        .route("/v1/vms", get(list_vms).post(start_vm))
        .route("/v1/vms/{name}", get(show_vm).delete(delete_vm))
        .route("/v1/vms/{name}/stop", post(stop_vm))
        .route("/v1/vms/{name}/pause", post(pause_vm))
        .route("/v1/vms/{name}/resume", post(resume_vm))
        .route("/v1/vms/{name}/snapshot", post(snapshot_vm))
        .route("/v1/vms/{name}/console", get(vm_console))
        .route(
            "/v1/volumes/{id}/session",
            post(open_session).delete(close_session),
        )
        .route(
            "/v1/volumes/{id}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/volumes/{id}/snapshots/{snap}",
            axum::routing::delete(delete_snapshot),
        )
        .route(
            "/v1/volumes/{id}/snapshots/{snap}/revert",
            post(revert_snapshot),
        )
        .route("/v1/volumes/{id}/clones", post(create_clone))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/events", get(events))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .with_state(state)
}

type R<T> = Result<T, ApiError>;

#[utoipa::path(get, path = "/v1/host", responses((status = 200, body = HostStatus)))]
async fn host_status(S(h): S<State>) -> R<Json<HostStatus>> {
    blocking(&h, "host_status", |h| Ok(h.status()))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/v1/luns", responses((status = 200, body = [LunInfo])))]
async fn list_luns(S(h): S<State>) -> R<Json<Vec<LunInfo>>> {
    blocking(&h, "lun_list", |h| Ok(h.luns())).await.map(Json)
}

#[utoipa::path(get, path = "/v1/pools", responses((status = 200, body = [PoolStatus])))]
async fn list_pools(S(h): S<State>) -> R<Json<Vec<PoolStatus>>> {
    blocking(&h, "pool_list", |h| {
        h.pools().iter().map(|p| h.pool_status(p)).collect()
    })
    .await
    .map(Json)
}

#[utoipa::path(post, path = "/v1/pools", request_body = CreatePool,
    responses((status = 201, body = PoolStatus), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_pool(
    S(h): S<State>,
    Json(req): Json<CreatePool>,
) -> R<(StatusCode, Json<PoolStatus>)> {
    blocking(&h, "pool_create", move |h| h.create_pool(&req))
        .await
        .map(|p| (StatusCode::CREATED, Json(p)))
}

#[utoipa::path(get, path = "/v1/pools/{name}", responses((status = 200, body = PoolStatus), (status = 404, body = ErrorBody)))]
async fn show_pool(S(h): S<State>, Path(name): Path<String>) -> R<Json<PoolStatus>> {
    blocking(&h, "pool_show", move |h| {
        h.pool_status(&*h.pool(Some(&name))?)
    })
    .await
    .map(Json)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct AddLun {
    pub path: String,
}

#[utoipa::path(post, path = "/v1/pools/{name}/luns", request_body = AddLun, responses((status = 200, body = PoolStatus)))]
async fn add_lun(
    S(h): S<State>,
    Path(name): Path<String>,
    Json(req): Json<AddLun>,
) -> R<Json<PoolStatus>> {
    blocking(&h, "pool_add_lun", move |h| h.add_lun(&name, &req.path))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/v1/volumes", responses((status = 200, body = [VolumeRecord])))]
async fn list_volumes(S(h): S<State>) -> R<Json<Vec<VolumeRecord>>> {
    blocking(&h, "volume_list", |h| h.volumes()).await.map(Json)
}

#[utoipa::path(post, path = "/v1/volumes", request_body = CreateVolume,
    responses((status = 201, description = "created", body = VolumeDetail),
              (status = 200, description = "exists already with the same id, name and size", body = VolumeDetail),
              (status = 409, body = ErrorBody)))]
async fn create_volume(
    S(h): S<State>,
    Json(req): Json<CreateVolume>,
) -> R<(StatusCode, Json<VolumeDetail>)> {
    let (v, new) = blocking(&h, "volume_create", move |h| h.create_volume(&req)).await?;
    Ok((
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(v),
    ))
}

#[utoipa::path(get, path = "/v1/volumes/{id}", responses((status = 200, body = VolumeDetail), (status = 404, body = ErrorBody)))]
async fn show_volume(S(h): S<State>, Path(id): Path<String>) -> R<Json<VolumeDetail>> {
    blocking(&h, "volume_show", move |h| {
        let (p, r) = h.resolve(&id)?;
        h.detail(&p, r)
    })
    .await
    .map(Json)
}

#[utoipa::path(delete, path = "/v1/volumes/{id}", responses((status = 204), (status = 409, body = ErrorBody)))]
async fn delete_volume(S(h): S<State>, Path(id): Path<String>) -> R<StatusCode> {
    blocking(&h, "volume_delete", move |h| h.delete_volume(&id))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Resize {
    /// New virtual size (volumes only grow).
    pub size: String,
}

#[utoipa::path(post, path = "/v1/volumes/{id}/resize", request_body = Resize, responses((status = 200, body = VolumeDetail)))]
async fn resize_volume(
    S(h): S<State>,
    Path(id): Path<String>,
    Json(req): Json<Resize>,
) -> R<Json<VolumeDetail>> {
    blocking(&h, "volume_resize", move |h| {
        h.resize_volume(&id, &req.size)
    })
    .await
    .map(Json)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct OpenQuery {
    /// Wait for a lease held by a host that died (up to lockd's
    /// host_dead timeout) instead of failing at once.
    #[serde(default)]
    pub wait: bool,
}

/// For writers outside ssvd (VMMs): grow the volume's top LV now and get
/// its new mapping. The caller must hold the volume's lease.
#[utoipa::path(post, path = "/v1/volumes/{id}/grow", request_body = GrowRequest,
    responses((status = 200, body = LvMapping), (status = 409, body = ErrorBody), (status = 507, body = ErrorBody)))]
async fn grow_lv(
    S(h): S<State>,
    Path(id): Path<String>,
    Json(req): Json<GrowRequest>,
) -> R<Json<LvMapping>> {
    blocking(&h, "volume_grow", move |h| h.grow_lv(&id, &req))
        .await
        .map(Json)
}

/// For writers outside ssvd (VMMs): what they need to open the volume
/// in-process. Refused while it has a session or another attachment here.
#[utoipa::path(post, path = "/v1/volumes/{id}/attach", request_body = AttachRequest,
    responses((status = 200, body = Attachment), (status = 409, body = ErrorBody)))]
async fn attach_volume(
    S(h): S<State>,
    Path(id): Path<String>,
    Json(req): Json<AttachRequest>,
) -> R<Json<Attachment>> {
    blocking(&h, "volume_attach", move |h| h.attach(&id, &req))
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/v1/volumes/{id}/attach", responses((status = 204), (status = 404, body = ErrorBody)))]
async fn detach_volume(S(h): S<State>, Path(id): Path<String>) -> R<StatusCode> {
    blocking(&h, "volume_detach", move |h| h.detach(&id))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

/// The attached writer's online snapshot request.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct WriterSnapshot {
    /// The writer's pid (the attachment's).
    pub pid: u32,
    pub name: String,
    #[serde(default)]
    pub id: Option<String>,
}

/// For the attached writer, which has flushed and holds its I/O: make the
/// new top layer; the writer reopens the volume on it.
#[utoipa::path(post, path = "/v1/volumes/{id}/attach/snapshot", request_body = WriterSnapshot,
    responses((status = 201, body = AttachedSnapshot), (status = 409, body = ErrorBody)))]
async fn attached_snapshot(
    S(h): S<State>,
    Path(id): Path<String>,
    Json(req): Json<WriterSnapshot>,
) -> R<(StatusCode, Json<AttachedSnapshot>)> {
    blocking(&h, "snapshot_create", move |h| {
        let snap = CreateSnapshot {
            id: req.id,
            name: req.name,
        };
        h.attached_snapshot(&id, req.pid, &snap)
    })
    .await
    .map(|s| (StatusCode::CREATED, Json(s)))
}

#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = [VmInfo])))]
async fn list_vms(S(h): S<State>) -> R<Json<Vec<VmInfo>>> {
    blocking(&h, "vm_list", |h| Ok(h.vms())).await.map(Json)
}

/// Starts an `ssv-vmm` process with the volumes as its disks.
#[utoipa::path(post, path = "/v1/vms", request_body = CreateVm,
    responses((status = 201, body = VmInfo), (status = 409, body = ErrorBody)))]
async fn start_vm(S(h): S<State>, Json(req): Json<CreateVm>) -> R<(StatusCode, Json<VmInfo>)> {
    blocking(&h, "vm_start", move |h| h.start_vm(&req))
        .await
        .map(|v| (StatusCode::CREATED, Json(v)))
}

/// The VM, with the VMM's status (state, disks' allocation) while it runs.
#[utoipa::path(get, path = "/v1/vms/{name}", responses((status = 200, body = VmInfo), (status = 404, body = ErrorBody)))]
async fn show_vm(S(h): S<State>, Path(name): Path<String>) -> R<Json<VmInfo>> {
    blocking(&h, "vm_show", move |h| h.show_vm(&name))
        .await
        .map(Json)
}

/// Forgets an exited VM.
#[utoipa::path(delete, path = "/v1/vms/{name}", responses((status = 204), (status = 409, body = ErrorBody)))]
async fn delete_vm(S(h): S<State>, Path(name): Path<String>) -> R<StatusCode> {
    blocking(&h, "vm_delete", move |h| h.remove_vm(&name))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

/// Shuts the VM down through its API; killed after `[vm] stop_timeout_secs`.
#[utoipa::path(post, path = "/v1/vms/{name}/stop", responses((status = 200, body = VmInfo)))]
async fn stop_vm(S(h): S<State>, Path(name): Path<String>) -> R<Json<VmInfo>> {
    blocking(&h, "vm_stop", move |h| h.stop_vm(&name))
        .await
        .map(Json)
}

/// Stops the VM's vCPUs (its disks' I/O in flight completes); the answer
/// is the VM's state (`paused`, with every reason it is paused for).
#[utoipa::path(post, path = "/v1/vms/{name}/pause", responses((status = 200, body = Object), (status = 409, body = ErrorBody)))]
async fn pause_vm(S(h): S<State>, Path(name): Path<String>) -> R<Json<serde_json::Value>> {
    blocking(&h, "vm_pause", move |h| h.pause_vm(&name, true))
        .await
        .map(Json)
}

/// Drops an operator's pause: the VM runs again unless a disk still waits
/// for space (reason `enospc`).
#[utoipa::path(post, path = "/v1/vms/{name}/resume", responses((status = 200, body = Object), (status = 409, body = ErrorBody)))]
async fn resume_vm(S(h): S<State>, Path(name): Path<String>) -> R<Json<serde_json::Value>> {
    blocking(&h, "vm_resume", move |h| h.pause_vm(&name, false))
        .await
        .map(Json)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct VmSnapshot {
    pub name: String,
    /// The disk's volume (id or name); may be left out when the VM has one.
    #[serde(default)]
    pub disk: Option<String>,
}

/// An online snapshot of one of the VM's disks.
#[utoipa::path(post, path = "/v1/vms/{name}/snapshot", request_body = VmSnapshot,
    responses((status = 201, body = SnapshotInfo), (status = 409, body = ErrorBody)))]
async fn snapshot_vm(
    S(h): S<State>,
    Path(name): Path<String>,
    Json(req): Json<VmSnapshot>,
) -> R<(StatusCode, Json<serde_json::Value>)> {
    blocking(&h, "vm_snapshot", move |h| {
        h.snapshot_vm(&name, req.disk.as_deref(), &req.name)
    })
    .await
    .map(|s| (StatusCode::CREATED, Json(s)))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ConsoleQuery {
    /// Keep streaming what the guest writes.
    #[serde(default)]
    pub follow: bool,
}

/// The serial console's log; with `follow`, streamed as it grows.
#[utoipa::path(get, path = "/v1/vms/{name}/console", params(ConsoleQuery),
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn vm_console(
    S(h): S<State>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<ConsoleQuery>,
) -> R<Response> {
    let path = blocking(&h, "vm_console", move |h| h.vm_console(&name)).await?;
    let text = |b: Vec<u8>| ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], b);
    if !q.follow {
        let b = tokio::task::spawn_blocking(move || std::fs::read(path).unwrap_or_default())
            .await
            .unwrap_or_default();
        return Ok(text(b).into_response());
    }
    // Polls the log: what was written since the last look, every 200 ms.
    let stream = futures_util::stream::unfold(0u64, move |at| {
        let path = path.clone();
        async move {
            loop {
                let chunk = read_from(&path, at).await;
                if !chunk.is_empty() {
                    let next = at + chunk.len() as u64;
                    return Some((Ok::<_, std::convert::Infallible>(chunk), next));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The file's bytes from `at` on (at most 64 KiB), none if it is shorter.
async fn read_from(path: &std::path::Path, at: u64) -> Vec<u8> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let mut buf = vec![0u8; 64 << 10];
        let n = std::fs::File::open(&path)
            .and_then(|mut f| {
                f.seek(std::io::SeekFrom::Start(at))?;
                f.read(&mut buf)
            })
            .unwrap_or(0);
        buf.truncate(n);
        buf
    })
    .await
    .unwrap_or_default()
}

#[utoipa::path(post, path = "/v1/volumes/{id}/session", params(OpenQuery),
    responses((status = 200, description = "open for writing on this host, lease held, exported", body = VolumeDetail),
              (status = 409, description = "open on another host", body = ErrorBody)))]
async fn open_session(
    S(h): S<State>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<OpenQuery>,
) -> R<Json<VolumeDetail>> {
    blocking(&h, "session_open", move |h| h.open_session(&id, q.wait))
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/v1/volumes/{id}/session", responses((status = 204)))]
async fn close_session(S(h): S<State>, Path(id): Path<String>) -> R<StatusCode> {
    blocking(&h, "session_close", move |h| h.close_session(&id))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/volumes/{id}/snapshots", responses((status = 200, body = [SnapshotInfo])))]
async fn list_snapshots(S(h): S<State>, Path(id): Path<String>) -> R<Json<Vec<SnapshotInfo>>> {
    blocking(&h, "snapshot_list", move |h| {
        Ok(h.resolve(&id)?.1.snapshots)
    })
    .await
    .map(Json)
}

#[utoipa::path(post, path = "/v1/volumes/{id}/snapshots", request_body = CreateSnapshot,
    responses((status = 201, body = SnapshotInfo), (status = 200, description = "exists already", body = SnapshotInfo)))]
async fn create_snapshot(
    S(h): S<State>,
    Path(id): Path<String>,
    Json(req): Json<CreateSnapshot>,
) -> R<(StatusCode, Json<SnapshotInfo>)> {
    let (s, new) = blocking(&h, "snapshot_create", move |h| h.create_snapshot(&id, &req)).await?;
    Ok((
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(s),
    ))
}

#[utoipa::path(delete, path = "/v1/volumes/{id}/snapshots/{snap}", responses((status = 204)))]
async fn delete_snapshot(
    S(h): S<State>,
    Path((id, snap)): Path<(String, String)>,
) -> R<StatusCode> {
    blocking(&h, "snapshot_delete", move |h| {
        h.delete_snapshot(&id, &snap)
    })
    .await
    .map(|()| StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/volumes/{id}/snapshots/{snap}/revert", responses((status = 200, body = VolumeDetail)))]
async fn revert_snapshot(
    S(h): S<State>,
    Path((id, snap)): Path<(String, String)>,
) -> R<Json<VolumeDetail>> {
    blocking(&h, "snapshot_revert", move |h| h.revert(&id, &snap))
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/v1/volumes/{id}/clones", request_body = CreateClone,
    responses((status = 201, description = "linked clone made (or repeated create)", body = CloneStarted),
              (status = 202, description = "full clone copying: follow the job", body = CloneStarted)))]
async fn create_clone(
    S(h): S<State>,
    Path(id): Path<String>,
    Json(req): Json<CreateClone>,
) -> R<(StatusCode, Json<CloneStarted>)> {
    let c = blocking(&h, "volume_clone", move |h| h.clone_volume(&id, &req)).await?;
    let code = match c {
        CloneStarted::Done(_) => StatusCode::CREATED,
        CloneStarted::Job(_) => StatusCode::ACCEPTED,
    };
    Ok((code, Json(c)))
}

#[utoipa::path(get, path = "/v1/jobs", responses((status = 200, body = [JobInfo])))]
async fn list_jobs(S(h): S<State>) -> R<Json<Vec<JobInfo>>> {
    blocking(&h, "job_list", |h| Ok(h.jobs())).await.map(Json)
}

#[utoipa::path(get, path = "/v1/jobs/{id}", responses((status = 200, body = JobInfo), (status = 404, body = ErrorBody)))]
async fn show_job(S(h): S<State>, Path(id): Path<String>) -> R<Json<JobInfo>> {
    blocking(&h, "job_show", move |h| h.job(&id))
        .await
        .map(Json)
}

/// One JSON event per line, for as long as the client reads.
#[utoipa::path(get, path = "/v1/events", responses((status = 200, content_type = "application/x-ndjson", body = Event)))]
async fn events(S(h): S<State>) -> Response {
    let rx = h.events.subscribe();
    let stream = tokio_stream_from(rx).map(|e| {
        let mut line = serde_json::to_string(&e).unwrap_or_default();
        line.push('\n');
        Ok::<_, std::convert::Infallible>(line)
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Lagging subscribers skip what they missed rather than stop.
fn tokio_stream_from(
    rx: tokio::sync::broadcast::Receiver<Event>,
) -> impl futures_util::Stream<Item = Event> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(S(h): S<State>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
