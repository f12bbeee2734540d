//! The REST/JSON API: the same routes on the Unix socket (mode 0600: who
//! can open it is the access check) and, when configured, on TCP behind a
//! bearer token. Operations block on storage and leases, so each runs on a
//! blocking thread. `GET /v1/openapi.json` describes every route.

mod routes;

use crate::host::Host;
use crate::Error;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

pub use routes::{router, ApiDoc};

/// What every error response carries.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `invalid`, `not_found`, `conflict`, `no_space`, `unavailable`, `storage`.
    pub error: String,
    /// What went wrong and what to do.
    pub message: String,
}

pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::Invalid(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// 401 with the usual error body (TCP clients without the right token).
pub fn unauthorized(message: &str) -> Response {
    let body = ErrorBody {
        error: "unauthorized".into(),
        message: message.into(),
    };
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

pub struct ApiError(pub Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.0.kind().into(),
            message: self.0.to_string(),
        };
        (status_of(&self.0), Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub type State = Arc<Host>;

/// Runs a blocking operation of the host, timing it for the metrics.
pub async fn blocking<T: Send + 'static>(
    host: &State,
    op: &'static str,
    f: impl FnOnce(&Arc<Host>) -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let h = host.clone();
    let t = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || f(&h))
        .await
        .map_err(|e| ApiError(Error::Storage(format!("{op} stopped: {e}"))))?;
    host.metrics.op(op, r.is_ok(), t.elapsed().as_secs_f64());
    r.map_err(ApiError)
}
