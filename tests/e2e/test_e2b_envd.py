"""E2B's stock `e2b` SDK driving envd inside a real `base` capsule through `wrenn serve`:
commands (users, stdin, background, kill, connect, timeouts), PTY, files (ownership, a 5 MiB
round trip, several files at once) and watching, as the user `user` and as root.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from conftest import ConcurrentCalls, agent_pid, container_only, poll

e2b = pytest.importorskip("e2b")
from e2b import Sandbox  # noqa: E402
from e2b.exceptions import FileNotFoundException, TimeoutException  # noqa: E402
from e2b.sandbox.commands.command_handle import CommandExitException  # noqa: E402
from e2b.sandbox.filesystem.filesystem import WriteEntry  # noqa: E402
from e2b.sandbox_sync.commands.pty import PtySize  # noqa: E402

TEMPLATE = "base"


@pytest.fixture(scope="module")
def sbx(server):
    out = subprocess.run(
        [str(server.bin), "key", "create", "--e2b", "--team", "alpha", "--dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert re.fullmatch(r"e2b_[0-9a-f]{40}", key), key
    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY")}
    os.environ.update(E2B_API_URL=server.base_url, E2B_SANDBOX_URL=server.base_url, E2B_API_KEY=key)
    s = Sandbox.create(template=TEMPLATE, timeout=300, envs={"FROM_CREATE": "yes"})
    try:
        yield s
    finally:
        s.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_commands_users_stdin_background_and_timeouts(sbx):
    r = sbx.commands.run('echo "$(whoami)|$(pwd)|$HOME|$FROM_CREATE|$E2B_SANDBOX"')
    assert r.stdout == "user|/home/user|/home/user|yes|true\n"
    r = sbx.commands.run("whoami; pwd", user="root", cwd="/tmp")
    assert r.stdout == "root\n/tmp\n"
    with pytest.raises(CommandExitException) as exc:
        sbx.commands.run("echo out; echo err >&2; exit 3")
    assert (exc.value.exit_code, exc.value.stdout, exc.value.stderr) == (3, "out\n", "err\n")
    with pytest.raises(Exception) as exc:
        sbx.commands.run("true", user="nobody-at-all")
    assert "nobody-at-all" in str(exc.value)

    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "ping\n")
    sbx.commands.close_stdin(h.pid)
    assert h.wait().stdout == "ping\n"

    h = sbx.commands.run("echo started; sleep 60", background=True)
    assert any(p.pid == h.pid for p in sbx.commands.list())
    h.disconnect()
    again = sbx.commands.connect(h.pid)
    assert sbx.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as exc:
        again.wait()
    assert exc.value.exit_code == -1
    assert sbx.commands.kill(h.pid) is False
    poll(lambda: all(p.pid != h.pid for p in sbx.commands.list()), timeout=10, what="killed pid gone")

    t0 = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - t0 < 10
    poll(
        lambda: "sleep 30" not in sbx.commands.run("ps -eo args", user="root").stdout,
        timeout=10,
        what="timed-out command killed",
    )


def test_sandbox_env_names_the_sandbox_and_sudo_works(sbx):
    r = sbx.commands.run('echo "$E2B_SANDBOX_ID|$E2B_TEMPLATE_ID|$FROM_CREATE"')
    assert r.stdout == f"{sbx.sandbox_id}|{TEMPLATE}|yes\n", r
    assert sbx.get_info().sandbox_id == sbx.sandbox_id
    # The same environment, for in-capsule services, in a file only capsule root reads.
    r = sbx.commands.run("stat -c '%a %U' /run/wrenn-envd/env.json", user="root")
    assert r.stdout == "600 root\n", r
    with pytest.raises(CommandExitException):
        sbx.commands.run("cat /run/wrenn-envd/env.json")
    # Passwordless sudo for `user` (E2B users install packages with it).
    r = sbx.commands.run("sudo -n id -u")
    assert r.stdout == "0\n", r


@container_only("the seccomp filter is the container's boundary; the guest kernel's root is the VM's")
def test_sudo_root_keeps_the_seccomp_filter(sbx):
    r = sbx.commands.run("sudo -n sh -c 'id -u; grep Seccomp: /proc/self/status'")
    assert r.stdout.split() == ["0", "Seccomp:", "2"], r


def test_pty_resize_and_exit(sbx):
    out = bytearray()
    p = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(p.pid, PtySize(rows=40, cols=120))
    sbx.pty.send_stdin(p.pid, b"stty size; whoami; exit 4\n")
    with pytest.raises(CommandExitException) as exc:
        p.wait(on_pty=out.extend)
    assert exc.value.exit_code == 4
    assert b"40 120" in out and b"user" in out


def test_files_ownership_round_trip_and_watch(sbx):
    big = os.urandom(5 * 1024 * 1024)
    info = sbx.files.write("data/big.bin", big)
    assert info.path == "/home/user/data/big.bin"
    assert sbx.files.read("/home/user/data/big.bin", format="bytes") == big
    r = sbx.commands.run("stat -c '%U %G' data data/big.bin; sha256sum data/big.bin")
    assert r.stdout.splitlines()[:2] == ["user user", "user user"]
    import hashlib

    assert hashlib.sha256(big).hexdigest() in r.stdout
    sbx.files.write("/root/owned-by-root.txt", "r", user="root")
    assert sbx.files.get_info("/root/owned-by-root.txt", user="root").owner == "root"

    infos = sbx.files.write_files(
        [WriteEntry(path="multi/a.txt", data="a"), WriteEntry(path="/home/user/multi/b/c.txt", data=b"c")]
    )
    assert [i.path for i in infos] == ["/home/user/multi/a.txt", "/home/user/multi/b/c.txt"]
    entries = sbx.files.list("multi", depth=2)
    assert sorted(e.name for e in entries) == ["a.txt", "b", "c.txt"]
    assert all(e.owner == "user" for e in entries)
    assert sbx.files.exists("multi/a.txt") and not sbx.files.exists("multi/nope")
    assert sbx.files.make_dir("made/deep") is True and sbx.files.make_dir("made/deep") is False
    assert sbx.files.rename("multi/a.txt", "made/z.txt").path == "/home/user/made/z.txt"
    sbx.files.remove("multi")
    assert not sbx.files.exists("multi")
    with pytest.raises(FileNotFoundException):
        sbx.files.read("multi/b/c.txt")

    w = sbx.files.watch_dir("made", recursive=True)
    sbx.commands.run("touch made/deep/new.txt")
    names: list[str] = []

    def seen() -> bool:
        names.extend(e.name for e in w.get_new_events())
        return "deep/new.txt" in names

    poll(seen, timeout=10, interval=0.2, what="watch event")
    w.stop()


# The agent client's deadline for an answer (crates/wrenn-agent-client: Deadlines::request).
REQUEST_DEADLINE = 20


def test_a_stopped_agent_cannot_hang_envd_calls(sbx):
    """envd calls to a sandbox whose agent is stopped (SIGSTOP from inside is the same) fail
    with the server's 502 after its deadline, well before the SDK's own 60 s, and the sandbox
    answers again once the agent continues."""
    stuck = Sandbox.create(template=TEMPLATE, timeout=120)
    try:
        pid = agent_pid("cl-" + stuck.sandbox_id)
        os.kill(pid, signal.SIGSTOP)
        try:
            calls = ConcurrentCalls({
                "run": lambda: stuck.commands.run("true"),
                "read": lambda: stuck.files.read("/etc/hostname"),
                "write": lambda: stuck.files.write("/tmp/x", "x" * (4 << 20)),
                "list": lambda: stuck.files.list("/"),
            })
            # Meanwhile the other sandbox is served.
            time.sleep(1)
            assert sbx.commands.run("echo alive").stdout == "alive\n"
            results = calls.wait(timeout=90)
            for name, (outcome, took) in results.items():
                # The server's answer, not the SDK giving up (after a failed call the SDK
                # also probes /health, which meets the same deadline).
                assert isinstance(outcome, Exception), (name, outcome)
                assert "did not" in str(outcome), (name, outcome)
                assert took < 2 * REQUEST_DEADLINE + 8, (name, outcome, took)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert stuck.commands.run("echo back").stdout == "back\n"
    finally:
        stuck.kill()
