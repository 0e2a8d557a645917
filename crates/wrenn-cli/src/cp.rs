//! `wrenn capsule cp SRC DST`: files and directories in and out of a capsule, Docker's way.
//!
//! `ID:PATH` names the capsule side (the id may be a unique prefix). A destination that is an
//! existing directory receives the source under its own name; otherwise the source is copied
//! to the destination path. Every file streams through the files API (no size limit, never
//! whole in memory); directories are walked and copied file by file. Symbolic links are
//! skipped, with a note. Permissions are not carried over.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::AsyncWriteExt;
use wrenn_client::{Client, ClientError, FileType};

use crate::remote::resolve;

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Local(PathBuf),
    Capsule { id: String, path: String },
}

/// `ID:PATH` when the part before the first `:` has no `/` (so `./a:b` stays local).
fn parse_side(s: &str) -> Side {
    match s.split_once(':') {
        Some((id, path)) if !id.is_empty() && !id.contains('/') => Side::Capsule {
            id: id.to_owned(),
            path: path.to_owned(),
        },
        _ => Side::Local(PathBuf::from(s)),
    }
}

/// The capsule path made absolute (relative paths are taken from `/`).
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// `dir/name` in capsule path syntax.
fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// The last component of a capsule path.
fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Bytes copied, shown as a bar once the copy has taken over a second on a terminal.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    shown: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}",
        ) {
            bar.set_style(style);
        }
        Self {
            bar,
            started: Instant::now(),
            shown: false,
        }
    }

    fn file(&self, name: &str) {
        self.bar.set_message(name.to_owned());
    }

    fn inc(&mut self, n: u64) {
        self.bar.inc(n);
        if !self.shown
            && self.started.elapsed() > Duration::from_secs(1)
            && std::io::stderr().is_terminal()
        {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Runs the copy.
pub async fn run(client: &Client, src: &str, dst: &str) -> anyhow::Result<()> {
    match (parse_side(src), parse_side(dst)) {
        (Side::Local(from), Side::Capsule { id, path }) => {
            let id = resolve(client, &id).await?;
            upload(client, &id, &from, &absolute(&path)).await
        }
        (Side::Capsule { id, path }, Side::Local(to)) => {
            let id = resolve(client, &id).await?;
            download(client, &id, &absolute(&path), &to).await
        }
        (Side::Local(_), Side::Local(_)) => {
            bail!("invalid_request: one side must be in a capsule (ID:PATH)")
        }
        (Side::Capsule { .. }, Side::Capsule { .. }) => {
            bail!("invalid_request: copying between two capsule paths is not supported")
        }
    }
}

/// What a capsule path is.
enum Remote {
    Missing,
    File,
    Dir,
}

async fn probe(client: &Client, id: &str, path: &str) -> anyhow::Result<Remote> {
    match client.list_dir(id, path, 1).await {
        Ok(_) => Ok(Remote::Dir),
        Err(e) if e.is_not_found() => Ok(Remote::Missing),
        Err(ClientError::Api { ref code, .. }) if code == "invalid_request" => Ok(Remote::File),
        Err(e) => Err(e.into()),
    }
}

/// A local tree: its files with their sizes, and its directories (the root first).
type Tree = (Vec<(PathBuf, u64)>, Vec<PathBuf>);

/// Local files and directories under `root` (itself included), with their sizes.
fn walk(root: &Path) -> anyhow::Result<Tree> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let dir = dirs[i].clone();
        i += 1;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let meta = std::fs::symlink_metadata(e.path())?;
            if meta.is_dir() {
                dirs.push(e.path());
            } else if meta.is_file() {
                files.push((e.path(), meta.len()));
            } else {
                eprintln!(
                    "wrenn: skipping {} (not a regular file)",
                    e.path().display()
                );
            }
        }
    }
    Ok((files, dirs))
}

async fn upload(client: &Client, id: &str, from: &Path, to: &str) -> anyhow::Result<()> {
    let meta = std::fs::metadata(from).with_context(|| format!("reading {}", from.display()))?;
    let name = from
        .file_name()
        .and_then(|n| n.to_str())
        .context("the source has no file name")?;
    let target = match probe(client, id, to).await? {
        Remote::Dir => join(to, name),
        Remote::File if meta.is_dir() => {
            bail!("invalid_request: {to} exists in the capsule and is not a directory")
        }
        Remote::File | Remote::Missing => to.trim_end_matches('/').to_owned(),
    };
    if meta.is_file() {
        let mut progress = Progress::new(meta.len());
        upload_file(client, id, from, &target, &mut progress).await?;
        progress.finish();
        return Ok(());
    }
    let (files, dirs) = walk(from)?;
    let mut progress = Progress::new(files.iter().map(|(_, n)| n).sum());
    for dir in &dirs {
        let rel = dir.strip_prefix(from)?;
        let remote = remote_path(&target, rel)?;
        match client.make_dir(id, &remote).await {
            Ok(_) => {}
            Err(ClientError::Api { ref code, .. })
                if code == "conflict" || code == "already_exists" => {}
            Err(e) => return Err(e).with_context(|| format!("creating {remote}")),
        }
    }
    for (file, _) in &files {
        let remote = remote_path(&target, file.strip_prefix(from)?)?;
        upload_file(client, id, file, &remote, &mut progress).await?;
    }
    progress.finish();
    Ok(())
}

/// `base/rel` with `/` separators.
fn remote_path(base: &str, rel: &Path) -> anyhow::Result<String> {
    let mut out = base.trim_end_matches('/').to_owned();
    for part in rel.components() {
        let s = part
            .as_os_str()
            .to_str()
            .context("a file name is not UTF-8")?;
        out.push('/');
        out.push_str(s);
    }
    Ok(if out.is_empty() { "/".into() } else { out })
}

async fn upload_file(
    client: &Client,
    id: &str,
    from: &Path,
    to: &str,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    progress.file(to);
    let file = tokio::fs::File::open(from)
        .await
        .with_context(|| format!("opening {}", from.display()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<u64>(64);
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(move |r| {
        if let Ok(b) = &r {
            let _ = tx.try_send(b.len() as u64);
        }
        r
    });
    let send = client.upload(id, to, stream);
    tokio::pin!(send);
    let mut rx = rx;
    loop {
        tokio::select! {
            r = &mut send => {
                while let Ok(n) = rx.try_recv() {
                    progress.inc(n);
                }
                return r.with_context(|| format!("uploading {} to {to}", from.display()));
            }
            Some(n) = rx.recv() => progress.inc(n),
        }
    }
}

async fn download(client: &Client, id: &str, from: &str, to: &Path) -> anyhow::Result<()> {
    let kind = probe(client, id, from).await?;
    let name = base_name(from);
    let target = if to.is_dir() {
        if name.is_empty() {
            to.to_path_buf()
        } else {
            to.join(name)
        }
    } else {
        to.to_path_buf()
    };
    match kind {
        Remote::Missing => bail!("not_found: {from} does not exist in the capsule"),
        Remote::File => {
            let size = file_size(client, id, from).await;
            let mut progress = Progress::new(size);
            download_file(client, id, from, &target, &mut progress).await?;
            progress.finish();
        }
        Remote::Dir => {
            let entries = client.list_dir(id, from, 64).await?;
            let total = entries
                .iter()
                .filter(|e| e.file_type == Some(FileType::File))
                .map(|e| e.size)
                .sum();
            let mut progress = Progress::new(total);
            std::fs::create_dir_all(&target)
                .with_context(|| format!("creating {}", target.display()))?;
            let mut sorted = entries;
            sorted.sort_by(|a, b| a.path.cmp(&b.path));
            for e in sorted {
                let rel = e
                    .path
                    .strip_prefix(from.trim_end_matches('/'))
                    .unwrap_or(&e.path)
                    .trim_start_matches('/');
                if rel.is_empty() || rel.split('/').any(|p| p == ".." || p == ".") {
                    continue;
                }
                let local = target.join(rel);
                if e.symlink_target.is_some() {
                    eprintln!("wrenn: skipping symbolic link {}", e.path);
                    continue;
                }
                match e.file_type {
                    Some(FileType::Directory) => std::fs::create_dir_all(&local)
                        .with_context(|| format!("creating {}", local.display()))?,
                    Some(FileType::File) => {
                        download_file(client, id, &e.path, &local, &mut progress).await?
                    }
                    _ => eprintln!("wrenn: skipping {}", e.path),
                }
            }
            progress.finish();
        }
    }
    Ok(())
}

/// The size of a capsule file from its directory's listing (0 when unknown).
async fn file_size(client: &Client, id: &str, path: &str) -> u64 {
    let parent = match path.rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((dir, _)) => dir,
    };
    client
        .list_dir(id, parent, 1)
        .await
        .ok()
        .and_then(|es| es.into_iter().find(|e| e.path == path).map(|e| e.size))
        .unwrap_or(0)
}

async fn download_file(
    client: &Client,
    id: &str,
    from: &str,
    to: &Path,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    progress.file(from);
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut body = client.download(id, from).await?;
    let mut file = tokio::fs::File::create(to)
        .await
        .with_context(|| format!("creating {}", to.display()))?;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("downloading {from}"))?;
        file.write_all(&chunk).await?;
        progress.inc(chunk.len() as u64);
    }
    file.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_parse_like_docker_cp() {
        assert_eq!(
            parse_side("cl-ab:/tmp/x"),
            Side::Capsule {
                id: "cl-ab".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(parse_side("./a:b"), Side::Local("./a:b".into()));
        assert_eq!(parse_side("/tmp/f"), Side::Local("/tmp/f".into()));
        assert_eq!(absolute("tmp/x"), "/tmp/x");
        assert_eq!(join("/tmp/", "f"), "/tmp/f");
        assert_eq!(base_name("/a/b/"), "b");
        assert_eq!(remote_path("/t", Path::new("d/f")).unwrap(), "/t/d/f");
        assert_eq!(remote_path("/t", Path::new("")).unwrap(), "/t");
    }
}
