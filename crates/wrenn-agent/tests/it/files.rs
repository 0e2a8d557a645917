//! File endpoints and their errors.

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use wrenn_types::error::AgentErrorCode;
use wrenn_types::files::FileType;

use crate::common::*;

fn body(
    data: &'static [u8],
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    stream::iter([Ok(Bytes::from_static(data))])
}

async fn read_all(agent: &TestAgent, path: &str) -> (Option<u64>, Vec<u8>) {
    let (len, mut s) = agent.client.read(path).await.expect("read");
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    (len, out)
}

#[tokio::test]
async fn write_read_stat_list_mkdir_remove() {
    let agent = TestAgent::start().await;
    let c = &agent.client;
    let root = agent.dir.path().to_string_lossy().into_owned();
    let file = format!("{root}/a b/c/ü.txt");
    c.write(&file, body(b"hello"))
        .await
        .expect("write creates parents");
    assert_eq!(read_all(&agent, &file).await, (Some(5), b"hello".to_vec()));
    c.write(&file, body(b"bye")).await.expect("overwrite");
    assert_eq!(read_all(&agent, &file).await.1, b"bye");

    let st = c.stat(&file).await.expect("stat");
    assert_eq!(
        (st.name.as_str(), st.path.as_str()),
        ("ü.txt", file.as_str())
    );
    assert_eq!((st.file_type, st.size), (Some(FileType::File), 3));
    assert_eq!((st.owner.as_str(), st.group.as_str()), ("root", "root"));
    assert_eq!(st.permissions.len(), 10);
    assert!(st.permissions.starts_with('-'));
    assert!(st.modified_at > 1_600_000_000);

    let dir = format!("{root}/x/y/z");
    let made = c.mkdir(&dir).await.expect("mkdir -p");
    assert_eq!(
        (made.file_type, made.path.as_str()),
        (Some(FileType::Directory), dir.as_str())
    );
    assert!(made.permissions.starts_with('d'));
    assert_code(c.mkdir(&dir).await, AgentErrorCode::AlreadyExists);
    assert_code(c.mkdir(&file).await, AgentErrorCode::NotADirectory);

    std::os::unix::fs::symlink(format!("{root}/x"), format!("{root}/link")).expect("symlink");
    let one = c.list(&root, 0).await.expect("list depth 0");
    let names: Vec<&str> = one.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a b", "agent.sock", "link", "x"]);
    let link = &one.entries[2];
    assert_eq!(link.file_type, Some(FileType::Directory));
    assert_eq!(
        link.symlink_target.as_deref(),
        Some(format!("{root}/x").as_str())
    );
    assert!(link.permissions.starts_with('L'), "{}", link.permissions);
    let deep = c.list(&root, 2).await.expect("list depth 2");
    let paths: Vec<&str> = deep.entries.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&format!("{root}/x/y").as_str()), "{paths:?}");
    assert!(
        !paths.contains(&format!("{root}/x/y/z").as_str()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&format!("{root}/a b/c").as_str()),
        "{paths:?}"
    );
    assert!(
        !paths.contains(&format!("{root}/a b/c/ü.txt").as_str()),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with(&format!("{root}/link/"))),
        "followed a symlink"
    );
    let via_link = c
        .list(&format!("{root}/link"), 1)
        .await
        .expect("list via link");
    assert_eq!(via_link.entries[0].path, format!("{root}/link/y"));

    c.remove(&format!("{root}/x"))
        .await
        .expect("remove dir recursively");
    assert_code(
        c.remove(&format!("{root}/x")).await,
        AgentErrorCode::NotFound,
    );
    c.remove(&file).await.expect("remove file");
    assert!(!exists(std::path::Path::new(&file)));
}

#[tokio::test]
async fn file_errors_are_told_apart() {
    let agent = TestAgent::start().await;
    let c = &agent.client;
    let root = agent.dir.path().to_string_lossy().into_owned();
    let file = format!("{root}/f");
    c.write(&file, body(b"x")).await.expect("write");
    let missing = format!("{root}/missing");

    assert_code(
        c.read(&missing).await.map(|(l, _)| l),
        AgentErrorCode::NotFound,
    );
    assert_code(
        c.read(&root).await.map(|(l, _)| l),
        AgentErrorCode::IsADirectory,
    );
    assert_code(
        c.read(&format!("{file}/sub")).await.map(|(l, _)| l),
        AgentErrorCode::NotADirectory,
    );
    assert_code(
        c.write(&root, body(b"x")).await,
        AgentErrorCode::IsADirectory,
    );
    assert_code(
        c.write(&format!("{file}/sub/g"), body(b"x")).await,
        AgentErrorCode::NotADirectory,
    );
    assert_code(c.list(&missing, 1).await, AgentErrorCode::NotFound);
    assert_code(c.list(&file, 1).await, AgentErrorCode::NotADirectory);
    assert_code(c.stat(&missing).await, AgentErrorCode::NotFound);
    assert_code(c.remove(&missing).await, AgentErrorCode::NotFound);
    assert_code(
        c.mkdir(&format!("{file}/d")).await,
        AgentErrorCode::NotADirectory,
    );
    assert!(
        assert_code(c.stat("").await, AgentErrorCode::InvalidRequest).contains("path is required")
    );
    assert!(
        assert_code(c.stat("rel/x").await, AgentErrorCode::InvalidRequest)
            .contains("must be absolute")
    );
    assert_code(
        c.write("", body(b"x")).await,
        AgentErrorCode::InvalidRequest,
    );
    // No temp files are left behind by failed or successful writes.
    let names: Vec<String> = std::fs::read_dir(&root)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".wrenn-")), "{names:?}");
}

#[tokio::test]
async fn permission_denied_for_an_unprivileged_agent() {
    let agent = TestAgent::start_as(Some(65534)).await;
    let c = &agent.client;
    assert_code(
        c.write("/root/nope.txt", body(b"x")).await,
        AgentErrorCode::PermissionDenied,
    );
    assert_code(
        c.mkdir("/root/nope").await,
        AgentErrorCode::PermissionDenied,
    );
    assert_code(
        c.read("/etc/shadow").await.map(|(l, _)| l),
        AgentErrorCode::PermissionDenied,
    );
    // Switching users needs root.
    let mut req = sh("true");
    req.process.user = Some("root".into());
    assert_code(c.exec(&req).await, AgentErrorCode::PermissionDenied);
}

/// Deterministic pseudo-random chunk `i` of 1 MiB.
fn chunk(i: u64) -> Bytes {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(1 << 20);
    while v.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

#[tokio::test]
async fn streams_64_mib_byte_identical() {
    const MIB: u64 = 64;
    let agent = TestAgent::start().await;
    let path = agent.path("big.bin").to_string_lossy().into_owned();
    let src = stream::iter(0..MIB).map(|i| Ok::<_, std::io::Error>(chunk(i)));
    agent.client.write(&path, src).await.expect("write 64 MiB");
    let (len, mut s) = agent.client.read(&path).await.expect("read");
    assert_eq!(len, Some(MIB << 20));
    let (mut expected, mut next, mut off, mut total) = (chunk(0), 1u64, 0usize, 0u64);
    while let Some(part) = s.next().await {
        let part = part.expect("chunk");
        let mut p = &part[..];
        while !p.is_empty() {
            if off == expected.len() {
                expected = chunk(next);
                next += 1;
                off = 0;
            }
            let n = p.len().min(expected.len() - off);
            assert!(p[..n] == expected[off..off + n], "mismatch at byte {total}");
            p = &p[n..];
            off += n;
            total += n as u64;
        }
    }
    assert_eq!(total, MIB << 20);
}

#[tokio::test]
async fn list_caps_entries_and_depth() {
    let agent = TestAgent::start().await;
    let c = &agent.client;
    // tmpfs when there is one: creating 100k files on a disk file system takes seconds.
    let tmp = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir");
    let root = tmp.path().join("big");
    // Two directories of 50,001 files: 100,004 entries at depth 2, only 2 at depth 1.
    for sub in ["a", "b"] {
        let dir = root.join(sub);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for i in 0..50_001 {
            std::fs::File::create(dir.join(i.to_string())).expect("create");
        }
    }
    let root_s = root.to_string_lossy().into_owned();
    assert_eq!(c.list(&root_s, 1).await.expect("depth 1").entries.len(), 2);
    let message = assert_code(c.list(&root_s, 2).await, AgentErrorCode::InvalidRequest);
    assert_eq!(
        message,
        "directory listing exceeds 100000 entries; use a smaller depth"
    );

    // A 40-deep chain is listed 32 levels down at most.
    let mut deep = agent.path("deep");
    for _ in 0..40 {
        deep.push("n");
    }
    std::fs::create_dir_all(&deep).expect("mkdir chain");
    let deep_root = agent.path("deep").to_string_lossy().into_owned();
    let listed = c.list(&deep_root, 1_000).await.expect("deep list");
    assert_eq!(listed.entries.len(), 32);
    let deepest = &listed.entries[31].path;
    assert_eq!(deepest, &format!("{deep_root}{}", "/n".repeat(32)));
}
