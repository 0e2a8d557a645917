//! Filesystem routes (contract §8). Uploads and downloads stream through without holding a
//! whole file in memory (the non-streamed write buffers only when `file` precedes `path`).

use axum::body::Body as HttpBody;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{Multipart, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use wrenn_types::files::{EntryResponse, ListRequest, ListResponse, PathRequest};

use super::{input, UPLOAD_LIMIT};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::service::LiveCapsule;
use crate::AppState;

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(e.body_text())
    } else {
        ApiError::InvalidRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// Streams one multipart field into `path` through the agent. With a `limit`, a larger field
/// aborts the write (the agent discards the partial file) and answers 413.
async fn pump_field(
    live: &LiveCapsule,
    path: &str,
    first: Vec<Bytes>,
    mut field: Option<Field<'_>>,
    limit: Option<u64>,
) -> ApiResult<()> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let body = tokio_stream_from(rx);
    let agent = live.agent().clone();
    let target = path.to_owned();
    let writer = tokio::spawn(async move { agent.write(&target, body).await });
    let mut total: u64 = 0;
    let mut failure: Option<ApiError> = None;
    let mut chunks = first.into_iter();
    loop {
        let next = match chunks.next() {
            Some(c) => Ok(Some(c)),
            None => match field.as_mut() {
                Some(f) => f.chunk().await,
                None => Ok(None),
            },
        };
        match next {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if limit.is_some_and(|l| total > l) {
                    failure = Some(ApiError::PayloadTooLarge(format!(
                        "file is larger than {} bytes; use files/stream/write",
                        UPLOAD_LIMIT
                    )));
                    break;
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Ok(None) => break,
            Err(e) => {
                failure = Some(multipart_error(e));
                break;
            }
        }
    }
    if failure.is_some() {
        let _ = tx.send(Err(std::io::Error::other("upload aborted"))).await;
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("upload task failed: {e}")))?;
    match failure {
        Some(e) => Err(e),
        None => Ok(written?),
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn upload(
    state: AppState,
    caller: Caller,
    id: String,
    multipart: Result<Multipart, MultipartRejection>,
    limit: Option<u64>,
) -> ApiResult<StatusCode> {
    let mut multipart = multipart
        .map_err(|e| ApiError::InvalidRequest(format!("expected a multipart body: {e}")))?;
    let live = state.capsules.running(&caller.team_id, &id).await?;
    let mut path: Option<String> = None;
    let mut early_file: Option<Vec<Bytes>> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("path") => {
                let text = field.text().await.map_err(multipart_error)?;
                input::path(&text)?;
                if let Some(buffered) = early_file.take() {
                    pump_field(&live, &text, buffered, None, limit).await?;
                    state.capsules.touch(&live);
                    return Ok(StatusCode::NO_CONTENT);
                }
                path = Some(text);
            }
            Some("file") => match &path {
                Some(p) => {
                    pump_field(&live, p, Vec::new(), Some(field), limit).await?;
                    state.capsules.touch(&live);
                    return Ok(StatusCode::NO_CONTENT);
                }
                None if limit.is_some() => {
                    // `file` before `path`: hold it (bounded by the limit) until the path comes.
                    let mut chunks = Vec::new();
                    let mut total = 0u64;
                    while let Some(c) = field.chunk().await.map_err(multipart_error)? {
                        total += c.len() as u64;
                        if limit.is_some_and(|l| total > l) {
                            return Err(ApiError::PayloadTooLarge(format!(
                                "file is larger than {UPLOAD_LIMIT} bytes; use files/stream/write"
                            )));
                        }
                        chunks.push(c);
                    }
                    early_file = Some(chunks);
                }
                None => {
                    return Err(ApiError::InvalidRequest(
                        "the path part must come before the file part".into(),
                    ))
                }
            },
            _ => {} // unknown parts are skipped
        }
    }
    Err(ApiError::InvalidRequest(match (path, early_file) {
        (None, _) => "multipart part \"path\" is required".into(),
        (Some(_), _) => "multipart part \"file\" is required".into(),
    }))
}

pub(super) async fn write(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<StatusCode> {
    upload(state, caller, id, multipart, Some(UPLOAD_LIMIT)).await
}

pub(super) async fn stream_write(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<StatusCode> {
    upload(state, caller, id, multipart, None).await
}

async fn download(
    state: AppState,
    caller: Caller,
    id: String,
    req: PathRequest,
    with_length: bool,
) -> ApiResult<Response> {
    input::path(&req.path)?;
    let live = state.capsules.running(&caller.team_id, &id).await?;
    let (len, stream) = live.agent().read(&req.path).await?;
    let body = HttpBody::from_stream(stream.map(|r| r.map_err(std::io::Error::other)));
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let (true, Some(len)) = (with_length, len) {
        resp = resp.header(header::CONTENT_LENGTH, len);
    }
    resp.body(body).map_err(ApiError::internal)
}

pub(super) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PathRequest>,
) -> ApiResult<Response> {
    download(state, caller, id, req, true).await
}

pub(super) async fn stream_read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PathRequest>,
) -> ApiResult<Response> {
    download(state, caller, id, req, false).await
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<ListRequest>,
) -> ApiResult<Json<ListResponse>> {
    input::path(&req.path)?;
    let live = state.capsules.running(&caller.team_id, &id).await?;
    Ok(Json(live.agent().list(&req.path, req.depth.max(1)).await?))
}

pub(super) async fn mkdir(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PathRequest>,
) -> ApiResult<Json<EntryResponse>> {
    input::path(&req.path)?;
    let live = state.capsules.running(&caller.team_id, &id).await?;
    let entry = live.agent().mkdir(&req.path).await?;
    Ok(Json(EntryResponse { entry }))
}

pub(super) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PathRequest>,
) -> ApiResult<impl IntoResponse> {
    input::path(&req.path)?;
    let live = state.capsules.running(&caller.team_id, &id).await?;
    live.agent().remove(&req.path).await?;
    Ok(StatusCode::NO_CONTENT)
}
