//! The template store: what is on disk, building recipes on first use, deletion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::builder;
use super::recipe::{Base, Recipes, RunConfig};
use super::TemplateForm;
use crate::tree::{dir_size, unique_tmp_name};
use crate::{Protection, RuntimeError, TemplateInfo};

/// On-disk form of [`TemplateInfo`] (`template.json`), with what capsules of it start with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TemplateFile {
    pub(super) name: String,
    pub(super) base: bool,
    pub(super) size_bytes: u64,
    pub(super) created_at: DateTime<Utc>,
    /// Absent in templates written before recipes carried services.
    #[serde(default)]
    pub(super) run: RunConfig,
    /// The backend that alone can start capsules of it (a microVM's full-state snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) runtime: Option<crate::Backend>,
}

impl From<TemplateFile> for TemplateInfo {
    fn from(t: TemplateFile) -> Self {
        TemplateInfo {
            name: t.name,
            base: t.base,
            size_bytes: t.size_bytes,
            created_at: Some(t.created_at),
        }
    }
}

impl TemplateFile {
    /// Writes `dir/template.json`.
    pub(super) fn write(&self, dir: &Path) -> anyhow::Result<()> {
        use anyhow::Context;
        std::fs::write(dir.join("template.json"), serde_json::to_vec_pretty(self)?)
            .context("write template.json")
    }
}

/// The template store of one runtime.
#[derive(Debug)]
pub struct Templates {
    pub(super) dir: PathBuf,
    cache: PathBuf,
    recipes: Recipes,
    pub(super) form: Arc<dyn TemplateForm>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Templates {
    /// Store under `data_dir/templates`, debootstrap cache under `cache_dir/templates`,
    /// building `recipes` into trees that `form` materialises.
    pub fn new(
        data_dir: &Path,
        cache_dir: &Path,
        recipes: Recipes,
        form: Arc<dyn TemplateForm>,
    ) -> Self {
        Self {
            dir: data_dir.join("templates"),
            cache: cache_dir.join("templates"),
            recipes,
            form,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The backend recipe `name` requires, if any.
    pub fn required_backend(&self, name: &str) -> Option<crate::Backend> {
        match self.recipes.get(name) {
            Some(r) => r.spec.runtime,
            None => self.read_file(name)?.runtime,
        }
    }

    /// Directory of template `name` (its tree is `rootfs/` in it).
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Rootfs of template `name`.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("rootfs")
    }

    /// Whether `name` is built from a recipe (a base template, never deleted).
    pub fn is_base(&self, name: &str) -> bool {
        self.recipes.contains(name)
    }

    pub(super) fn read_file(&self, name: &str) -> Option<TemplateFile> {
        let bytes = std::fs::read(self.dir.join(name).join("template.json")).ok()?;
        serde_json::from_slice::<TemplateFile>(&bytes).ok()
    }

    fn read_info(&self, name: &str) -> Option<TemplateInfo> {
        self.read_file(name).map(Into::into)
    }

    /// What capsules of template `name` (on disk) start with.
    pub fn run_config(&self, name: &str) -> Result<RunConfig, RuntimeError> {
        self.read_file(name)
            .map(|f| f.run)
            .ok_or_else(|| RuntimeError::TemplateNotFound(name.to_owned()))
    }

    /// Base templates (built or not) and every other template on disk.
    pub fn list(&self) -> Vec<TemplateInfo> {
        let mut out: Vec<TemplateInfo> = self
            .recipes
            .names()
            .map(|n| {
                self.read_info(n).unwrap_or(TemplateInfo {
                    name: n.to_owned(),
                    base: true,
                    size_bytes: 0,
                    created_at: None,
                })
            })
            .collect();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.filter_map(Result::ok) {
                let Ok(name) = e.file_name().into_string() else {
                    continue;
                };
                if self.recipes.contains(&name) {
                    continue;
                }
                if let Some(i) = self.read_info(&name) {
                    out.push(i);
                }
            }
        }
        out
    }

    /// Makes sure `name` is on disk, building a recipe (and its base templates) on first use,
    /// once however many callers ask at the same time.
    pub async fn ensure(&self, name: &str) -> Result<TemplateInfo, RuntimeError> {
        if let Some(i) = self.read_info(name) {
            return Ok(i);
        }
        let Some(recipe) = self.recipes.get(name).cloned() else {
            return Err(RuntimeError::TemplateNotFound(name.to_owned()));
        };
        let parent = match &recipe.spec.base {
            // Recipes are checked for loops at load, so this recursion ends.
            Base::Template(p) => {
                Box::pin(self.ensure(p)).await?;
                Some(self.rootfs(p))
            }
            _ => None,
        };
        let lock = {
            let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(name.to_owned()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Some(i) = self.read_info(name) {
            return Ok(i);
        }
        let key = self.recipes.key(name).unwrap_or_default();
        let (dir, cache, form) = (self.dir.clone(), self.cache.clone(), self.form.clone());
        let built = tokio::task::spawn_blocking(move || {
            build(
                &dir,
                &cache,
                &recipe,
                parent.as_deref(),
                &key,
                form.as_ref(),
            )
        })
        .await
        .map_err(|e| anyhow::anyhow!("build task: {e}"))
        .and_then(|r| r);
        built.map_err(|source| RuntimeError::TemplateBuild {
            name: name.to_owned(),
            source,
        })
    }

    /// Builds recipe `name` again from scratch: its built tree and its cached tree (not its
    /// base templates') are removed first. Capsules running on the old tree keep it as their
    /// lower layer until they end, so rebuild when none runs (`wrenn template build --force`).
    pub async fn rebuild(&self, name: &str) -> Result<TemplateInfo, RuntimeError> {
        if !self.recipes.contains(name) {
            return Err(RuntimeError::TemplateNotFound(name.to_owned()));
        }
        let target = self.dir.join(name);
        let trash = self.dir.join(unique_tmp_name(name, "deleted"));
        let cache = self.cache.clone();
        let owned = name.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            if target.symlink_metadata().is_ok() {
                crate::sys::rename_noreplace(&target, &trash)?;
                std::fs::remove_dir_all(&trash)?;
            }
            builder::drop_cache(&cache, &owned)
        })
        .await
        .map_err(|e| anyhow::anyhow!("rebuild task: {e}"))
        .and_then(|r| r)
        .map_err(|source| RuntimeError::TemplateBuild {
            name: name.to_owned(),
            source,
        })?;
        self.ensure(name).await
    }

    /// Removes snapshot template `name`.
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), RuntimeError> {
        if self.recipes.contains(name) {
            return Err(RuntimeError::Protected {
                name: name.to_owned(),
                reason: Protection::Base,
            });
        }
        if !self.valid_snapshot_name(name) || self.read_info(name).is_none() {
            return Err(RuntimeError::TemplateNotFound(name.to_owned()));
        }
        let target = self.dir.join(name);
        // Rename first so the name is free at once and a crash never leaves half a tree. The
        // trash name is unique, and never replaces anything, so only our own trash is removed.
        let trash = self.dir.join(unique_tmp_name(name, "deleted"));
        tokio::task::spawn_blocking(move || {
            crate::sys::rename_noreplace(&target, &trash)?;
            std::fs::remove_dir_all(&trash)
        })
        .await
        .map_err(|e| anyhow::anyhow!("delete task: {e}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .map_err(|source| RuntimeError::Host {
            id: name.to_owned(),
            step: "delete template",
            source,
        })
    }

    /// Whether `name` can name a snapshot template on disk (a safe name, up to 128 characters,
    /// so that a server may qualify it with its owner, and not a recipe's).
    pub fn valid_snapshot_name(&self, name: &str) -> bool {
        let b = name.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
            && !self.recipes.contains(name)
    }
}

/// Builds `recipe` into `dir/<name>` (blocking): tree in a temp dir, `template.json`, the
/// backend's form, then a rename into place.
fn build(
    dir: &Path,
    cache: &Path,
    recipe: &super::recipe::Recipe,
    parent: Option<&Path>,
    key: &str,
    form: &dyn TemplateForm,
) -> anyhow::Result<TemplateInfo> {
    use anyhow::Context;
    let name = recipe.name.as_str();
    let final_dir = dir.join(name);
    let tmp = dir.join(unique_tmp_name(name, "build"));
    std::fs::create_dir_all(&tmp).context("create build dir")?;
    let started = std::time::Instant::now();
    let result = (|| {
        let rootfs = tmp.join("rootfs");
        builder::build_tree(recipe, &rootfs, cache, parent, key)?;
        let file = TemplateFile {
            name: name.to_owned(),
            base: true,
            size_bytes: dir_size(&rootfs),
            created_at: Utc::now(),
            run: recipe.run_config(),
            runtime: None,
        };
        file.write(&tmp)?;
        form.materialise(&tmp).context("materialise template")?;
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).context("rename template into place")?;
        Ok(file.into())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        tracing::info!(
            template = name,
            ms = started.elapsed().as_millis() as u64,
            "template ready"
        );
    }
    result
}
