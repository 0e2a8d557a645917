//! envd's plain HTTP routes (E2B contract §4): `GET /health`, `GET|POST /files`, `GET /envs`,
//! and the server-only `PUT /envd-config`.
//!
//! Errors are `{"code": <status>, "message"}`. Uploads stream to a temporary file beside the
//! target (renamed over it when complete, owned by the user), so any size works and a failed
//! upload leaves nothing behind; `Content-Encoding: gzip` is decoded on the way.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use wrenn_types::envd::EnvdConfig;
use wrenn_types::files::PathRequest;

use super::connect::RpcError;
use super::filesystem::create_parents_owned;
use super::{request_user, resolve_path};
use crate::error::{json_rejection, ApiError};
use crate::files;
use crate::state::SharedState;
use crate::users::User;

/// An envd HTTP error.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// From an I/O error of `op` on `path`: ENOSPC/EDQUOT → 507, the rest as the file code maps.
    fn io(op: &str, path: &str, e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("{op} {path}: not enough disk space"),
            ),
            _ => RpcError::from(files::io_error(op, path, e)).into(),
        }
    }
}

impl From<RpcError> for HttpError {
    fn from(e: RpcError) -> Self {
        Self::new(e.code.status(), e.message)
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        RpcError::from(e).into()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::INSUFFICIENT_STORAGE {
            tracing::error!(message = %self.message, "envd request failed");
        }
        let body = json!({"code": self.status.as_u16(), "message": self.message});
        (self.status, Json(body)).into_response()
    }
}

/// `GET /envd/health`.
pub async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The sandbox's default environment: create's `envVars` plus `E2B_SANDBOX`.
pub fn default_envs(state: &SharedState) -> BTreeMap<String, String> {
    let mut envs = state.envd.config().env_vars;
    envs.insert("E2B_SANDBOX".to_string(), "true".to_string());
    envs
}

/// `GET /envd/envs`.
pub async fn envs(State(state): State<SharedState>) -> Json<BTreeMap<String, String>> {
    Json(default_envs(&state))
}

/// `PUT /envd-config` (server only); also publishes the environment to
/// [`super::envfile::ENV_FILE`].
pub async fn put_config(
    State(state): State<SharedState>,
    config: Result<Json<EnvdConfig>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(config) = config.map_err(json_rejection)?;
    state.envd.set_config(config);
    // Best effort: envd's own processes have the environment either way.
    if let Err(e) = super::envfile::publish(&default_envs(&state)) {
        tracing::warn!(error = %e, path = super::envfile::ENV_FILE, "cannot write the sandbox environment file");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `/envd/files`.
#[derive(Debug, Default, Deserialize)]
pub struct FilesQuery {
    path: Option<String>,
    username: Option<String>,
}

/// `GET /envd/files?path=&username=`: the file's bytes, streamed.
pub async fn download(
    State(state): State<SharedState>,
    Query(query): Query<FilesQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let user = request_user(&state, &headers, query.username.as_deref())?;
    let path = resolve_path(query.path.as_deref().unwrap_or(""), &user.home)?;
    let mut resp = files::read(Ok(Json(PathRequest { path: path.clone() }))).await?;
    let name = Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\\', '\r', '\n'], "_"))
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

type ByteStream = BoxStream<'static, Result<Bytes, io::Error>>;

/// `POST /envd/files`: multipart (parts named `file`) or octet-stream, optionally gzip.
pub async fn upload(
    State(state): State<SharedState>,
    Query(query): Query<FilesQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<Value>>, HttpError> {
    let user = request_user(&state, &headers, query.username.as_deref())?;
    let raw = body.into_data_stream().map(|r| r.map_err(io::Error::other));
    let stream: ByteStream = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => raw.boxed(),
        Some("gzip") | Some("x-gzip") => gunzip(raw).boxed(),
        Some(other) => {
            return Err(HttpError::bad(format!(
                "unsupported content encoding {other:?}"
            )))
        }
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let path_query = query.path.filter(|p| !p.is_empty());
    match mime.as_str() {
        "multipart/form-data" => {
            let boundary = multer::parse_boundary(ct)
                .map_err(|e| HttpError::bad(format!("bad multipart content type: {e}")))?;
            let mut multipart = multer::Multipart::new(stream, boundary);
            let mut written = Vec::new();
            let mut seen = HashSet::new();
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|e| HttpError::bad(format!("bad multipart body: {e}")))?
            {
                if field.name() != Some("file") {
                    continue;
                }
                let target = match (&path_query, field.file_name()) {
                    (Some(p), _) => p.clone(),
                    (None, Some(f)) if !f.is_empty() => f.to_string(),
                    _ => return Err(HttpError::bad("a file part has no path (no ?path= and no filename)")),
                };
                let path = resolve_path(&target, &user.home)?;
                if !seen.insert(path.clone()) {
                    return Err(HttpError::bad(format!("{path} is uploaded twice in one request")));
                }
                let mut field = field.map(|r| r.map_err(io::Error::other));
                written.push(write_file(&path, &user, &mut field).await?);
            }
            Ok(Json(written))
        }
        "application/octet-stream" => {
            let target = path_query
                .ok_or_else(|| HttpError::bad("octet-stream uploads need ?path="))?;
            let path = resolve_path(&target, &user.home)?;
            let mut stream = stream;
            Ok(Json(vec![write_file(&path, &user, &mut stream).await?]))
        }
        other => Err(HttpError::bad(format!(
            "unsupported content type {other:?}: use multipart/form-data or application/octet-stream"
        ))),
    }
}

/// Decodes a gzip body as it streams.
fn gunzip(
    inner: impl Stream<Item = Result<Bytes, io::Error>> + Send + Unpin + 'static,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send {
    let decoder = Some(flate2::write::GzDecoder::new(Vec::new()));
    futures_util::stream::unfold((inner, decoder), |(mut inner, mut decoder)| async move {
        loop {
            let dec = decoder.as_mut()?;
            match inner.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = dec.write_all(&chunk) {
                        let e = io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {e}"));
                        return Some((Err(e), (inner, None)));
                    }
                    let out = std::mem::take(dec.get_mut());
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), (inner, decoder)));
                    }
                }
                Some(Err(e)) => return Some((Err(e), (inner, None))),
                None => {
                    let mut dec = decoder.take()?;
                    let r = dec
                        .try_finish()
                        .map(|()| Bytes::from(std::mem::take(dec.get_mut())))
                        .map_err(|e| {
                            io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {e}"))
                        });
                    return Some((r, (inner, None)));
                }
            }
        }
    })
}

/// Streams `body` into `path` (owned by `user`, parents created), via a temporary file renamed
/// over it. Returns the upload's entry `{"name", "type": "file", "path"}`.
async fn write_file<S>(path: &str, user: &User, body: &mut S) -> Result<Value, HttpError>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin + Send,
{
    let target = PathBuf::from(path);
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Err(HttpError::bad(format!("{path} is a directory")));
    };
    let prepared = {
        let (target, user, path) = (target.clone(), user.clone(), path.to_string());
        tokio::task::spawn_blocking(move || -> Result<Option<u32>, HttpError> {
            match std::fs::metadata(&target) {
                Ok(m) if m.is_dir() => {
                    return Err(HttpError::bad(format!("{path} is a directory")))
                }
                Ok(m) => return Ok(Some(m.permissions().mode())),
                Err(_) => {}
            }
            create_parents_owned(&target, &user).map_err(|e| HttpError::io("write", &path, &e))?;
            Ok(None)
        })
        .await
        .map_err(|e| {
            HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("file task failed: {e}"),
            )
        })??
    };
    let parent = target.parent().unwrap_or(Path::new("/"));
    let tmp = parent.join(format!(".{name}.wrenn-{:08x}.tmp", rand::random::<u32>()));
    let result = write_tmp(path, &tmp, user, prepared, body).await;
    let result = match result {
        Ok(()) => tokio::fs::rename(&tmp, &target)
            .await
            .map_err(|e| HttpError::io("write", path, &e)),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    Ok(json!({"name": name, "type": "file", "path": path}))
}

async fn write_tmp<S>(
    path: &str,
    tmp: &Path,
    user: &User,
    mode: Option<u32>,
    body: &mut S,
) -> Result<(), HttpError>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin + Send,
{
    let io_err = |e: io::Error| HttpError::io("write", path, &e);
    let mut file = tokio::fs::File::create(tmp).await.map_err(io_err)?;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => HttpError::bad(format!("write {path}: {e}")),
            _ => HttpError::bad(format!("write {path}: reading body: {e}")),
        })?;
        file.write_all(&chunk).await.map_err(io_err)?;
    }
    file.flush().await.map_err(io_err)?;
    let std_file = file.into_std().await;
    let (uid, gid) = (user.uid, user.gid);
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        std::os::unix::fs::fchown(&std_file, Some(uid), Some(gid))?;
        if let Some(mode) = mode {
            std_file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("file task failed: {e}"),
        )
    })?
    .map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gunzip_decodes_split_streams() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        enc.write_all(&data).expect("compress");
        let gz = enc.finish().expect("finish");
        let chunks: Vec<Result<Bytes, io::Error>> = gz
            .chunks(777)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let out: Vec<Result<Bytes, io::Error>> =
            gunzip(futures_util::stream::iter(chunks)).collect().await;
        let bytes: Vec<u8> = out
            .into_iter()
            .flat_map(|r| r.expect("chunk").to_vec())
            .collect();
        assert_eq!(bytes, data);
        let bad = vec![Ok(Bytes::from_static(b"not gzip at all"))];
        let out: Vec<_> = gunzip(futures_util::stream::iter(bad)).collect().await;
        assert!(out.iter().any(|r| r.is_err()));
    }
}
