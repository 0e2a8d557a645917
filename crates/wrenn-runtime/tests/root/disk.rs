//! Per-capsule disks: the size limit, usage, cleanup, recovery and the layout without one.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use wrenn_runtime::container::ContainerRuntime;
use wrenn_runtime::{NetworkMode, Runtime};

use crate::common::*;

fn capsule_dir(t: &TestRuntime, id: &str) -> std::path::PathBuf {
    t.data_dir.join("capsules").join(id)
}

/// The mountinfo line of the mount at `target`, if any.
fn mount_line(target: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let t = target.display().to_string();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(t.as_str()))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_past_the_disk_limit_fails_inside_the_capsule_only() {
    if !privileged("writing_past_the_disk_limit_fails_inside_the_capsule_only") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule_disk("busybox", NetworkMode::Isolated, 64).await;
    let dir = capsule_dir(&t, c.id());
    let out = fill_its_64_mib_disk(&c, &dir).await;
    assert!(!out.contains("rc=0"), "{out}");
    let image = std::fs::metadata(dir.join("disk.img")).expect("image");
    assert_eq!(image.len(), 64 << 20);
    let size: u64 = sh(&c, "wc -c < /root/big")
        .await
        .stdout
        .trim()
        .parse()
        .expect("size");
    assert!(size > 32 << 20 && size <= 64 << 20, "{size}");

    // The capsule keeps working, and freeing space makes writes work again.
    assert_eq!(sh(&c, "echo alive").await.stdout, "alive\n");
    let r = sh(&c, "rm /root/big && echo data > /root/f && cat /root/f").await;
    assert_eq!(r.stdout, "data\n", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_usage_is_the_used_space_of_the_disk() {
    if !privileged("disk_usage_is_the_used_space_of_the_disk") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule_disk("busybox", NetworkMode::Isolated, 256).await;
    let before = t.rt.usage(c.id()).await.expect("usage").disk_bytes;
    let r = sh(&c, "dd if=/dev/zero of=/root/ten bs=1M count=10 && sync").await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let after = t.rt.usage(c.id()).await.expect("usage").disk_bytes;
    assert!(
        after >= before + (10 << 20) && after < before + (12 << 20),
        "before {before}, after {after}"
    );
    // The upper layer is on the capsule's own filesystem, not the data dir's.
    let dir = capsule_dir(&t, c.id());
    let host_dev = std::fs::metadata(&dir).expect("dir").dev();
    let upper_dev = std::fs::metadata(dir.join("disk/upper"))
        .expect("upper")
        .dev();
    assert_ne!(host_dev, upper_dev);
    assert!(!dir.join("upper").exists());
}

/// Names in the pool dir ending in `suffix`.
fn pool_entries(t: &TestRuntime, suffix: &str) -> Vec<String> {
    std::fs::read_dir(t.data_dir.join("pool"))
        .expect("pool")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_gets_an_armed_disk_from_the_pool_with_the_same_limits() {
    if !privileged("a_capsule_gets_an_armed_disk_from_the_pool_with_the_same_limits") {
        return;
    }
    let t = TestRuntime::new();
    // The first capsule of this size formats its disk on the spot and starts the refill.
    let first = t.capsule_disk("busybox", NetworkMode::Isolated, 64).await;
    t.rt.wait_disk_pool_idle(std::time::Duration::from_secs(30));
    let armed = pool_entries(&t, ".mnt");
    assert_eq!(
        armed.len(),
        wrenn_runtime::container::DISK_POOL_SIZE,
        "{armed:?}"
    );
    // Armed: each attached to a loop device, mounted nowhere in this namespace.
    let pool = t.data_dir.join("pool");
    assert_eq!(loops_backed_by(&pool).len(), armed.len());
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!info.contains(&pool.display().to_string()), "{info}");

    let c = t.capsule_disk("busybox", NetworkMode::Isolated, 64).await;
    let dir = capsule_dir(&t, c.id());
    let taken: Vec<String> = armed
        .iter()
        .filter(|n| !pool.join(n).exists())
        .cloned()
        .collect();
    assert_eq!(taken.len(), 1, "one armed image taken: {taken:?}");
    // Its loop device follows the rename into the capsule dir.
    assert_eq!(loops_backed_by(&dir).len(), 1);
    fill_its_64_mib_disk(&c, &dir).await;
    // What the capsule wrote is on its disk, not on the host's filesystem.
    assert!(dir.join("disk/upper/root/big").exists());

    let id = c.id().to_owned();
    t.rt.destroy(&id).await.expect("destroy");
    assert_eq!(leftovers(&t.data_dir, &id), Vec::<String>::new());
    assert!(mount_line(&dir.join("disk")).is_none());
    t.rt.destroy(first.id()).await.expect("destroy");
    drop((c, first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_leaves_no_mount_loop_device_or_image() {
    if !privileged("destroy_leaves_no_mount_loop_device_or_image") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule_disk("busybox", NetworkMode::Egress, 128).await;
    let (id, dir) = (c.id().to_owned(), capsule_dir(&t, c.id()));
    assert_eq!(
        loops_backed_by(&dir).len(),
        1,
        "one loop device while running"
    );
    sh(&c, "echo x > /root/x").await;
    t.rt.destroy(&id).await.expect("destroy");
    assert_eq!(leftovers(&t.data_dir, &id), Vec::<String>::new());
    assert!(!dir.join("disk.img").exists());
    assert!(mount_line(&dir.join("disk")).is_none());
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_disk_keeps_the_old_layout() {
    if !privileged("no_disk_keeps_the_old_layout") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule_disk("busybox", NetworkMode::Isolated, 0).await;
    let dir = capsule_dir(&t, c.id());
    assert!(dir.join("upper").is_dir() && dir.join("work").is_dir());
    assert!(!dir.join("disk.img").exists() && !dir.join("disk").exists());
    assert!(loops_backed_by(&dir).is_empty());
    let host_dev = std::fs::metadata(&dir).expect("dir").dev();
    assert_eq!(
        std::fs::metadata(dir.join("upper")).expect("upper").dev(),
        host_dev
    );
    let before = t.rt.usage(c.id()).await.expect("usage").disk_bytes;
    sh(&c, "dd if=/dev/zero of=/root/one bs=1M count=1").await;
    let after = t.rt.usage(c.id()).await.expect("usage").disk_bytes;
    assert_eq!(after - before, 1 << 20);
    t.rt.destroy(c.id()).await.expect("destroy");
    assert_eq!(leftovers(&t.data_dir, c.id()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_readopts_a_capsule_with_a_disk_and_removes_unknown_ones_with_theirs() {
    if !privileged("recover_readopts_a_capsule_with_a_disk") {
        return;
    }
    let t = TestRuntime::new();
    let keep = t.capsule_disk("busybox", NetworkMode::Egress, 128).await;
    let unknown = t.capsule_disk("busybox", NetworkMode::Isolated, 128).await;
    let (keep_id, unknown_id) = (keep.id().to_owned(), unknown.id().to_owned());
    sh(&keep, "dd if=/dev/zero of=/root/f bs=1M count=3 && sync").await;
    // Stray pool entries: a half-made image of a dead process and junk.
    t.rt.wait_disk_pool_idle(std::time::Duration::from_secs(30));
    let pool = t.data_dir.join("pool");
    std::fs::write(pool.join(".128m-999999999-1.tmp"), b"half").expect("stray tmp");
    std::fs::write(pool.join("junk"), b"junk").expect("junk");

    let rt2 = ContainerRuntime::new(TestRuntime::config(&t.data_dir)).expect("second runtime");
    let report = rt2
        .recover(std::slice::from_ref(&keep_id))
        .await
        .expect("recover");
    assert_eq!(report.adopted.len(), 1, "{report:?}");
    assert_eq!(report.adopted[0].id, keep_id);
    assert_eq!(report.removed, vec![unknown_id.clone()], "{report:?}");
    assert_eq!(leftovers(&t.data_dir, &unknown_id), Vec::<String>::new());
    assert!(!pool.join(".128m-999999999-1.tmp").exists() && !pool.join("junk").exists());
    assert!(
        std::fs::read_dir(&pool)
            .expect("pool")
            .filter_map(Result::ok)
            .all(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.ends_with(".img") || n.ends_with(".mnt")
            }),
        "pool keeps its images"
    );

    // The adopted capsule still has its disk, seen through the new runtime.
    assert_eq!(sh(&keep, "wc -c < /root/f").await.stdout.trim(), "3145728");
    let used = rt2.usage(&keep_id).await.expect("usage").disk_bytes;
    assert!(used >= 3 << 20, "{used}");
    rt2.destroy(&keep_id)
        .await
        .expect("destroy via new runtime");
    assert_eq!(leftovers(&t.data_dir, &keep_id), Vec::<String>::new());
    rt2.wait_disk_pool_idle(std::time::Duration::from_secs(30));
    drop((keep, unknown));
}

/// Checks that capsule `c`'s disk (in `dir`) is a `nosuid,nodev` ext4 loop mount, writes 200 MiB
/// into it until `ENOSPC`, and that what it wrote stayed within its 64 MiB image on the host;
/// returns the writer's output (ending in `rc=<its exit code>`).
async fn fill_its_64_mib_disk(c: &Capsule, dir: &Path) -> String {
    let line = mount_line(&dir.join("disk")).expect("disk mounted");
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    assert!(line.contains(" ext4 /dev/loop"), "{line}");
    let r = sh(
        c,
        "dd if=/dev/zero of=/root/big bs=1M count=200; echo rc=$?",
    )
    .await;
    let out = format!("{}{}", r.stdout, r.stderr);
    assert!(out.contains("No space left on device"), "{out}");
    let image = std::fs::metadata(dir.join("disk.img")).expect("image");
    assert!(
        image.blocks() * 512 <= 64 << 20,
        "{} bytes",
        image.blocks() * 512
    );
    out
}
