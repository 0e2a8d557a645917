//! File endpoints (contract §8): streamed read and atomic streamed write, list, mkdir, remove,
//! stat. They run as the agent's user (root).
//!
//! Only regular files (and, where it makes sense, directories) are read or written: a FIFO, a
//! socket or a device file is refused at once with `invalid_request`, before it is opened and
//! again on the opened file (`O_NONBLOCK`, so even a FIFO swapped in between cannot block), so
//! no request can hang an agent thread on a pipe nobody writes or stream `/dev/zero` forever.
//! A file with no size of its own (procfs, sysfs, or any file whose size reads 0) is read whole,
//! at most [`MAX_PSEUDO_READ`] bytes, before answering: some never end
//! (`/proc/self/pagemap` spans the address space), some cannot be read at all
//! (`/proc/self/mem` at offset 0); both are `invalid_request`, not a stream cut off later.
//!
//! Errors keep the errno's meaning: ENOENT → `not_found`, ENOTDIR → `not_a_directory`, EISDIR →
//! `is_a_directory`, EEXIST → `already_exists`, EACCES/EPERM/EROFS → `permission_denied`.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;
use wrenn_types::error::AgentErrorCode;
use wrenn_types::files::{
    EntryResponse, FileEntry, FileType, ListRequest, ListResponse, PathRequest,
};

use crate::error::{json_rejection, ApiError};
use crate::users::Names;

/// Read chunk size of streamed downloads.
const READ_CHUNK: usize = 64 * 1024;
/// Most bytes read from a file with no size of its own; a longer one is refused.
pub const MAX_PSEUDO_READ: usize = 8 * 1024 * 1024;
/// Most entries one `files/list` answers; a bigger listing is refused, not truncated.
pub const MAX_LIST_ENTRIES: usize = 100_000;
/// Deepest `files/list` recursion; larger depths are clamped to it.
pub const MAX_LIST_DEPTH: u32 = 32;

/// Why a listing stopped.
#[derive(Debug, thiserror::Error)]
enum ListError {
    /// The listed directory itself cannot be read.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// More than the allowed number of entries.
    #[error("directory listing exceeds {max} entries; use a smaller depth")]
    TooMany {
        /// The cap.
        max: usize,
    },
}

fn check_path(path: &str) -> Result<String, ApiError> {
    if path.is_empty() {
        return Err(ApiError::invalid("path is required"));
    }
    if !path.starts_with('/') {
        return Err(ApiError::invalid(format!("path must be absolute: {path}")));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
}

/// Maps an I/O error of `op` on `path` to its agent error.
pub(crate) fn io_error(op: &str, path: &str, e: &io::Error) -> ApiError {
    let (code, reason) = match e.raw_os_error() {
        Some(libc::ENOENT) => (AgentErrorCode::NotFound, "no such file or directory"),
        Some(libc::ENOTDIR) => (AgentErrorCode::NotADirectory, "not a directory"),
        Some(libc::EISDIR) => (AgentErrorCode::IsADirectory, "is a directory"),
        Some(libc::EEXIST) => (AgentErrorCode::AlreadyExists, "already exists"),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            (AgentErrorCode::PermissionDenied, "permission denied")
        }
        Some(libc::EROFS) => (AgentErrorCode::PermissionDenied, "read-only file system"),
        Some(libc::ENAMETOOLONG) => (AgentErrorCode::InvalidRequest, "file name too long"),
        // A mount point of the capsule (`/dev/shm`, `/proc`): not the caller's to remove.
        Some(libc::EBUSY) => (AgentErrorCode::PermissionDenied, "busy (a mount point)"),
        _ => {
            return ApiError::new(AgentErrorCode::Internal, format!("{op} {path}: {e}"));
        }
    };
    ApiError::new(code, format!("{op} {path}: {reason}"))
}

/// The kind of a file the files API refuses to open: FIFO, socket or device.
fn special_kind(ft: fs::FileType) -> Option<&'static str> {
    if ft.is_fifo() {
        Some("fifo")
    } else if ft.is_socket() {
        Some("socket")
    } else if ft.is_char_device() {
        Some("character device")
    } else if ft.is_block_device() {
        Some("block device")
    } else {
        None
    }
}

/// Refuses `meta` when it is a FIFO, socket or device file.
fn refuse_special(op: &str, path: &str, meta: &Metadata) -> Result<(), ApiError> {
    match special_kind(meta.file_type()) {
        Some(kind) => Err(ApiError::invalid(format!(
            "{op} {path}: not a regular file ({kind})"
        ))),
        None => Ok(()),
    }
}

/// Opens `path` for reading, refusing special files before and after the open; the open
/// never blocks (`O_NONBLOCK`) and never takes a controlling terminal.
fn open_regular(path: &str) -> Result<(fs::File, Metadata), ApiError> {
    let before = fs::metadata(path).map_err(|e| io_error("read", path, &e))?;
    refuse_special("read", path, &before)?;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io_error("read", path, &e))?;
    // What was opened, whatever the path names by now.
    let meta = file.metadata().map_err(|e| io_error("read", path, &e))?;
    refuse_special("read", path, &meta)?;
    Ok((file, meta))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(AgentErrorCode::Internal, format!("file task failed: {e}")))?
}

/// `POST /files/read`: the file's bytes, streamed, with its length.
pub async fn read(req: Result<Json<PathRequest>, JsonRejection>) -> Result<Response, ApiError> {
    let path = check_path(&req.map_err(json_rejection)?.0.path)?;
    let (file, meta) = {
        let path = path.clone();
        blocking(move || open_regular(&path)).await?
    };
    if meta.is_dir() {
        return Err(ApiError::new(
            AgentErrorCode::IsADirectory,
            format!("read {path}: is a directory"),
        ));
    }
    let builder =
        axum::http::Response::builder().header(header::CONTENT_TYPE, "application/octet-stream");
    let body = if is_pseudo(&file, &meta) {
        let path = path.clone();
        let bytes = blocking(move || read_pseudo(&path, file, MAX_PSEUDO_READ)).await?;
        builder
            .header(header::CONTENT_LENGTH, bytes.len())
            .body(Body::from(bytes))
    } else {
        let file = tokio::fs::File::from_std(file);
        builder
            .header(header::CONTENT_LENGTH, meta.len())
            .body(Body::from_stream(ReaderStream::with_capacity(
                file.take(meta.len()),
                READ_CHUNK,
            )))
    };
    body.map_err(|e| ApiError::new(AgentErrorCode::Internal, format!("read {path}: {e}")))
}

/// Whether `file` has no size of its own: it lives on procfs or sysfs (whose sizes are 0 or a
/// page, whatever the content), or its size reads 0 (other pseudo filesystems; a really empty
/// file reads the same either way).
fn is_pseudo(file: &fs::File, meta: &Metadata) -> bool {
    use nix::sys::statfs::{fstatfs, PROC_SUPER_MAGIC, SYSFS_MAGIC};
    meta.len() == 0
        || fstatfs(file).is_ok_and(|st| {
            st.filesystem_type() == PROC_SUPER_MAGIC || st.filesystem_type() == SYSFS_MAGIC
        })
}

/// Reads all of the pseudo file `file` (at `path`), refusing it when it holds more than `max`
/// bytes, waits for data (it was opened `O_NONBLOCK`) or cannot be read.
fn read_pseudo(path: &str, mut file: fs::File, max: usize) -> Result<Vec<u8>, ApiError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    // Whole chunks: some pseudo files take reads of a multiple of their record only
    // (`pagemap`: 8 bytes).
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(bytes),
            Ok(n) if bytes.len() + n > max => {
                return Err(ApiError::invalid(format!(
                    "read {path}: a file without a size (procfs, sysfs) longer than {max} bytes \
                     is not read"
                )))
            }
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(ApiError::invalid(format!(
                    "read {path}: a file that waits for data is not read"
                )))
            }
            Err(e) => {
                return Err(match io_error("read", path, &e) {
                    err if err.code == AgentErrorCode::Internal => {
                        ApiError::invalid(format!("read {path}: cannot be read as a file ({e})"))
                    }
                    err => err,
                })
            }
        }
    }
}

/// Query of `POST /files/write`.
#[derive(Debug, Deserialize)]
pub struct WriteQuery {
    #[serde(default)]
    path: String,
}

/// `POST /files/write?path=`: the raw body into a temp file next to `path`, then renamed over it.
pub async fn write(
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let path = check_path(&query.path)?;
    let target = PathBuf::from(&path);
    let (parent, name) = match (target.parent(), target.file_name()) {
        (Some(p), Some(n)) => (p.to_path_buf(), n.to_string_lossy().into_owned()),
        _ => {
            return Err(ApiError::new(
                AgentErrorCode::IsADirectory,
                format!("write {path}: is a directory"),
            ))
        }
    };
    let existing_mode = {
        let path = path.clone();
        let parent = parent.clone();
        blocking(move || {
            if let Err(e) = fs::create_dir_all(&parent) {
                let e = match e.raw_os_error() {
                    // A parent component exists as a file.
                    Some(libc::EEXIST) => io::Error::from_raw_os_error(libc::ENOTDIR),
                    _ => e,
                };
                return Err(io_error("write", &path, &e));
            }
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => Err(ApiError::new(
                    AgentErrorCode::IsADirectory,
                    format!("write {path}: is a directory"),
                )),
                // The rename would replace it; a pipe or a device is not a file to upload to.
                Ok(m) => refuse_special("write", &path, &m).map(|()| Some(m.permissions())),
                Err(_) => Ok(None),
            }
        })
        .await?
    };
    let tmp = parent.join(format!(".{name}.wrenn-{:08x}.tmp", rand::random::<u32>()));
    let result = write_tmp(&path, &tmp, body, existing_mode).await;
    let result = match result {
        Ok(()) => tokio::fs::rename(&tmp, &target)
            .await
            .map_err(|e| io_error("write", &path, &e)),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result.map(|()| StatusCode::NO_CONTENT)
}

async fn write_tmp(
    path: &str,
    tmp: &Path,
    body: Body,
    mode: Option<fs::Permissions>,
) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| io_error("write", path, &e))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid(format!("write {path}: reading body: {e}")))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| io_error("write", path, &e))?;
    }
    if let Some(mode) = mode {
        file.set_permissions(mode)
            .await
            .map_err(|e| io_error("write", path, &e))?;
    }
    file.sync_data()
        .await
        .map_err(|e| io_error("write", path, &e))?;
    Ok(())
}

/// `POST /files/list`.
pub async fn list(
    req: Result<Json<ListRequest>, JsonRejection>,
) -> Result<Json<ListResponse>, ApiError> {
    let Json(req) = req.map_err(json_rejection)?;
    let path = check_path(&req.path)?;
    let depth = req.depth.clamp(1, MAX_LIST_DEPTH);
    blocking(move || {
        let meta = fs::metadata(&path).map_err(|e| io_error("list", &path, &e))?;
        if !meta.is_dir() {
            return Err(ApiError::new(
                AgentErrorCode::NotADirectory,
                format!("list {path}: not a directory"),
            ));
        }
        let names = Names::load();
        let mut entries = Vec::new();
        list_dir(&names, &path, depth, MAX_LIST_ENTRIES, &mut entries).map_err(|e| match e {
            ListError::Io(e) => io_error("list", &path, &e),
            e @ ListError::TooMany { .. } => ApiError::invalid(e.to_string()),
        })?;
        Ok(Json(ListResponse { entries }))
    })
    .await
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Appends the entries of `dir` (and of its subdirectories, `depth` levels down, never through
/// symlinks) to `out`, failing as soon as `out` would hold more than `max` entries.
fn list_dir(
    names: &Names,
    dir: &str,
    depth: u32,
    max: usize,
    out: &mut Vec<FileEntry>,
) -> Result<(), ListError> {
    let mut children = Vec::new();
    for child in fs::read_dir(dir)?.filter_map(Result::ok) {
        // Checked while reading, so a directory of millions of files is never held in memory.
        if out.len() + children.len() >= max {
            return Err(ListError::TooMany { max });
        }
        children.push(child.file_name().to_string_lossy().into_owned());
    }
    children.sort();
    for name in children {
        let path = join(dir, &name);
        // Entries may vanish while we list; skip those.
        let Ok((entry, meta)) = entry_of(names, &path) else {
            continue;
        };
        // Siblings of ancestors are pushed after their subtrees, so check every push too.
        if out.len() >= max {
            return Err(ListError::TooMany { max });
        }
        out.push(entry);
        if depth > 1 && meta.is_dir() {
            // Unreadable subdirectories are listed but not entered.
            match list_dir(names, &path, depth - 1, max, out) {
                Err(e @ ListError::TooMany { .. }) => return Err(e),
                Ok(()) | Err(ListError::Io(_)) => {}
            }
        }
    }
    Ok(())
}

/// The entry of `path` (lstat), with its lstat metadata.
pub(crate) fn entry_of(names: &Names, path: &str) -> io::Result<(FileEntry, Metadata)> {
    let meta = fs::symlink_metadata(path)?;
    let is_link = meta.file_type().is_symlink();
    let (file_type, symlink_target) = if is_link {
        let target = fs::canonicalize(path)
            .or_else(|_| fs::read_link(path))
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
        let kind = match fs::metadata(path) {
            Ok(m) if m.is_dir() => FileType::Directory,
            Ok(_) => FileType::File,
            Err(_) => FileType::Symlink,
        };
        (kind, target)
    } else if meta.is_dir() {
        (FileType::Directory, None)
    } else {
        (FileType::File, None)
    };
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".to_string());
    let entry = FileEntry {
        name,
        path: path.to_string(),
        file_type: Some(file_type),
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        permissions: permissions(&meta),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        modified_at: meta.mtime(),
        symlink_target,
    };
    Ok((entry, meta))
}

/// `ls -l` style mode string; `L` first for symlinks.
fn permissions(meta: &Metadata) -> String {
    let ft = meta.file_type();
    let first = if ft.is_symlink() {
        'L'
    } else if ft.is_dir() {
        'd'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else {
        '-'
    };
    mode_string(first, meta.permissions().mode())
}

fn mode_string(first: char, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(first);
    let specials = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, set_x, set_nox)) in specials.iter().enumerate() {
        let shift = 6 - 3 * i;
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & bit != 0, x) {
            (true, true) => *set_x,
            (true, false) => *set_nox,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `POST /files/mkdir`: `mkdir -p`; 409 when it exists as a directory.
pub async fn mkdir(
    req: Result<Json<PathRequest>, JsonRejection>,
) -> Result<Json<EntryResponse>, ApiError> {
    let path = check_path(&req.map_err(json_rejection)?.0.path)?;
    blocking(move || {
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                return Err(ApiError::new(
                    AgentErrorCode::AlreadyExists,
                    format!("mkdir {path}: directory already exists"),
                ))
            }
            Ok(_) => {
                return Err(ApiError::new(
                    AgentErrorCode::NotADirectory,
                    format!("mkdir {path}: exists and is not a directory"),
                ))
            }
            Err(_) => {}
        }
        fs::create_dir_all(&path).map_err(|e| {
            let e = match e.raw_os_error() {
                Some(libc::EEXIST) => io::Error::from_raw_os_error(libc::ENOTDIR),
                _ => e,
            };
            io_error("mkdir", &path, &e)
        })?;
        let (entry, _) =
            entry_of(&Names::load(), &path).map_err(|e| io_error("mkdir", &path, &e))?;
        Ok(Json(EntryResponse { entry }))
    })
    .await
}

/// `POST /files/remove`: recursive; 404 when missing.
pub async fn remove(req: Result<Json<PathRequest>, JsonRejection>) -> Result<StatusCode, ApiError> {
    let path = check_path(&req.map_err(json_rejection)?.0.path)?;
    blocking(move || {
        let meta = fs::symlink_metadata(&path).map_err(|e| io_error("remove", &path, &e))?;
        let result = if meta.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.map_err(|e| io_error("remove", &path, &e))?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// `POST /files/stat`.
pub async fn stat(req: Result<Json<PathRequest>, JsonRejection>) -> Result<Response, ApiError> {
    let path = check_path(&req.map_err(json_rejection)?.0.path)?;
    blocking(move || {
        let (entry, _) =
            entry_of(&Names::load(), &path).map_err(|e| io_error("stat", &path, &e))?;
        Ok(Json(entry).into_response())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string('-', 0o644), "-rw-r--r--");
        assert_eq!(mode_string('d', 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string('-', 0o4754), "-rwsr-xr--");
        assert_eq!(mode_string('L', 0o2640), "Lrw-r-S---");
    }

    /// A chain `d0/d1/.../d{levels-1}`, each directory holding `files` files and the next one.
    fn tree(levels: usize, files: usize) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("temp dir");
        let mut dir = root.path().to_path_buf();
        for level in 0..levels {
            dir.push(format!("d{level}"));
            fs::create_dir(&dir).expect("mkdir");
            for f in 0..files {
                fs::write(dir.join(format!("f{f}")), b"").expect("file");
            }
        }
        root
    }

    fn list_n(root: &Path, depth: u32, max: usize) -> Result<usize, ListError> {
        let mut out = Vec::new();
        let dir = root.to_string_lossy();
        list_dir(&Names::default(), &dir, depth, max, &mut out).map(|()| out.len())
    }

    #[test]
    fn listings_are_capped() {
        // 5 levels of (3 files + 1 dir): 4 entries per level below the root's one dir.
        let root = tree(5, 3);
        assert_eq!(list_n(root.path(), 32, 21).expect("fits"), 1 + 5 * 3 + 4);
        assert_eq!(list_n(root.path(), 32, 20).expect("exactly at the cap"), 20);
        assert!(matches!(
            list_n(root.path(), 32, 19),
            Err(ListError::TooMany { max: 19 })
        ));
        // Shallow enough, the same cap is fine.
        assert_eq!(list_n(root.path(), 2, 19).expect("depth 2"), 1 + 4);
        // One directory larger than the cap fails while it is read.
        let wide = tree(1, 50);
        assert!(matches!(
            list_n(&wide.path().join("d0"), 1, 10),
            Err(ListError::TooMany { max: 10 })
        ));
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        for (p, kind) in [
            (fifo.as_path(), "fifo"),
            (link.as_path(), "fifo"),
            (sock.as_path(), "socket"),
            (Path::new("/dev/zero"), "character device"),
        ] {
            let e = open_regular(&p.to_string_lossy()).expect_err("refused");
            assert_eq!(e.code, AgentErrorCode::InvalidRequest, "{}", p.display());
            assert!(e.message.ends_with(&format!("({kind})")), "{}", e.message);
        }
        let file = dir.path().join("file");
        fs::write(&file, b"x").expect("file");
        assert!(open_regular(&file.to_string_lossy()).is_ok());
        assert!(open_regular(&dir.path().to_string_lossy()).is_ok());
    }

    #[test]
    fn files_without_a_size_are_read_whole_within_a_bound() {
        let (file, meta) = open_regular("/proc/self/status").expect("open");
        assert!(is_pseudo(&file, &meta));
        let status = read_pseudo("/proc/self/status", file, MAX_PSEUDO_READ).expect("read");
        assert!(String::from_utf8_lossy(&status).contains("Pid:"));
        // `pagemap` spans the address space: never read to its end.
        let (file, meta) = open_regular("/proc/self/pagemap").expect("open");
        assert!(is_pseudo(&file, &meta));
        let e = read_pseudo("/proc/self/pagemap", file, 1 << 20).expect_err("refused");
        assert_eq!(e.code, AgentErrorCode::InvalidRequest);
        assert!(
            e.message.contains("longer than 1048576 bytes"),
            "{}",
            e.message
        );
        // Our own memory at offset 0 is not mapped: EIO, which is the request's fault.
        let (file, _) = open_regular("/proc/self/mem").expect("open");
        let e = read_pseudo("/proc/self/mem", file, 1 << 20).expect_err("refused");
        assert_eq!(e.code, AgentErrorCode::InvalidRequest, "{}", e.message);
        let dir = tempfile::tempdir().expect("temp dir");
        let real = dir.path().join("real");
        fs::write(&real, b"bytes").expect("file");
        let (file, meta) = open_regular(&real.to_string_lossy()).expect("open");
        assert!(!is_pseudo(&file, &meta));
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(check_path("/a/b/").expect("abs"), "/a/b");
        assert_eq!(check_path("/").expect("root"), "/");
        assert!(check_path("").is_err());
        assert!(check_path("a/b").is_err());
    }
}
