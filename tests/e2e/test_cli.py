"""The `wrenn` CLI against the real server, driven as a person would: tables, id prefixes,
streamed exec, cp both ways, events, snapshots, API keys, and the shell in a real terminal
(tmux)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import BUSYBOX, MINIMAL, assert_error, poll


def cli(server, *args: str, key: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, WRENN_BASE_URL=server.base_url, WRENN_API_KEY=key or server.key_alpha)
    env.pop("WRENN_DIR", None)
    return subprocess.run(
        [str(server.bin), *args], capture_output=True, text=True, env=env, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"{proc.args}: rc={proc.returncode} stderr={proc.stderr!r}"
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess, code: str) -> None:
    """A failure: non-zero exit, one line on stderr naming the contract's code."""
    assert proc.returncode != 0, proc
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"want one error line: {proc.stderr!r}"
    assert lines[0].startswith("error: ") and code in lines[0], lines[0]


@pytest.fixture
def cli_capsule(server):
    """``make(template, *flags)`` → id of a capsule made with `wrenn capsule create`; all are
    destroyed (with `wrenn capsule rm`) at the end."""
    made: list[str] = []

    def make(template: str = BUSYBOX, *flags: str) -> str:
        out = ok(cli(server, "capsule", "create", "--template", template, *flags)).strip()
        assert re.fullmatch(r"cl-[0-9a-z]{25}", out), out
        made.append(out)
        return out

    yield make
    for cid in made:
        ok(cli(server, "capsule", "rm", cid))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_capsule_lifecycle_table_and_prefixes(server, cli_capsule):
    cid = cli_capsule(BUSYBOX, "--memory-mb", "256", "--label", "owner=cli-test")

    table = ok(cli(server, "capsule", "ls")).splitlines()
    assert table[0].split() == ["ID", "STATUS", "TEMPLATE", "VCPUS", "MEMORY", "AGE"]
    row = next(line for line in table[1:] if line.startswith(cid))
    cells = re.split(r"\s{2,}", row.strip())
    assert cells[:5] == [cid, "running", BUSYBOX, "1", "256 MiB"], cells
    assert re.fullmatch(r"\d+[smhd]", cells[5]), cells
    assert "\x1b[" not in "\n".join(table), "no colour when stdout is not a terminal"

    assert cid in ok(cli(server, "capsule", "ls", "-q")).split()
    listed = json.loads(ok(cli(server, "capsule", "ls", "--json")))
    mine = next(c for c in listed if c["id"] == cid)
    assert mine["metadata"]["owner"] == "cli-test" and mine["memory_mb"] == 256

    # Unique prefixes, with or without `cl-`, name the capsule everywhere.
    short = cid[3:9]
    assert json.loads(ok(cli(server, "capsule", "inspect", short)))["id"] == cid
    assert ok(cli(server, "capsule", "ping", cid[:7])).strip() == cid
    one_line_error(cli(server, "capsule", "inspect", "zzzzzzzz-no"), "not_found")
    # Another team does not see it, by prefix or by full id.
    one_line_error(cli(server, "capsule", "inspect", short, key=server.key_beta), "not_found")
    one_line_error(cli(server, "capsule", "inspect", cid, key=server.key_beta), "not_found")

    assert ok(cli(server, "capsule", "pause", short)).strip() == cid
    assert json.loads(ok(cli(server, "capsule", "get", cid)))["status"] == "paused"
    one_line_error(cli(server, "capsule", "exec", cid, "--", "true"), "invalid_state")
    assert ok(cli(server, "capsule", "resume", short)).strip() == cid
    assert json.loads(ok(cli(server, "capsule", "get", cid)))["status"] == "running"

    ok(cli(server, "capsule", "destroy", short))
    assert json.loads(ok(cli(server, "capsule", "get", cid)))["status"] == "stopped"
    assert cid not in ok(cli(server, "capsule", "ls", "-q")).split()


def test_cli_exec_streams_output_and_returns_the_exit_code(server, cli_capsule):
    cid = cli_capsule()
    ran = cli(server, "capsule", "exec", cid[3:10], "--", "echo out; echo err >&2; exit 7")
    assert (ran.returncode, ran.stdout, ran.stderr) == (7, "out\n", "err\n")
    env = cli(server, "capsule", "exec", cid, "-e", "GREETING=hi", "-w", "/tmp", "--", 'echo "$GREETING $(pwd)"')
    assert (env.returncode, env.stdout) == (0, "hi /tmp\n")

    # Output arrives as it is produced, not when the command ends.
    env_vars = dict(os.environ, WRENN_BASE_URL=server.base_url, WRENN_API_KEY=server.key_alpha)
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(server.bin), "capsule", "exec", cid, "--", "echo first; sleep 3; echo second; exit 4"],
        stdout=subprocess.PIPE, text=True, env=env_vars,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first\n"
        first_at = time.monotonic() - started
        assert proc.stdout.readline() == "second\n"
        assert proc.wait(timeout=30) == 4
    finally:
        proc.kill()
    assert first_at < 2.5, f"first line took {first_at:.1f}s: output was not streamed"


def test_cli_cp_files_and_directories_both_ways(server, cli_capsule, tmp_path):
    cid = cli_capsule()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (tree / "sub" / "deeper" / "c.txt").write_text("gamma\n")
    (tree / "empty").mkdir()

    # In: a file to a new path (by prefix), a directory into an existing directory.
    ok(cli(server, "capsule", "cp", str(big), f"{cid[3:9]}:/tmp/in.bin"))
    ok(cli(server, "capsule", "cp", str(tree), f"{cid}:/tmp"))
    inside = ok(cli(server, "capsule", "exec", cid, "--",
                    "sha256sum /tmp/in.bin /tmp/tree/a.txt /tmp/tree/sub/b.bin; ls -d /tmp/tree/empty"))
    sums = dict(reversed(line.split()) for line in inside.splitlines()[:3])
    assert sums["/tmp/in.bin"] == sha256(big)
    assert sums["/tmp/tree/a.txt"] == sha256(tree / "a.txt")
    assert sums["/tmp/tree/sub/b.bin"] == sha256(tree / "sub" / "b.bin")
    assert inside.splitlines()[3] == "/tmp/tree/empty"

    # Out: a file into an existing local directory, a directory to a new local path.
    ok(cli(server, "capsule", "exec", cid, "--", "head -c 2000000 /dev/urandom > /tmp/out.bin"))
    outdir = tmp_path / "out"
    outdir.mkdir()
    ok(cli(server, "capsule", "cp", f"{cid}:/tmp/out.bin", str(outdir)))
    want = ok(cli(server, "capsule", "exec", cid, "--", "sha256sum /tmp/out.bin")).split()[0]
    assert sha256(outdir / "out.bin") == want
    ok(cli(server, "capsule", "cp", f"{cid}:/tmp/tree", str(tmp_path / "back")))
    back = tmp_path / "back"
    for rel in ("a.txt", "sub/b.bin", "sub/deeper/c.txt"):
        assert sha256(back / rel) == sha256(tree / rel), rel
    assert (back / "empty").is_dir()

    one_line_error(cli(server, "capsule", "cp", f"{cid}:/no/such/file", str(tmp_path)), "not_found")
    one_line_error(cli(server, "capsule", "cp", str(big), str(tmp_path / "x")), "invalid_request")


def test_cli_events_follow(server, cli_capsule):
    env = dict(os.environ, WRENN_BASE_URL=server.base_url, WRENN_API_KEY=server.key_alpha)
    proc = subprocess.Popen(
        [str(server.bin), "events", "--follow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "connected"
        cid = cli_capsule()
        ok(cli(server, "capsule", "pause", cid))
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ev = json.loads(proc.stdout.readline())
            seen.append((ev["event"], (ev.get("resource") or {}).get("id")))
            if ev["event"] == "capsule.pause" and ev["resource"]["id"] == cid and ev["sandbox"]["status"] == "paused":
                break
        else:
            raise AssertionError(f"no capsule.pause for {cid}: {seen}")
        assert ("capsule.create", cid) in seen
    finally:
        proc.kill()
        proc.wait()


def test_cli_snapshots_and_templates(server, cli_capsule):
    cid = cli_capsule()
    ok(cli(server, "capsule", "exec", cid, "--", "echo kept > /root/mark"))
    name = f"cli-snap-{uuid.uuid4().hex[:6]}"
    assert ok(cli(server, "snapshot", "create", cid[3:9], "--name", name)).strip() == name
    assert name in ok(cli(server, "snapshot", "ls", "-q")).split()
    table = ok(cli(server, "template", "ls")).splitlines()
    assert table[0].split() == ["NAME", "TYPE", "VCPUS", "MEMORY", "SIZE", "AGE"]
    kinds = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert kinds[name] == "snapshot" and kinds[BUSYBOX] == "base" and kinds[MINIMAL] == "base"
    assert {t["name"] for t in json.loads(ok(cli(server, "template", "ls", "--json")))} >= {name, BUSYBOX}
    one_line_error(cli(server, "template", "rm", BUSYBOX), "forbidden")
    assert ok(cli(server, "snapshot", "rm", name)).strip() == name
    assert name not in ok(cli(server, "snapshot", "ls", "-q")).split()
    one_line_error(cli(server, "snapshot", "rm", name), "not_found")


def _until_unauthorized(server, key: str, within: float) -> float:
    started = time.monotonic()
    while True:
        r = httpx.get(f"{server.base_url}/v1/capsules", headers={"X-API-Key": key}, timeout=10)
        if r.status_code == 401:
            assert_error(r, 401, "unauthorized")
            return time.monotonic() - started
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < within, f"key still works after {within}s"
        time.sleep(0.05)


def test_cli_keys_create_list_revoke(server):
    # Remote: the new key joins the caller's team and works at once.
    secret = ok(cli(server, "key", "create", "--name", "cli-made")).strip()
    assert re.fullmatch(r"wrn_[0-9a-f]{40}", secret), secret
    ok(cli(server, "capsule", "ls", key=secret))
    keys = json.loads(ok(cli(server, "key", "ls", "--json")))
    made = next(k for k in keys if k["prefix"] == secret[:8])
    assert made["name"] == "cli-made" and made["id"].startswith("key-")
    assert made["last_used_at"] is not None  # it was just used
    table = ok(cli(server, "key", "ls")).splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "PREFIX"]
    assert secret not in "".join(table), "a listing never shows a secret"
    # Team beta sees none of alpha's keys and cannot revoke them.
    beta = json.loads(ok(cli(server, "key", "ls", "--json", key=server.key_beta)))
    assert made["id"] not in {k["id"] for k in beta}
    one_line_error(cli(server, "key", "revoke", made["id"], key=server.key_beta), "not_found")
    ok(cli(server, "capsule", "ls", key=secret))

    # Revoked through the API (with itself): stops working within a second.
    assert ok(cli(server, "key", "revoke", made["id"], key=secret)).strip() == made["id"]
    assert _until_unauthorized(server, secret, within=1.0) < 1.0
    one_line_error(cli(server, "capsule", "ls", key=secret), "unauthorized")

    # Local (the server's store, as on its host): also within a second.
    local = ok(cli(server, "key", "create", "--team", "alpha", "--name", "local", "--dir", str(server.data_dir))).strip()
    ok(cli(server, "capsule", "ls", key=local))
    listed = ok(cli(server, "key", "ls", "--dir", str(server.data_dir))).splitlines()
    assert listed[0].split()[:2] == ["ID", "TEAM"]
    row = next(line for line in listed if local[:8] in line)
    key_id = row.split()[0]
    ok(cli(server, "key", "revoke", key_id, "--dir", str(server.data_dir)))
    assert _until_unauthorized(server, local, within=1.0) < 1.0
    one_line_error(cli(server, "key", "revoke", key_id, "--dir", str(server.data_dir)), "not_found")


def test_api_keys_http_shape(server, api, api_beta):
    for prefix in ("/v1", "/api/v1"):
        r = api.post(f"{prefix}/api-keys", json={"name": "shape"})
        assert r.status_code == 201, r.text
        made = r.json()
        assert set(made) == {"id", "name", "prefix", "created_at", "last_used_at", "key"}
        assert made["key"].startswith(made["prefix"]) and made["last_used_at"] is None
        listed = api.get(f"{prefix}/api-keys").json()
        row = next(k for k in listed if k["id"] == made["id"])
        assert set(row) == {"id", "name", "prefix", "created_at", "last_used_at"}
        assert_error(api_beta.delete(f"{prefix}/api-keys/{made['id']}"), 404, "not_found")
        assert api.delete(f"{prefix}/api-keys/{made['id']}").status_code == 204
        assert_error(api.delete(f"{prefix}/api-keys/{made['id']}"), 404, "not_found")
    unnamed = api.post("/v1/api-keys")
    assert unnamed.status_code == 201 and unnamed.json()["name"] == "api-key"
    api.delete(f"/v1/api-keys/{unnamed.json()['id']}")
    assert_error(api.post("/v1/api-keys", json={"name": "x" * 65}), 400, "invalid_request")
    assert_error(httpx.get(f"{server.base_url}/v1/api-keys"), 401, "unauthorized")
    paths = httpx.get(f"{server.base_url}/openapi.json").json()["paths"]
    assert {"get", "post"} <= set(paths["/v1/api-keys"]) and "delete" in paths["/v1/api-keys/{id}"]


def test_cli_reports_errors_and_bad_keys(server):
    one_line_error(cli(server, "capsule", "get", "cl-nope"), "not_found")
    one_line_error(cli(server, "capsule", "ls", key="wrn_not_a_key"), "unauthorized")
    env = dict(os.environ, WRENN_BASE_URL="http://127.0.0.1:1")
    dead = subprocess.run([str(server.bin), "capsule", "ls", "--api-key", "k"], capture_output=True, text=True, env=env, timeout=30)
    assert dead.returncode != 0 and len(dead.stderr.strip().splitlines()) == 1, dead.stderr


def test_cli_completions(server):
    for shell, marker in (("bash", "_wrenn()"), ("zsh", "#compdef wrenn"), ("fish", "complete -c wrenn")):
        out = ok(cli(server, "completions", shell))
        assert marker in out and "capsule" in out, shell


# ─────────────────────────────────────────────────────────────────────────────
# The shell, in a real terminal
# ─────────────────────────────────────────────────────────────────────────────


class Tmux:
    """One tmux server of our own (its own socket), with a window per session."""

    def __init__(self, tmp: Path) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed (scripts/deps.sh installs it)")
        self.socket = str(tmp / "tmux.sock")

    def run(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, (args, out.stderr)
        return out.stdout

    def start(self, name: str, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        self.run("new-session", "-d", "-s", name, "-x", "100", "-y", "30", f"env {exports} {command}")

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-J", "-S", "-200", "-t", name)

    def keys(self, name: str, *keys: str) -> None:
        self.run("send-keys", "-t", name, *keys)

    def type(self, name: str, line: str) -> None:
        self.run("send-keys", "-t", name, "-l", line)
        self.run("send-keys", "-t", name, "Enter")

    def wait(self, name: str, pattern: str, timeout: float = 30) -> re.Match:
        rx = re.compile(pattern)
        return poll(lambda: rx.search(self.screen(name)), timeout=timeout, interval=0.1,
                    what=f"{pattern!r} on the screen of {name}")

    def pane_pid(self, name: str) -> int:
        return int(self.run("display-message", "-p", "-t", name, "#{pane_pid}").strip())

    def kill_server(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


def test_cli_shell_in_a_real_terminal(server, cli_capsule, tmp_path):
    cid = cli_capsule(MINIMAL)
    tmux = Tmux(tmp_path)
    env = {"WRENN_BASE_URL": server.base_url, "WRENN_API_KEY": server.key_alpha, "TERM": "xterm"}
    status = tmp_path / "status"
    try:
        # Session 1: the CLI is the pane's process, so killing it drops the connection.
        tmux.start("one", f"{server.bin} capsule shell {cid[3:9]}", env)
        tag = tmux.wait("one", r"session (pty-[0-9a-f]{8})").group(1)
        tmux.type("one", "echo typed-$((6*7))")
        tmux.wait("one", r"typed-42")

        tmux.type("one", "stty size")
        tmux.wait("one", r"\n30 100\s")
        tmux.run("resize-window", "-t", "one", "-x", "120", "-y", "40")
        time.sleep(0.3)
        tmux.type("one", "stty size")
        tmux.wait("one", r"\n40 120\s")

        # Ctrl-C reaches the capsule's foreground process, not the CLI.
        tmux.type("one", "sleep 100")
        time.sleep(0.5)
        tmux.keys("one", "C-c")
        tmux.type("one", "echo after-int-$?")
        tmux.wait("one", r"after-int-130")
        tmux.type("one", "export MARK=still-here")

        # Drop the connection: kill the CLI. The shell keeps running in the capsule.
        os.kill(tmux.pane_pid("one"), 9)
        time.sleep(0.5)

        # Session 2: re-attach by tag; the shell's state is intact; `exit 3` → the CLI exits 3.
        tmux.start("two", f"sh -c '{server.bin} capsule shell {cid} --attach {tag}; echo $? > {status}; sleep 60'", env)
        tmux.wait("two", rf"session {tag}")
        tmux.type("two", "echo mark=$MARK")
        tmux.wait("two", r"mark=still-here")
        tmux.type("two", "stty size")
        tmux.wait("two", r"\n30 100\s")  # the new terminal's size was sent on attach
        one_line_error(cli(server, "capsule", "shell", cid, "--attach", "pty-00000000"), "not_found")
        tmux.type("two", "exit 3")
        poll(lambda: status.exists() and status.read_text().strip(), timeout=30, what="the CLI's exit status")
        assert status.read_text().strip() == "3"
    finally:
        tmux.kill_server()

    # Ctrl-D (end of input) ends the shell too, through `create --shell`, exit status 0.
    tmux = Tmux(tmp_path)
    try:
        tmux.start("three", f"sh -c '{server.bin} capsule create --template {BUSYBOX} --shell; echo $? > {status}; sleep 60'", env)
        made = tmux.wait("three", r"wrenn capsule shell (cl-[0-9a-z]{25}) --attach").group(1)
        tmux.type("three", "echo in-new-$((2+2))")
        tmux.wait("three", r"in-new-4")
        status.unlink()
        tmux.keys("three", "C-d")
        poll(lambda: status.exists() and status.read_text().strip(), timeout=30, what="exit after Ctrl-D")
        assert status.read_text().strip() == "0"
    finally:
        tmux.kill_server()
    ok(cli(server, "capsule", "rm", made))
