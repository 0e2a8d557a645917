//! `filesystem.Filesystem` (E2B contract §3.7) on the agent's file code, plus inotify watchers.
//!
//! Entries come from [`crate::files`] (lstat, names, `ls`-style permissions) and are written in
//! protobuf-JSON as `EntryInfo`. Directories envd creates (MakeDir, Move's and uploads' missing
//! parents) belong to the calling user.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use wrenn_types::files::{FileEntry, FileType, ListRequest, PathRequest};

use super::connect::{self, stream_error, stream_response, Code, RpcError};
use super::{request_user, resolve_path};
use crate::files;
use crate::state::SharedState;
use crate::users::{Names, User};

/// Events a `CreateWatcher` watcher buffers between two `GetWatcherEvents`; more are dropped.
const MAX_BUFFERED_EVENTS: usize = 10_000;
/// Most directories one recursive watch follows.
const MAX_WATCHED_DIRS: usize = 8_192;

/// `EntryInfo` of a [`FileEntry`].
pub fn entry_info(e: &FileEntry) -> Value {
    let kind = match e.file_type {
        Some(FileType::File) => "FILE_TYPE_FILE",
        Some(FileType::Directory) => "FILE_TYPE_DIRECTORY",
        Some(FileType::Symlink) => "FILE_TYPE_SYMLINK",
        None => "FILE_TYPE_UNSPECIFIED",
    };
    let modified = chrono::DateTime::from_timestamp(e.modified_at, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut v = json!({
        "name": e.name,
        "type": kind,
        "path": e.path,
        "size": e.size.to_string(),
        "mode": e.mode,
        "permissions": e.permissions,
        "owner": e.owner,
        "group": e.group,
        "modifiedTime": modified,
    });
    if let Some(t) = &e.symlink_target {
        v["symlinkTarget"] = Value::String(t.clone());
    }
    v
}

fn stat_entry(path: &str) -> Result<Value, RpcError> {
    let (entry, _) = files::entry_of(&Names::load(), path)
        .map_err(|e| RpcError::from(files::io_error("stat", path, &e)))?;
    Ok(entry_info(&entry))
}

/// Creates `dir` and its missing parents, each owned by `user`. Fails with `AlreadyExists`
/// when `dir` exists (as anything) and with `NotADirectory` when a parent is not a directory.
pub fn create_dirs_owned(dir: &FsPath, user: &User) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        match std::fs::symlink_metadata(p) {
            Ok(_) if p == dir => return Err(io::ErrorKind::AlreadyExists.into()),
            Ok(_) => {
                if !std::fs::metadata(p).is_ok_and(|m| m.is_dir()) {
                    return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
                }
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(p),
            Err(e) => return Err(e),
        }
        cur = p.parent();
    }
    for p in missing.into_iter().rev() {
        match std::fs::create_dir(p) {
            Ok(()) => std::os::unix::fs::lchown(p, Some(user.uid), Some(user.gid))?,
            // Created concurrently: fine for a parent.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p != dir => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates the missing parents of `path`, owned by `user`.
pub fn create_parents_owned(path: &FsPath, user: &User) -> io::Result<()> {
    match path.parent() {
        Some(parent) => match create_dirs_owned(parent, user) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        },
        None => Ok(()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PathMessage {
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ListDirRequest {
    path: String,
    #[serde(deserialize_with = "connect::de_int")]
    depth: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MoveRequest {
    source: String,
    destination: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WatchRequest {
    path: String,
    recursive: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WatcherRequest {
    #[serde(alias = "watcher_id")]
    watcher_id: String,
}

impl WatcherRequest {
    fn id(&self) -> Result<&str, RpcError> {
        if self.watcher_id.is_empty() {
            return Err(RpcError::invalid("watcherId is required"));
        }
        Ok(&self.watcher_id)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RpcError::internal(format!("file task failed: {e}")))?
}

/// `POST /envd/filesystem.Filesystem/{method}`.
pub async fn call(
    State(state): State<SharedState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method == "WatchDir" {
        return watch_dir(state, headers, body)
            .await
            .unwrap_or_else(stream_error);
    }
    unary(state, &method, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn unary(
    state: SharedState,
    method: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RpcError> {
    let body = axum::body::to_bytes(body, connect::MAX_MESSAGE)
        .await
        .map_err(|e| RpcError::invalid(format!("reading request: {e}")))?;
    let user = request_user(&state, &headers, None)?;
    let reply = match method {
        "Stat" => {
            let req: PathMessage = connect::parse_unary(&headers, &body)?;
            let path = resolve_path(&req.path, &user.home)?;
            blocking(move || Ok(json!({"entry": stat_entry(&path)?}))).await?
        }
        "ListDir" => {
            let req: ListDirRequest = connect::parse_unary(&headers, &body)?;
            let path = resolve_path(&req.path, &user.home)?;
            let Json(list) = files::list(Ok(Json(ListRequest {
                path,
                depth: req.depth.max(1),
            })))
            .await
            .map_err(RpcError::from)?;
            let entries: Vec<Value> = list.entries.iter().map(entry_info).collect();
            json!({ "entries": entries })
        }
        "MakeDir" => {
            let req: PathMessage = connect::parse_unary(&headers, &body)?;
            let path = resolve_path(&req.path, &user.home)?;
            blocking(move || {
                create_dirs_owned(FsPath::new(&path), &user).map_err(
                    |e| match std::fs::metadata(&path) {
                        Ok(m) if m.is_dir() => RpcError::new(
                            Code::AlreadyExists,
                            format!("directory {path} already exists"),
                        ),
                        Ok(_) => RpcError::invalid(format!(
                            "{path} already exists and is not a directory"
                        )),
                        Err(_) => RpcError::from(files::io_error("make dir", &path, &e)),
                    },
                )?;
                Ok(json!({"entry": stat_entry(&path)?}))
            })
            .await?
        }
        "Move" => {
            let req: MoveRequest = connect::parse_unary(&headers, &body)?;
            let source = resolve_path(&req.source, &user.home)?;
            let dest = resolve_path(&req.destination, &user.home)?;
            blocking(move || {
                std::fs::symlink_metadata(&source)
                    .map_err(|e| RpcError::from(files::io_error("move", &source, &e)))?;
                create_parents_owned(FsPath::new(&dest), &user)
                    .map_err(|e| RpcError::from(files::io_error("move", &dest, &e)))?;
                std::fs::rename(&source, &dest).map_err(|e| match e.raw_os_error() {
                    Some(libc::EXDEV) => RpcError::new(
                        Code::FailedPrecondition,
                        format!("cannot move {source} to {dest}: different file systems"),
                    ),
                    Some(libc::ENOTEMPTY) => RpcError::invalid(format!(
                        "cannot move {source} to {dest}: destination is a non-empty directory"
                    )),
                    _ => RpcError::from(files::io_error("move", &source, &e)),
                })?;
                Ok(json!({"entry": stat_entry(&dest)?}))
            })
            .await?
        }
        "Remove" => {
            let req: PathMessage = connect::parse_unary(&headers, &body)?;
            let path = resolve_path(&req.path, &user.home)?;
            match files::remove(Ok(Json(PathRequest { path }))).await {
                Ok(_) => json!({}),
                Err(e) if e.code == wrenn_types::error::AgentErrorCode::NotFound => json!({}),
                Err(e) => return Err(e.into()),
            }
        }
        "CreateWatcher" => {
            let req: WatchRequest = connect::parse_unary(&headers, &body)?;
            let path = resolve_path(&req.path, &user.home)?;
            let watch = DirWatch::open(&path, req.recursive)?;
            let id = format!("w-{:016x}", rand::random::<u64>());
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let task = tokio::spawn(collect(watch, Arc::clone(&buffer)));
            state.envd.watchers().insert(
                id.clone(),
                Watcher {
                    buffer,
                    task: task.abort_handle(),
                },
            );
            json!({ "watcherId": id })
        }
        "GetWatcherEvents" => {
            let req: WatcherRequest = connect::parse_unary(&headers, &body)?;
            let id = req.id()?;
            let buffer = state
                .envd
                .watchers()
                .get(id)
                .map(|w| Arc::clone(&w.buffer))
                .ok_or_else(|| RpcError::not_found(format!("watcher {id} not found")))?;
            let events = std::mem::take(&mut *buffer.lock().unwrap_or_else(|p| p.into_inner()));
            json!({ "events": events })
        }
        "RemoveWatcher" => {
            let req: WatcherRequest = connect::parse_unary(&headers, &body)?;
            let id = req.id()?;
            let w = state
                .envd
                .watchers()
                .remove(id)
                .ok_or_else(|| RpcError::not_found(format!("watcher {id} not found")))?;
            w.task.abort();
            json!({})
        }
        other => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("filesystem.Filesystem/{other} is not implemented"),
            ))
        }
    };
    Ok(connect::unary(&reply))
}

/// A `CreateWatcher` watcher: its events since the last `GetWatcherEvents`.
#[derive(Debug)]
pub struct Watcher {
    buffer: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::AbortHandle,
}

/// Watchers by id.
pub type Watchers = HashMap<String, Watcher>;

async fn collect(mut watch: DirWatch, buffer: Arc<Mutex<Vec<Value>>>) {
    loop {
        match watch.next_events().await {
            Ok(events) => {
                let mut buf = buffer.lock().unwrap_or_else(|p| p.into_inner());
                let room = MAX_BUFFERED_EVENTS.saturating_sub(buf.len());
                buf.extend(events.into_iter().take(room));
            }
            Err(error) => {
                tracing::debug!(%error, "watcher stopped");
                return;
            }
        }
    }
}

async fn watch_dir(
    state: SharedState,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RpcError> {
    connect::check_stream_content_type(&headers)?;
    let req: WatchRequest = connect::read_single_envelope(body).await?;
    let user = request_user(&state, &headers, None)?;
    let path = resolve_path(&req.path, &user.home)?;
    let mut watch = DirWatch::open(&path, req.recursive)?;
    let keepalive = connect::keepalive_interval(&headers);
    let (resp, sender) = stream_response();
    tokio::spawn(async move {
        if !sender.send(&json!({"start": {}})).await {
            return;
        }
        let mut ka = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        loop {
            tokio::select! {
                r = watch.next_events() => match r {
                    Ok(events) => {
                        for e in events {
                            if !sender.send(&json!({"filesystem": e})).await {
                                return;
                            }
                        }
                        ka.reset();
                    }
                    Err(e) => {
                        return sender.end(Some(RpcError::internal(format!("watching {}: {e}", watch.root)))).await;
                    }
                },
                _ = ka.tick() => {
                    if !sender.send(&json!({"keepalive": {}})).await {
                        return;
                    }
                }
                _ = sender.closed() => return,
            }
        }
    });
    Ok(resp)
}

/// inotify on one directory (and, recursive, the directories below it, new ones included).
struct DirWatch {
    root: String,
    recursive: bool,
    inotify: Inotify,
    /// A duplicate of the inotify descriptor, registered for readiness.
    ready: AsyncFd<OwnedFd>,
    /// Watched directory by descriptor, relative to `root` ("" for the root).
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

fn watch_flags() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DONT_FOLLOW
        | AddWatchFlags::IN_ONLYDIR
}

impl DirWatch {
    fn open(root: &str, recursive: bool) -> Result<Self, RpcError> {
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(RpcError::invalid(format!("{root} is not a directory"))),
            Err(e) => return Err(files::io_error("watch", root, &e).into()),
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| RpcError::internal(format!("inotify: {e}")))?;
        let ready = inotify
            .as_fd()
            .try_clone_to_owned()
            .and_then(crate::sys::async_fd)
            .map_err(|e| RpcError::internal(format!("inotify: {e}")))?;
        let mut w = Self {
            root: root.to_string(),
            recursive,
            inotify,
            ready,
            dirs: HashMap::new(),
        };
        w.add(PathBuf::new())
            .map_err(|e| RpcError::internal(format!("watch {root}: {e}")))?;
        Ok(w)
    }

    /// Watches `rel` (and with `recursive` its subdirectories).
    fn add(&mut self, rel: PathBuf) -> nix::Result<()> {
        if self.dirs.len() >= MAX_WATCHED_DIRS {
            return Ok(());
        }
        let abs = FsPath::new(&self.root).join(&rel);
        let wd = self.inotify.add_watch(&abs, watch_flags())?;
        self.dirs.insert(wd, rel.clone());
        if self.recursive {
            if let Ok(children) = std::fs::read_dir(&abs) {
                for c in children.filter_map(Result::ok) {
                    if c.file_type().is_ok_and(|t| t.is_dir()) {
                        // A subdirectory that vanished meanwhile is skipped.
                        let _ = self.add(rel.join(c.file_name()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits for the next batch of events, as `FilesystemEvent`s.
    async fn next_events(&mut self) -> io::Result<Vec<Value>> {
        loop {
            let mut guard = self.ready.readable().await?;
            let inotify = &self.inotify;
            let events = match guard.try_io(|_| inotify.read_events().map_err(io::Error::from)) {
                Ok(r) => r?,
                Err(_would_block) => continue,
            };
            let mut out = Vec::new();
            for ev in events {
                let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
                    continue;
                };
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.dirs.remove(&ev.wd);
                    continue;
                }
                let Some(name) = ev.name.as_deref() else {
                    continue;
                };
                let rel = dir.join(name);
                let m = ev.mask;
                let kind = if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                    "EVENT_TYPE_CREATE"
                } else if m.intersects(AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE) {
                    "EVENT_TYPE_WRITE"
                } else if m.contains(AddWatchFlags::IN_DELETE) {
                    "EVENT_TYPE_REMOVE"
                } else if m.contains(AddWatchFlags::IN_MOVED_FROM) {
                    "EVENT_TYPE_RENAME"
                } else if m.contains(AddWatchFlags::IN_ATTRIB) {
                    "EVENT_TYPE_CHMOD"
                } else {
                    continue;
                };
                if self.recursive
                    && m.contains(AddWatchFlags::IN_ISDIR)
                    && m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                {
                    let _ = self.add(rel.clone());
                }
                out.push(json!({"name": lossy(rel.as_os_str()), "type": kind}));
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

fn lossy(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_info_is_protobuf_json() {
        let e = FileEntry {
            name: "a.txt".into(),
            path: "/home/user/a.txt".into(),
            file_type: Some(FileType::File),
            size: 11,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "user".into(),
            group: "user".into(),
            modified_at: 1_772_366_400,
            symlink_target: None,
        };
        assert_eq!(
            entry_info(&e),
            json!({"name": "a.txt", "type": "FILE_TYPE_FILE", "path": "/home/user/a.txt",
                   "size": "11", "mode": 420, "permissions": "-rw-r--r--", "owner": "user",
                   "group": "user", "modifiedTime": "2026-03-01T12:00:00Z"})
        );
    }

    #[test]
    fn dirs_are_created_with_their_parents() {
        let tmp = tempfile::tempdir().expect("tmp");
        let user = crate::users::resolve(None).expect("root");
        let d = tmp.path().join("a/b/c");
        create_dirs_owned(&d, &user).expect("create");
        assert!(d.is_dir());
        let again = create_dirs_owned(&d, &user).expect_err("exists");
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        std::fs::write(tmp.path().join("f"), b"").expect("file");
        let under_file = create_dirs_owned(&tmp.path().join("f/x"), &user).expect_err("enotdir");
        assert_eq!(under_file.raw_os_error(), Some(libc::ENOTDIR));
        create_parents_owned(&tmp.path().join("p/q/file"), &user).expect("parents");
        assert!(tmp.path().join("p/q").is_dir());
    }
}
