//! Recipes as data: a template whose recipe adds files and starts services with readiness
//! probes, built on `busybox`, in real capsules.

use std::path::Path;
use std::time::Instant;

use wrenn_runtime::{NetworkMode, Runtime, RuntimeError, Source};

use crate::common::*;

/// Writes recipe `name` (its `recipe.toml` and extra files) under `dir`.
fn recipe(dir: &Path, name: &str, toml: &str, files: &[(&str, &str)]) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("recipe dir");
    std::fs::write(d.join("recipe.toml"), toml).expect("recipe.toml");
    for (rel, body) in files {
        std::fs::write(d.join(rel), body).expect("recipe file");
    }
}

/// `web`: busybox + a page + httpd on :8080 (port probe) + a service that becomes ready once
/// it wrote a flag (command probe).
const WEB: &str = r#"
base = { template = "busybox" }
env = { GREETING = "hello from the recipe" }

[[files]]
path = "/srv/index.html"
source = "index.html"

[[services]]
name = "web"
cmd = "httpd"
args = ["-f", "-p", "127.0.0.1:8080", "-h", "/srv"]
probe = { port = 8080 }
timeout_sec = 10

[[services]]
name = "flag"
cmd = "/bin/sh"
args = ["-c", "sleep 0.3; echo \"$GREETING\" > /tmp/ready; exec sleep 100000"]
probe = { command = ["test", "-s", "/tmp/ready"] }
timeout_sec = 10
"#;

async fn tags(c: &Capsule) -> Vec<String> {
    let mut t: Vec<String> = c
        .client
        .processes()
        .await
        .expect("processes")
        .processes
        .into_iter()
        .filter_map(|p| p.tag)
        .collect();
    t.sort();
    t
}

#[tokio::test]
async fn recipe_services_start_and_pass_their_probes_also_from_a_snapshot() {
    if !privileged("recipe_services_start_and_pass_their_probes_also_from_a_snapshot") {
        return;
    }
    let recipes = Scratch::new("recipes");
    recipe(
        recipes.path(),
        "web",
        WEB,
        &[("index.html", "served by a recipe\n")],
    );
    let t = TestRuntime::with_recipes(Some(recipes.path()));
    // Isolated: the port probe reaches the capsule's loopback without any veth.
    let c = t.capsule("web", NetworkMode::Isolated).await;
    // Create returned only once both probes passed.
    let r = sh(
        &c,
        "cat /tmp/ready; wget -qO- http://127.0.0.1:8080/index.html",
    )
    .await;
    assert_eq!(
        r.stdout, "hello from the recipe\nserved by a recipe\n",
        "{r:?}"
    );
    assert_eq!(tags(&c).await, vec!["service-flag", "service-web"]);
    let listed = t.rt.list_templates().await.expect("list");
    assert!(
        listed.iter().any(|i| i.name == "web" && i.base),
        "{listed:?}"
    );

    // A capsule from a snapshot of it starts the services again (files only here).
    sh(&c, "echo from-snapshot > /srv/index.html").await;
    let snap = format!("snap-{}", std::process::id());
    let made = t.rt.snapshot(c.id(), &snap).await.expect("snapshot");
    assert_eq!(made.kind, wrenn_runtime::SnapshotKind::Files);
    let mut s = spec("-", NetworkMode::Isolated, 256, 128, test_disk_mb());
    s.source = Source::Snapshot(snap.clone());
    let d = t.capsule_spec(s).await;
    assert_eq!(tags(&d).await, vec!["service-flag", "service-web"]);
    let r = sh(&d, "wget -qO- http://127.0.0.1:8080/index.html").await;
    assert_eq!(r.stdout, "from-snapshot\n", "{r:?}");
    drop(d);
    drop(c);
    t.rt.delete_template(&snap).await.expect("delete snapshot");
    // A recipe's template is not a snapshot.
    let mut s = spec("-", NetworkMode::Isolated, 256, 128, 0);
    s.source = Source::Snapshot("web".into());
    assert!(matches!(
        t.rt.create(&s).await,
        Err(RuntimeError::TemplateNotFound(_))
    ));
}

#[tokio::test]
async fn a_failing_probe_fails_create_names_the_service_and_leaves_nothing() {
    if !privileged("a_failing_probe_fails_create_names_the_service_and_leaves_nothing") {
        return;
    }
    let recipes = Scratch::new("recipes-bad");
    recipe(
        recipes.path(),
        "deaf",
        r#"
base = { template = "busybox" }
[[services]]
name = "deaf"
cmd = "/bin/sleep"
args = ["100000"]
probe = { port = 9 }
timeout_sec = 1
"#,
        &[],
    );
    recipe(
        recipes.path(),
        "quitter",
        r#"
base = { template = "busybox" }
[[services]]
name = "quitter"
cmd = "/bin/false"
probe = { command = ["false"] }
timeout_sec = 30
"#,
        &[],
    );
    let t = TestRuntime::with_recipes(Some(recipes.path()));
    for (template, want, within_s) in [
        ("deaf", "probe still failing after 1 s", 5),
        ("quitter", "exited before it was ready", 10),
    ] {
        let s = spec(template, NetworkMode::Egress, 256, 128, test_disk_mb());
        let id = s.id.clone();
        t.rt.ensure_template(template).await.expect("build");
        let t0 = Instant::now();
        let err = t.rt.create(&s).await.expect_err("probe must fail");
        assert!(t0.elapsed().as_secs() < within_s, "{:?}", t0.elapsed());
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(
            chain.contains(&format!("service {template} of capsule {id} not ready"))
                && chain.contains(want),
            "{chain}"
        );
        assert!(t.rt.capsule_ids().is_empty());
        assert_eq!(leftovers(&t.data_dir, &id), Vec::<String>::new());
    }
}

#[tokio::test]
async fn a_bad_recipe_fails_runtime_start_with_its_name_and_line() {
    if !privileged("a_bad_recipe_fails_runtime_start_with_its_name_and_line") {
        return;
    }
    let recipes = Scratch::new("recipes-invalid");
    recipe(
        recipes.path(),
        "typo",
        "base = { template = \"busybox\" }\n[[services]]\nname = \"x\"\ncommand = \"/bin/true\"\n",
        &[],
    );
    let data = Scratch::new("data-invalid");
    let mut cfg = TestRuntime::config(data.path());
    cfg.extra_recipes = Some(recipes.path().to_owned());
    let err = wrenn_runtime::ContainerRuntime::new(cfg).expect_err("bad recipe");
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(
        chain.contains("recipe typo: recipe.toml is invalid")
            && chain.contains("unknown field `command`")
            && chain.contains("line 4"),
        "{chain}"
    );
}

/// apt and pip steps on a `minimal` child: downloads from Debian and PyPI, so opt-in.
#[tokio::test]
async fn apt_and_pip_steps_build_into_the_tree() {
    if !privileged("apt_and_pip_steps_build_into_the_tree")
        || !minimal_allowed("apt_and_pip_steps_build_into_the_tree")
    {
        return;
    }
    if std::env::var_os("WRENN_TEST_NETWORK_BUILDS").is_none() {
        eprintln!(
            "SKIP apt_and_pip_steps_build_into_the_tree: downloads packages; \
             run with WRENN_TEST_NETWORK_BUILDS=1"
        );
        return;
    }
    let recipes = Scratch::new("recipes-pip");
    recipe(
        recipes.path(),
        "py",
        r#"
base = { template = "minimal" }
apt = ["python3-venv"]
pip = { packages = ["six"] }
"#,
        &[],
    );
    let t = TestRuntime::with_recipes(Some(recipes.path()));
    let c = t.capsule("py", NetworkMode::Isolated).await;
    let r = sh(
        &c,
        "/opt/venv/bin/python -c 'import six; print(six.PY3)'; \
         test -e /tmp/.wrenn-build-ca.crt && echo ca-left; ls /var/lib/apt/lists | wc -l",
    )
    .await;
    assert_eq!(r.stdout, "True\n0\n", "{r:?}");
}
