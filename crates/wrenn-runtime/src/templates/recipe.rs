//! Recipes: what a built-in template is made of, as data.
//!
//! A recipe is the directory `images/<name>/`: a `recipe.toml` plus the files it names. The
//! repository's `images/` is compiled into the binary ([`Recipes::embedded`]); a runtime may add
//! a directory of its own ([`Recipes::with_dir`]).
//!
//! ```toml
//! base = { template = "minimal" }     # or "busybox", or [base.debootstrap] suite/packages_file
//! apt = ["python3-venv"]              # extra Debian packages (on a Debian base)
//! pip = { venv = "/opt/venv", packages = ["jupyter-server"] }
//! user = "root"                       # default user of the services and of E2B calls
//! workdir = "/root"                   # default working directory of E2B calls
//! env = { LANG = "C.UTF-8" }          # environment of the services
//! run = ["useradd -m user"]           # shell commands run in the tree after apt, pip, files
//!
//! [[files]]                           # copied into the tree
//! path = "/etc/motd"
//! source = "files/motd"               # relative to images/<name>/
//! mode = 0o644
//!
//! [[services]]                        # started in every capsule, create waits for the probe
//! name = "jupyter"
//! cmd = "/opt/venv/bin/jupyter"
//! args = ["server", "--port=8888"]
//! probe = { port = 8888 }             # or { command = ["sh", "-c", "test -e /run/ready"] }
//! timeout_sec = 60
//! ```
//!
//! Unknown keys are errors. Every recipe is parsed and checked when a runtime starts, so a bad
//! one fails start-up with its name, not a capsule create later.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/recipes.rs"));
}

/// How long a service may take to pass its probe when the recipe does not say.
pub const DEFAULT_SERVICE_TIMEOUT_SEC: u64 = 30;

/// Why a recipe was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// `recipe.toml` is not valid TOML or not a recipe (unknown key, wrong type, ...).
    #[error("recipe {name}: recipe.toml is invalid")]
    Parse {
        /// Recipe name.
        name: String,
        /// The parser's message, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// It parsed but says something impossible.
    #[error("recipe {name}: {problem}")]
    Invalid {
        /// Recipe name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Reading a recipe directory failed.
    #[error("reading recipe dir {path} failed")]
    Read {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// `recipe.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecipeSpec {
    /// What the tree starts from.
    pub base: Base,
    /// Extra Debian packages installed with apt (needs a Debian base).
    #[serde(default)]
    pub apt: Vec<String>,
    /// Python packages installed into a venv.
    #[serde(default)]
    pub pip: Option<Pip>,
    /// Files copied into the tree.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Environment of the template's services.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Default user of the template's services and of E2B calls that name none (default root).
    #[serde(default)]
    pub user: Option<String>,
    /// Default working directory of E2B calls that name none (default the user's home).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Shell commands (`/bin/sh -c`) run in the tree, in order, after apt, pip and files.
    #[serde(default)]
    pub run: Vec<String>,
    /// Long-running processes started in every capsule of the template.
    #[serde(default)]
    pub services: Vec<Service>,
    /// The backend every capsule of the template must run on (`container` or `microvm`);
    /// none = any.
    #[serde(default)]
    pub runtime: Option<crate::Backend>,
}

/// What a tree starts from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Base {
    /// The host's static busybox with one symlink per applet.
    Busybox,
    /// `debootstrap --variant=minbase` of a Debian suite with extra packages; cached across
    /// data dirs.
    Debootstrap {
        /// Debian suite, e.g. `bookworm`.
        suite: String,
        /// File of the recipe listing packages, one a line, `#` comments.
        packages_file: String,
    },
    /// The built tree of another recipe.
    Template(String),
}

/// Python packages in a venv.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pip {
    /// Where the venv is made (`python3 -m venv`).
    #[serde(default = "default_venv")]
    pub venv: String,
    /// Requirement strings for `pip install`.
    pub packages: Vec<String>,
}

fn default_venv() -> String {
    "/opt/venv".to_owned()
}

/// One file copied into the tree.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path in the tree.
    pub path: String,
    /// File of the recipe (relative to `images/<name>/`).
    pub source: String,
    /// Permission bits (default `0o644`).
    #[serde(default)]
    pub mode: Option<u32>,
}

/// A process started (through the agent, as a tagged background process) in every capsule of
/// the template, after create and after create from a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name; the process is tagged `service-<name>`.
    pub name: String,
    /// Program.
    pub cmd: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment (on top of the recipe's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// User (default the recipe's).
    #[serde(default)]
    pub user: Option<String>,
    /// When it is ready; without one it is ready once started.
    #[serde(default)]
    pub probe: Option<Probe>,
    /// How long it may take to pass the probe, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_sec: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_SERVICE_TIMEOUT_SEC
}

impl Service {
    /// The agent tag of its process.
    pub fn tag(&self) -> String {
        format!("service-{}", self.name)
    }
}

/// A readiness probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Probe {
    /// A TCP connect to this port on the capsule's loopback succeeds.
    Port(u16),
    /// This command (program and arguments, run through the agent) exits 0.
    Command(Vec<String>),
}

/// What a capsule of a template starts with: the parts of its recipe that are not files.
/// Stored with the template (`template.json`), so snapshots carry it on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Environment of the services.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Default user of the services and of E2B calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Default working directory of E2B calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Services, started in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

/// A parsed, checked recipe with its files.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Template name.
    pub name: String,
    /// `recipe.toml`.
    pub spec: RecipeSpec,
    /// Every file of the recipe dir, by path relative to it.
    files: BTreeMap<String, Vec<u8>>,
}

impl Recipe {
    /// Parses `recipe.toml` of `name` given the files of its dir, and checks it.
    pub fn parse(name: &str, files: BTreeMap<String, Vec<u8>>) -> Result<Self, RecipeError> {
        let invalid = |problem: String| RecipeError::Invalid {
            name: name.to_owned(),
            problem,
        };
        let text = files
            .get("recipe.toml")
            .ok_or_else(|| invalid("no recipe.toml".into()))?;
        let text =
            std::str::from_utf8(text).map_err(|_| invalid("recipe.toml is not UTF-8".into()))?;
        let spec: RecipeSpec = toml::from_str(text).map_err(|source| RecipeError::Parse {
            name: name.to_owned(),
            source,
        })?;
        let recipe = Self {
            name: name.to_owned(),
            spec,
            files,
        };
        recipe.check().map_err(invalid)?;
        Ok(recipe)
    }

    /// A file of the recipe dir.
    pub fn file(&self, rel: &str) -> Option<&[u8]> {
        self.files.get(rel).map(Vec::as_slice)
    }

    /// Whether building it runs programs of the tree (apt, pip or `run`): slow, so its tree is
    /// cached.
    pub fn installs_packages(&self) -> bool {
        !self.spec.apt.is_empty() || self.spec.pip.is_some() || !self.spec.run.is_empty()
    }

    /// What capsules of this template start with.
    pub fn run_config(&self) -> RunConfig {
        RunConfig {
            env: self.spec.env.clone(),
            user: self.spec.user.clone(),
            workdir: self.spec.workdir.clone(),
            services: self.spec.services.clone(),
        }
    }

    fn check(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err("name must be letters, digits, '.', '_' or '-'".into());
        }
        let s = &self.spec;
        match &s.base {
            Base::Busybox => {
                if !s.apt.is_empty() || s.pip.is_some() {
                    return Err("apt and pip need a Debian base, not busybox".into());
                }
            }
            Base::Debootstrap {
                suite,
                packages_file,
            } => {
                if !valid_name(suite) {
                    return Err(format!("invalid debootstrap suite {suite:?}"));
                }
                if self.file(packages_file).is_none() {
                    return Err(format!("packages_file {packages_file:?} not found"));
                }
            }
            Base::Template(parent) if parent == &self.name => {
                return Err("a recipe cannot be its own base".into());
            }
            Base::Template(_) => {}
        }
        for p in s.apt.iter().chain(s.pip.iter().flat_map(|p| &p.packages)) {
            if p.is_empty() || p.starts_with('-') || p.chars().any(char::is_whitespace) {
                return Err(format!("invalid package {p:?}"));
            }
        }
        if let Some(pip) = &s.pip {
            if !safe_abs_path(&pip.venv) {
                return Err(format!("pip venv {:?} must be an absolute path", pip.venv));
            }
        }
        if let Some(w) = &s.workdir {
            if !safe_abs_path(w) && w != "/" {
                return Err(format!("workdir {w:?} must be absolute, without '..'"));
            }
        }
        if s.run.iter().any(|c| c.trim().is_empty()) {
            return Err("a run command is empty".into());
        }
        for f in &s.files {
            if !safe_abs_path(&f.path) {
                return Err(format!(
                    "file path {:?} must be absolute, without '..'",
                    f.path
                ));
            }
            if self.file(&f.source).is_none() {
                return Err(format!("file source {:?} not found", f.source));
            }
            if f.mode.is_some_and(|m| m > 0o7777) {
                return Err(format!("file {:?}: mode out of range", f.path));
            }
        }
        let mut seen = Vec::new();
        for svc in &s.services {
            if !valid_name(&svc.name) || svc.name.len() > 48 {
                return Err(format!("invalid service name {:?}", svc.name));
            }
            if seen.contains(&&svc.name) {
                return Err(format!("service {:?} listed twice", svc.name));
            }
            seen.push(&svc.name);
            if svc.cmd.is_empty() {
                return Err(format!("service {:?}: cmd is empty", svc.name));
            }
            if svc.timeout_sec == 0 {
                return Err(format!("service {:?}: timeout_sec must be > 0", svc.name));
            }
            match &svc.probe {
                Some(Probe::Port(0)) => {
                    return Err(format!("service {:?}: probe port 0", svc.name))
                }
                Some(Probe::Command(c)) if c.first().is_none_or(String::is_empty) => {
                    return Err(format!("service {:?}: probe command is empty", svc.name))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Letters, digits, `.`, `_`, `-`; starts with a letter or digit; at most 64 bytes.
fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn safe_abs_path(p: &str) -> bool {
    p.starts_with('/') && p.len() > 1 && !p.split('/').any(|c| c == "..")
}

/// Every recipe a runtime can build, by name.
#[derive(Debug, Clone, Default)]
pub struct Recipes {
    by_name: BTreeMap<String, Recipe>,
}

impl Recipes {
    /// The recipes compiled in from the repository's `images/`.
    pub fn embedded() -> Result<Self, RecipeError> {
        let mut dirs: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
        for (name, rel, bytes) in embedded::EMBEDDED {
            dirs.entry(name)
                .or_default()
                .insert((*rel).to_owned(), bytes.to_vec());
        }
        let mut out = Self::default();
        for (name, files) in dirs {
            out.insert(Recipe::parse(name, files)?)?;
        }
        out.check_bases()?;
        Ok(out)
    }

    /// These recipes plus those of `dir` (every `dir/<name>/recipe.toml`); a name already
    /// known is refused.
    pub fn with_dir(mut self, dir: &Path) -> Result<Self, RecipeError> {
        let read = |p: &Path, source| RecipeError::Read {
            path: p.display().to_string(),
            source,
        };
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| read(dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("recipe.toml").is_file())
            .collect();
        names.sort();
        for d in names {
            let name = d
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let mut files = BTreeMap::new();
            read_files(&d, &d, &mut files).map_err(|e| read(&d, e))?;
            self.insert(Recipe::parse(&name, files)?)?;
        }
        self.check_bases()?;
        Ok(self)
    }

    fn insert(&mut self, r: Recipe) -> Result<(), RecipeError> {
        if self.by_name.contains_key(&r.name) {
            return Err(RecipeError::Invalid {
                name: r.name,
                problem: "defined twice".into(),
            });
        }
        self.by_name.insert(r.name.clone(), r);
        Ok(())
    }

    /// Every `base = { template = .. }` names a known recipe, and no chain of them loops.
    fn check_bases(&self) -> Result<(), RecipeError> {
        for r in self.by_name.values() {
            let mut chain = vec![r.name.as_str()];
            let mut cur = r;
            while let Base::Template(parent) = &cur.spec.base {
                let invalid = |problem| RecipeError::Invalid {
                    name: r.name.clone(),
                    problem,
                };
                if chain.contains(&parent.as_str()) {
                    return Err(invalid(format!("base chain loops: {chain:?}")));
                }
                cur = self
                    .by_name
                    .get(parent)
                    .ok_or_else(|| invalid(format!("base template {parent:?} has no recipe")))?;
                chain.push(parent);
            }
        }
        Ok(())
    }

    /// The identity of recipe `name`: a hash of every file of its dir and, recursively, of its
    /// base template's recipe, so that a change anywhere down the chain rebuilds a cached tree.
    pub fn key(&self, name: &str) -> Option<String> {
        use sha2::{Digest, Sha256};
        let r = self.by_name.get(name)?;
        let mut h = Sha256::new();
        if let Base::Template(parent) = &r.spec.base {
            // Bases are checked for loops at load, so this recursion ends.
            h.update(self.key(parent)?);
        }
        for (rel, bytes) in &r.files {
            h.update((rel.len() as u64).to_le_bytes());
            h.update(rel);
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        Some(format!("{:x}", h.finalize()))
    }

    /// The recipe of `name`.
    pub fn get(&self, name: &str) -> Option<&Recipe> {
        self.by_name.get(name)
    }

    /// Whether `name` is built from a recipe (a base template).
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

fn read_files(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            read_files(root, &p, out)?;
        } else if meta.is_file() {
            let rel = p
                .strip_prefix(root)
                .map_err(std::io::Error::other)?
                .to_string_lossy()
                .into_owned();
            out.insert(rel, std::fs::read(&p)?);
        }
    }
    Ok(())
}

/// The package names of a packages file (one a line, `#` comments).
pub fn package_list(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Recipe, RecipeError> {
        let mut files = BTreeMap::new();
        files.insert("recipe.toml".to_owned(), toml.as_bytes().to_vec());
        files.insert("motd".to_owned(), b"hi".to_vec());
        Recipe::parse("t", files)
    }

    #[test]
    fn a_recipe_may_require_a_backend() {
        let r = parse("base = \"busybox\"\nruntime = \"microvm\"\n").expect("parse");
        assert_eq!(r.spec.runtime, Some(crate::Backend::MicroVm));
        assert_eq!(
            parse("base = \"busybox\"\n").expect("parse").spec.runtime,
            None
        );
        assert!(parse("base = \"busybox\"\nruntime = \"qemu\"\n").is_err());
    }

    #[test]
    fn embedded_recipes_parse_and_keep_their_content() {
        let r = Recipes::embedded().expect("embedded recipes");
        let names: Vec<_> = r.names().collect();
        assert!(
            names.contains(&"busybox") && names.contains(&"minimal"),
            "{names:?}"
        );
        let minimal = r.get("minimal").expect("minimal");
        let Base::Debootstrap {
            suite,
            packages_file,
        } = &minimal.spec.base
        else {
            panic!("minimal base {:?}", minimal.spec.base);
        };
        assert_eq!(suite, "bookworm");
        let text = std::str::from_utf8(minimal.file(packages_file).expect("file")).expect("utf8");
        let p = package_list(text);
        for want in [
            "bash",
            "python3",
            "git",
            "curl",
            "ca-certificates",
            "procps",
        ] {
            assert!(p.contains(&want), "{want}");
        }
        // E2B's templates: calls default to `user` in /home/user; the code interpreter's
        // services run as root and it is ready when its port-49999 service is.
        for name in ["base", "code-interpreter-v1"] {
            let run = r.get(name).expect(name).run_config();
            assert_eq!(run.user.as_deref(), Some("user"), "{name}");
            assert_eq!(run.workdir.as_deref(), Some("/home/user"), "{name}");
        }
        let ci = r.get("code-interpreter-v1").expect("ci").run_config();
        assert!(ci
            .services
            .iter()
            .all(|s| s.user.as_deref() == Some("root")));
        let probe = ci.services.last().and_then(|s| s.probe.clone());
        assert!(
            matches!(&probe, Some(Probe::Command(c)) if c.iter().any(|a| a.contains(":49999/health"))),
            "{probe:?}"
        );
        let bb = r.get("busybox").expect("busybox");
        assert_eq!(bb.spec.base, Base::Busybox);
        let passwd = bb.file("files/etc/passwd").expect("passwd");
        assert!(String::from_utf8_lossy(passwd).contains("root:x:0:0"));
        assert!(String::from_utf8_lossy(passwd).contains("nobody:"));
        assert_eq!(bb.run_config(), RunConfig::default());
    }

    #[test]
    fn a_service_recipe_parses() {
        let r = parse(
            r#"
            base = { template = "busybox" }
            env = { A = "1" }
            user = "user"
            workdir = "/home/user"
            run = ["adduser -D user"]
            [[files]]
            path = "/etc/motd"
            source = "motd"
            mode = 0o600
            [[services]]
            name = "web"
            cmd = "/bin/httpd"
            args = ["-f", "-p", "8080"]
            probe = { port = 8080 }
            [[services]]
            name = "flag"
            cmd = "/bin/sh"
            probe = { command = ["test", "-e", "/tmp/flag"] }
            timeout_sec = 5
            "#,
        )
        .expect("parse");
        assert_eq!(r.spec.base, Base::Template("busybox".into()));
        assert_eq!(r.spec.files[0].mode, Some(0o600));
        let run = r.run_config();
        assert_eq!(run.services[0].probe, Some(Probe::Port(8080)));
        assert_eq!(run.services[0].timeout_sec, DEFAULT_SERVICE_TIMEOUT_SEC);
        assert_eq!(run.services[1].tag(), "service-flag");
        assert_eq!(run.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(run.user.as_deref(), Some("user"));
        assert_eq!(run.workdir.as_deref(), Some("/home/user"));
        assert_eq!(r.spec.run, ["adduser -D user"]);
        assert!(r.installs_packages(), "run steps are cached like packages");
        // The run config round-trips through template.json.
        let json = serde_json::to_string(&run).expect("json");
        assert_eq!(serde_json::from_str::<RunConfig>(&json).expect("back"), run);
    }

    #[test]
    fn parse_errors_name_the_recipe_and_the_problem() {
        let chain = |e: &RecipeError| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                s.push_str(": ");
                s.push_str(&c.to_string());
                src = c.source();
            }
            s
        };
        let e = parse("base = \"busybox\"\nbogus = 1\n").expect_err("unknown key");
        let msg = chain(&e);
        assert!(msg.starts_with("recipe t: recipe.toml is invalid"), "{msg}");
        assert!(msg.contains("bogus") && msg.contains("line 2"), "{msg}");
        let e = parse("base = \"scratch\"\n").expect_err("unknown base");
        assert!(chain(&e).contains("scratch"), "{}", chain(&e));
        let cases = [
            ("base = \"busybox\"\napt = [\"vim\"]\n", "need a Debian base"),
            (
                "base = \"busybox\"\n[[files]]\npath = \"etc/x\"\nsource = \"motd\"\n",
                "must be absolute",
            ),
            (
                "base = \"busybox\"\n[[files]]\npath = \"/x\"\nsource = \"nope\"\n",
                "file source \"nope\" not found",
            ),
            (
                "base = \"busybox\"\n[[services]]\nname = \"a\"\ncmd = \"x\"\n[[services]]\nname = \"a\"\ncmd = \"y\"\n",
                "listed twice",
            ),
            (
                "base = \"busybox\"\n[[services]]\nname = \"a\"\ncmd = \"x\"\nprobe = { port = 0 }\n",
                "probe port 0",
            ),
            ("base = { template = \"t\" }\n", "its own base"),
            ("base = \"busybox\"\nworkdir = \"home\"\n", "workdir \"home\""),
            ("base = \"busybox\"\nrun = [\" \"]\n", "run command is empty"),
        ];
        for (toml, want) in cases {
            let e = parse(toml).expect_err(want);
            assert!(
                matches!(e, RecipeError::Invalid { .. }) && e.to_string().contains(want),
                "{toml}: {e}"
            );
        }
    }

    #[test]
    fn bases_must_exist_and_not_loop() {
        let s = crate::test_utils::Scratch::new("recipes");
        for (name, base) in [("a", "b"), ("b", "a")] {
            std::fs::create_dir_all(s.path().join(name)).expect("mkdir");
            std::fs::write(
                s.path().join(name).join("recipe.toml"),
                format!("base = {{ template = \"{base}\" }}\n"),
            )
            .expect("write");
        }
        let e = Recipes::default().with_dir(s.path()).expect_err("loop");
        assert!(e.to_string().contains("loops"), "{e}");
        std::fs::remove_dir_all(s.path().join("b")).expect("rm");
        let e = Recipes::default()
            .with_dir(s.path())
            .expect_err("missing base");
        assert!(e.to_string().contains("has no recipe"), "{e}");
        let e = Recipes::embedded()
            .expect("embedded")
            .with_dir(&std::path::PathBuf::from("/nonexistent-wrenn"))
            .expect_err("missing dir");
        assert!(matches!(e, RecipeError::Read { .. }), "{e}");
    }

    /// A cached tree's key changes with any file of its recipe or of its base's recipe.
    #[test]
    fn key_covers_the_recipe_and_its_base_chain() {
        let embedded = Recipes::embedded().expect("recipes");
        let cr = embedded
            .key("code-runner-beta")
            .expect("code-runner-beta key");
        assert_eq!(embedded.key("code-runner-beta"), Some(cr.clone()), "stable");
        assert!(embedded.key("nope").is_none());
        assert!(embedded
            .get("code-runner-beta")
            .expect("recipe")
            .installs_packages());
        let mut recipes = Recipes::default();
        let mk = |name: &str, text: &str, extra: &[u8]| {
            let mut files = BTreeMap::new();
            files.insert("recipe.toml".to_owned(), text.as_bytes().to_vec());
            files.insert("extra".to_owned(), extra.to_vec());
            Recipe::parse(name, files).expect("recipe")
        };
        recipes
            .insert(mk("b", "base = \"busybox\"", b"1"))
            .expect("b");
        recipes
            .insert(mk("c", "base = { template = \"b\" }", b"x"))
            .expect("c");
        let before = recipes.key("c").expect("key");
        recipes.by_name.remove("b");
        recipes
            .insert(mk("b", "base = \"busybox\"", b"2"))
            .expect("b");
        assert_ne!(recipes.key("c").expect("key"), before, "base file changed");
    }
}
