//! Embeds the template recipes of the repository's `images/` (every file of every
//! `images/<name>/` that holds a `recipe.toml`) so that the one `wrenn` binary carries them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let images = manifest.join("../../images");
    println!("cargo:rerun-if-changed={}", images.display());
    let mut code = String::from(
        "/// `(recipe, path relative to images/<recipe>/, contents)` of every embedded file.\n\
         pub(crate) static EMBEDDED: &[(&str, &str, &[u8])] = &[\n",
    );
    let mut names: Vec<PathBuf> = std::fs::read_dir(&images)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    for dir in names.iter().filter(|d| d.join("recipe.toml").is_file()) {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 recipe name");
        let mut all = Vec::new();
        files(dir, &mut all);
        for f in all {
            let rel = f.strip_prefix(dir).expect("below recipe dir");
            let abs = f.canonicalize().expect("canonical path");
            writeln!(
                code,
                "    ({name:?}, {:?}, include_bytes!({:?})),",
                rel.to_str().expect("utf-8 path"),
                abs.to_str().expect("utf-8 path")
            )
            .expect("write");
        }
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("out dir")).join("recipes.rs");
    std::fs::write(out, code).expect("write recipes.rs");
}
