"""The `wrenn capsule …` / `wrenn template …` CLI against the real server."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import BUSYBOX


def cli(server, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, WRENN_BASE_URL=server.base_url, WRENN_API_KEY=key or server.key_alpha)
    return subprocess.run([str(server.bin), *args], capture_output=True, text=True, env=env, timeout=180)


def test_cli_capsule_lifecycle_and_exec(server):
    made = cli(server, "capsule", "create", "--template", BUSYBOX, "--memory-mb", "256")
    assert made.returncode == 0, made.stderr
    capsule = json.loads(made.stdout)
    cid = capsule["id"]
    try:
        assert capsule["status"] == "running"
        assert capsule["memory_mb"] == 256

        ran = cli(server, "capsule", "exec", cid, "--", "echo out; echo err >&2; exit 7")
        assert (ran.returncode, ran.stdout, ran.stderr) == (7, "out\n", "err\n")

        listed = json.loads(cli(server, "capsule", "list").stdout)
        assert cid in {c["id"] for c in listed}
        # Another team does not see it.
        other = cli(server, "capsule", "get", cid, key=server.key_beta)
        assert other.returncode != 0 and "not_found" in other.stderr

        assert json.loads(cli(server, "capsule", "pause", cid).stdout)["status"] == "paused"
        assert json.loads(cli(server, "capsule", "resume", cid).stdout)["status"] == "running"
        templates = json.loads(cli(server, "template", "list").stdout)
        assert {"minimal", "busybox"} <= {t["name"] for t in templates}
    finally:
        gone = cli(server, "capsule", "destroy", cid)
    assert gone.returncode == 0, gone.stderr
    assert json.loads(cli(server, "capsule", "get", cid).stdout)["status"] == "stopped"


def test_cli_reports_errors_and_bad_keys(server):
    bad = cli(server, "capsule", "get", "cl-nope")
    assert bad.returncode != 0 and "invalid_request" in bad.stderr
    unauth = cli(server, "capsule", "list", key="wrn_not_a_key")
    assert unauth.returncode != 0 and "unauthorized" in unauth.stderr
