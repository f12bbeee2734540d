//! Routes, one handler each; the OpenAPI document is derived from them.

use super::{blocking, ApiError, ErrorBody, State};
use crate::clones::{CloneMode, CloneStarted, CreateClone, JobInfo};
use crate::events::Event;
use crate::host::*;
use crate::luns::LunInfo;
use crate::model::{SnapshotInfo, VolumeRecord};
use crate::pool::{PoolLun, PoolStatus};
use crate::snapshots::CreateSnapshot;
use crate::vms::{AttachRequest, AttachedPv, AttachedSnapshot, Attachment, LeaseSpec};
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
