//! Templates: recipes (data, under the repository's `images/`) built into trees on first use,
//! and snapshot templates made from capsules.
//!
//! ```text
//! data_dir/templates/<name>/rootfs/        the built tree (overlay lower dir; never written)
//! data_dir/templates/<name>/template.json  TemplateInfo + RunConfig (env, user, services)
//! cache_dir/templates/<name>/rootfs/       a debootstrap base, or a recipe's tree that runs
//!                                          apt or pip on a template base; kept across data dirs
//! cache_dir/templates/<name>/recipe        the key it was built with (debootstrap: suite and
//!                                          package list; others: `Recipes::key`)
//! ```
//!
//! Each build step is logged (`building template: …`, with `template`, `step` and seconds
//! since the start), so `wrenn template build` and the server's log show the same progress.
//! Build steps that fetch from PyPI get the host's CA bundle (`PIP_CERT`) for their length
//! only, for hosts whose egress intercepts TLS.
//!
//! # Design
//! [`recipe`] is the data model and its checks, `store` what is on disk (listing, building
//! on first use, deletion), `builder` turns a recipe into a tree, `snapshot` copies a
//! capsule's tree into a new template. One tree is built per recipe; each backend turns it into
//! what it boots through a [`TemplateForm`] (a directory for containers, later a disk image for
//! microVMs), before the template is renamed into place.
//!
//! Builds go to a temporary sibling dir and are renamed into place, so a crash never leaves a
//! half tree under the final name. Concurrent builds of one name are serialised by a per-name
//! async mutex (in process) and an flock on the debootstrap cache (across processes).
//!
//! # Limitations
//! A built template is not rebuilt when its recipe changes (a base template may be in use as
//! the lower layer of running capsules); `wrenn template build --force NAME` rebuilds it (and its
//! cached tree) when no capsule of it runs. A cached tree is rebuilt when its key changes.

use std::fmt;
use std::path::Path;

mod builder;
pub mod recipe;
mod snapshot;
mod store;

pub use builder::debian_mirror;
pub use recipe::{Probe, Recipe, RecipeError, Recipes, RunConfig, Service};
pub use snapshot::SnapshotDraft;
pub use store::Templates;

/// How a backend turns a built template into what it boots.
pub trait TemplateForm: Send + Sync + fmt::Debug {
    /// Makes this backend's form of the template in `dir` from its finished tree
    /// `dir/rootfs`. Called once per template (build or snapshot), before the template is
    /// renamed into place, so a failure leaves nothing behind.
    fn materialise(&self, dir: &Path) -> anyhow::Result<()>;
}

/// The tree itself is the form: the container backend mounts `rootfs/` as the overlay's lower
/// layer, so there is nothing to make.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectoryForm;

impl TemplateForm for DirectoryForm {
    fn materialise(&self, _dir: &Path) -> anyhow::Result<()> {
        Ok(())
    }
}
