//! Snapshot templates: a capsule's tree copied into a new template that carries on its
//! source template's [`RunConfig`](super::RunConfig).

use std::path::Path;

use anyhow::Context;
use chrono::Utc;

use super::store::{TemplateFile, Templates};
use super::TemplateForm;
use crate::tree::{copy_tree, dir_size, private_dir, shift_ids, unique_tmp_name, PRIVATE_DIR_MODE};
use crate::{ResourceKind, RuntimeError, TemplateInfo};

/// Why [`snapshot_tree`] failed.
#[derive(Debug)]
pub(super) enum SnapshotError {
    /// Another snapshot took the name first.
    Exists,
    /// Anything else, with the step.
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for SnapshotError {
    fn from(e: E) -> Self {
        Self::Other(e.into())
    }
}

impl Templates {
    /// Makes snapshot template `name` from the tree at `src` (copied; `src` may change after),
    /// made from template `from`, whose run config it keeps. With `ids`, the tree is a
    /// capsule's whose ids are the host range `ids.0..ids.0+ids.1`: the copy is shifted back
    /// to `0..` (see [`crate::tree::shift_ids`]), so it boots in any capsule's range and holds
    /// no setuid or file-capability file owned by host root.
    pub async fn create_snapshot(
        &self,
        name: &str,
        src: &Path,
        from: &str,
        ids: Option<(u32, u32)>,
    ) -> Result<TemplateInfo, RuntimeError> {
        let err = |source: anyhow::Error| RuntimeError::TemplateBuild {
            name: name.to_owned(),
            source,
        };
        let exists = || RuntimeError::AlreadyExists {
            kind: ResourceKind::Template,
            name: name.to_owned(),
        };
        if !self.valid_snapshot_name(name) {
            return Err(err(anyhow::anyhow!("invalid snapshot name")));
        }
        if self.dir.join(name).exists() {
            return Err(exists());
        }
        let file = TemplateFile {
            name: name.to_owned(),
            base: false,
            size_bytes: 0,
            created_at: Utc::now(),
            run: self.read_file(from).map(|f| f.run).unwrap_or_default(),
            runtime: None,
        };
        let (dir, src, form) = (self.dir.clone(), src.to_owned(), self.form.clone());
        match tokio::task::spawn_blocking(move || {
            snapshot_tree(&dir, &src, file, form.as_ref(), ids)
        })
        .await
        .map_err(|e| err(anyhow::anyhow!("snapshot task: {e}")))?
        {
            Ok(info) => Ok(info),
            Err(SnapshotError::Exists) => Err(exists()),
            Err(SnapshotError::Other(e)) => Err(err(e)),
        }
    }
}

/// A snapshot template being written by its backend: a temp dir that becomes template `name`
/// on [`SnapshotDraft::commit`], and is removed when dropped uncommitted.
#[derive(Debug)]
pub struct SnapshotDraft {
    dir: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: TemplateFile,
    done: bool,
}

impl SnapshotDraft {
    /// Where the backend puts the snapshot's files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Writes `template.json` (size: the files' allocated bytes) and renames the draft into
    /// place without replacing anything.
    pub fn commit(mut self) -> Result<TemplateInfo, RuntimeError> {
        let name = self.file.name.clone();
        let err = |source: anyhow::Error| RuntimeError::TemplateBuild {
            name: name.clone(),
            source,
        };
        self.file.size_bytes = dir_size(&self.tmp);
        self.file.write(&self.tmp).map_err(err)?;
        match crate::sys::rename_noreplace(&self.tmp, &self.dir.join(&name)) {
            Ok(()) => {
                self.done = true;
                Ok(self.file.clone().into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(RuntimeError::AlreadyExists {
                    kind: ResourceKind::Template,
                    name,
                })
            }
            Err(e) => Err(err(
                anyhow::Error::from(e).context("rename snapshot into place")
            )),
        }
    }
}

impl Drop for SnapshotDraft {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

impl Templates {
    /// Starts snapshot template `name` made from template `from` (whose run config it keeps),
    /// which only `runtime` can start capsules of; the backend fills [`SnapshotDraft::path`].
    pub fn draft_snapshot(
        &self,
        name: &str,
        from: &str,
        runtime: crate::Backend,
    ) -> Result<SnapshotDraft, RuntimeError> {
        let err = |source: anyhow::Error| RuntimeError::TemplateBuild {
            name: name.to_owned(),
            source,
        };
        if !self.valid_snapshot_name(name) {
            return Err(err(anyhow::anyhow!("invalid snapshot name")));
        }
        if self.dir.join(name).exists() {
            return Err(RuntimeError::AlreadyExists {
                kind: ResourceKind::Template,
                name: name.to_owned(),
            });
        }
        private_dir(&self.dir, PRIVATE_DIR_MODE)
            .map_err(|e| err(anyhow::Error::from(e).context("create template dir")))?;
        let tmp = self.dir.join(unique_tmp_name(name, "snap"));
        std::fs::create_dir(&tmp)
            .map_err(|e| err(anyhow::Error::from(e).context("create snapshot temp dir")))?;
        Ok(SnapshotDraft {
            dir: self.dir.clone(),
            tmp,
            file: TemplateFile {
                name: name.to_owned(),
                base: false,
                size_bytes: 0,
                created_at: Utc::now(),
                run: self.read_file(from).map(|f| f.run).unwrap_or_default(),
                runtime: Some(runtime),
            },
            done: false,
        })
    }
}

/// Copies `src` into a fresh `dir/.name.snap-<pid>-<seq>/rootfs`, writes its `template.json`
/// (`file` with the size filled in), materialises it, and renames it to `dir/name` without
/// replacing anything (blocking). The temp dir is removed on failure; nothing this call did
/// not create is ever removed.
pub(super) fn snapshot_tree(
    dir: &Path,
    src: &Path,
    mut file: TemplateFile,
    form: &dyn TemplateForm,
    ids: Option<(u32, u32)>,
) -> Result<TemplateInfo, SnapshotError> {
    let name = file.name.clone();
    private_dir(dir, PRIVATE_DIR_MODE).context("create template dir")?;
    let tmp = dir.join(unique_tmp_name(&name, "snap"));
    // `create_dir`, not `create_dir_all`: fails if the name somehow exists, so `tmp` is ours.
    std::fs::create_dir(&tmp).context("create snapshot temp dir")?;
    let result = (|| {
        copy_tree(src, &tmp.join("rootfs"))?;
        if let Some((base, size)) = ids {
            shift_ids(&tmp.join("rootfs"), base, size)?;
        }
        file.size_bytes = dir_size(&tmp.join("rootfs"));
        file.write(&tmp)?;
        form.materialise(&tmp).context("materialise template")?;
        match crate::sys::rename_noreplace(&tmp, &dir.join(&name)) {
            Ok(()) => Ok(file.into()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(SnapshotError::Exists),
            Err(e) => Err(SnapshotError::Other(
                anyhow::Error::from(e).context("rename snapshot into place"),
            )),
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::templates::recipe::{Recipes, RunConfig, Service};
    use crate::templates::DirectoryForm;
    use crate::test_utils::Scratch;

    fn file(name: &str) -> TemplateFile {
        TemplateFile {
            name: name.to_owned(),
            base: false,
            size_bytes: 0,
            created_at: Utc::now(),
            run: RunConfig::default(),
            runtime: None,
        }
    }

    /// Concurrent snapshots of one name: exactly one wins, the others get `Exists`, the winner's
    /// tree is whole and no temp dir is left behind.
    #[test]
    fn concurrent_snapshots_of_one_name() {
        let root = Scratch::new("snap");
        let (src, dir) = (root.path().join("src"), root.path().join("templates"));
        std::fs::create_dir_all(src.join("sub")).expect("src");
        for i in 0..200 {
            std::fs::write(src.join("sub").join(i.to_string()), vec![b'x'; 512]).expect("file");
        }
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..6)
                .map(|_| s.spawn(|| snapshot_tree(&dir, &src, file("snap"), &DirectoryForm, None)))
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
        for r in &results {
            assert!(matches!(r, Ok(_) | Err(SnapshotError::Exists)), "{r:?}");
        }
        let copied = std::fs::read_dir(dir.join("snap/rootfs/sub"))
            .expect("winner's tree")
            .count();
        assert_eq!(copied, 200);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("snap")]);
        // An existing (even empty) dir under the name is never replaced.
        std::fs::create_dir(dir.join("empty")).expect("mkdir");
        assert!(matches!(
            snapshot_tree(&dir, &src, file("empty"), &DirectoryForm, None),
            Err(SnapshotError::Exists)
        ));
        assert_eq!(
            std::fs::read_dir(dir.join("empty")).expect("dir").count(),
            0
        );
    }

    #[tokio::test]
    async fn create_snapshot_race_is_already_exists_and_delete_uses_own_trash() {
        let root = Scratch::new("snap-api");
        let src = root.path().join("src");
        std::fs::create_dir_all(&src).expect("src");
        std::fs::write(src.join("f"), "x").expect("file");
        let t = Templates::new(
            &root.path().join("data"),
            &root.path().join("cache"),
            Recipes::embedded().expect("recipes"),
            Arc::new(DirectoryForm),
        );
        // The source template's run config is carried on.
        let parent = root.path().join("data/templates/parent");
        std::fs::create_dir_all(&parent).expect("parent");
        let mut pf = file("parent");
        pf.run.services.push(Service {
            name: "s".into(),
            cmd: "/bin/true".into(),
            args: vec![],
            env: Default::default(),
            cwd: None,
            user: None,
            probe: None,
            timeout_sec: 1,
        });
        pf.write(&parent).expect("parent json");
        t.create_snapshot("snap", &src, "parent", None)
            .await
            .expect("first");
        assert_eq!(t.run_config("snap").expect("run"), pf.run);
        // The name check up front catches the plain case...
        assert!(matches!(
            t.create_snapshot("snap", &src, "parent", None).await,
            Err(RuntimeError::AlreadyExists {
                kind: ResourceKind::Template,
                ..
            })
        ));
        // ...and the no-replace rename the racy one.
        std::fs::create_dir(root.path().join("data/templates/late")).expect("mkdir");
        assert!(matches!(
            snapshot_tree(
                &root.path().join("data/templates"),
                &src,
                file("late"),
                &DirectoryForm,
                None
            ),
            Err(SnapshotError::Exists)
        ));
        t.delete_snapshot("snap").await.expect("delete");
        let mut left: Vec<_> = std::fs::read_dir(root.path().join("data/templates"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                std::ffi::OsString::from("late"),
                std::ffi::OsString::from("parent")
            ]
        );
        // Base templates are protected, unknown names not found.
        assert!(matches!(
            t.delete_snapshot("busybox").await,
            Err(RuntimeError::Protected {
                reason: crate::Protection::Base,
                ..
            })
        ));
        assert!(matches!(
            t.delete_snapshot("nope").await,
            Err(RuntimeError::TemplateNotFound(_))
        ));
    }
}
