"""`capsule.commands` (foreground/background exec, process list/kill) and the git helpers."""

from __future__ import annotations

import time

import pytest
from wrenn.exceptions import WrennAgentError, WrennNotFoundError

from conftest import poll


def test_run_stdout_exit_code(capsule):
    r = capsule.commands.run("echo hello")
    assert r.stdout == "hello\n"
    assert r.stderr == ""
    assert r.exit_code == 0
    assert isinstance(r.duration_ms, int) and r.duration_ms >= 0


@pytest.mark.parametrize("code", [1, 3, 127, 255])
def test_run_exit_codes(capsule, code):
    r = capsule.commands.run(f"exit {code}")
    assert r.exit_code == code


def test_run_missing_command_is_127(capsule):
    r = capsule.commands.run("definitely-not-a-command-xyz")
    assert r.exit_code == 127
    assert r.stderr, "the shell's 'not found' message belongs on stderr"
    assert r.stdout == ""


def test_stderr_is_separate(capsule):
    r = capsule.commands.run("echo out; echo err >&2; echo out2")
    assert r.stdout == "out\nout2\n"
    assert r.stderr == "err\n"


def test_envs(capsule):
    r = capsule.commands.run(
        'echo "$FOO|$BAR"', envs={"FOO": "foo value", "BAR": "x=y;z"}
    )
    assert r.stdout == "foo value|x=y;z\n"


def test_cwd(capsule):
    capsule.files.make_dir("/tmp/work dir")
    r = capsule.commands.run("pwd; ls", cwd="/tmp/work dir")
    assert r.exit_code == 0, r
    assert r.stdout.splitlines()[0] == "/tmp/work dir"


def test_cwd_missing_dir_fails(capsule):
    from wrenn.exceptions import WrennError

    try:
        r = capsule.commands.run("pwd", cwd="/nonexistent/dir")
    except WrennError as exc:
        assert exc.status_code < 500 or exc.status_code == 502, exc
    else:
        assert r.exit_code != 0, f"cwd to a missing dir must not silently succeed: {r}"


def test_stdin_is_not_a_tty_and_closed(capsule):
    r = capsule.commands.run("cat; echo done", timeout=10)
    assert r.stdout == "done\n", r


def test_binary_output_is_decoded(capsule):
    # \377 is not valid UTF-8: server answers encoding=base64, SDK decodes with U+FFFD.
    r = capsule.commands.run(r"printf 'a\377b'; printf 'e\377' >&2")
    assert r.exit_code == 0
    assert r.stdout == "a\ufffdb"
    assert r.stderr == "e\ufffd"


def test_large_output(capsule):
    r = capsule.commands.run("i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done")
    lines = r.stdout.splitlines()
    assert len(lines) == 20000
    assert lines[0] == "line-0" and lines[-1] == "line-19999"


def test_foreground_timeout_answers_in_time(capsule):
    """§6.1: the server kills the command at timeout_sec and answers before timeout_sec+10."""
    t0 = time.monotonic()
    try:
        r = capsule.commands.run("sleep 30; echo finished", timeout=2)
    except WrennAgentError:
        r = None
    elapsed = time.monotonic() - t0
    assert elapsed < 12, f"took {elapsed:.1f}s"
    if r is not None:
        assert r.exit_code != 0 and "finished" not in r.stdout, r
    # And the capsule is still usable.
    assert capsule.commands.run("echo ok").stdout == "ok\n"


def test_background_list_kill(capsule):
    h = capsule.commands.run("sleep 300", background=True, tag="my-sleeper")
    assert h.pid > 0
    assert h.tag == "my-sleeper"
    assert h.capsule_id == capsule.capsule_id

    procs = {p.pid: p for p in capsule.commands.list()}
    assert h.pid in procs, procs
    assert procs[h.pid].tag == "my-sleeper"
    assert procs[h.pid].cmd == "/bin/sh" and procs[h.pid].args == ["-c", "sleep 300"], procs[h.pid]

    h2 = capsule.commands.run("sleep 301", background=True)
    assert h2.tag and h2.tag.startswith("proc-"), h2
    assert h2.pid != h.pid

    capsule.commands.kill(h.pid)
    poll(
        lambda: h.pid not in {p.pid for p in capsule.commands.list()},
        timeout=10,
        what=f"pid {h.pid} gone from the process list",
    )
    assert h2.pid in {p.pid for p in capsule.commands.list()}
    with pytest.raises(WrennNotFoundError):
        capsule.commands.kill(h.pid)
    capsule.commands.kill(h2.pid)


def test_kill_unknown_pid_is_not_found(capsule):
    with pytest.raises(WrennNotFoundError):
        capsule.commands.kill(999999)


def test_background_honours_envs_and_cwd(capsule):
    capsule.files.make_dir("/tmp/bg")
    capsule.commands.run(
        'echo "$GREETING" > out.txt; pwd >> out.txt',
        background=True,
        envs={"GREETING": "hi there"},
        cwd="/tmp/bg",
    )
    poll(lambda: capsule.files.exists("/tmp/bg/out.txt")
         and capsule.files.read("/tmp/bg/out.txt").count("\n") == 2,
         timeout=10, what="background output file")
    assert capsule.files.read("/tmp/bg/out.txt") == "hi there\n/tmp/bg\n"


def test_background_process_exits_and_leaves_list(capsule):
    h = capsule.commands.run("sleep 0.2", background=True)
    poll(
        lambda: h.pid not in {p.pid for p in capsule.commands.list()},
        timeout=10,
        what="finished background process leaves the list",
    )


def test_list_empty_is_a_list(capsule):
    assert isinstance(capsule.commands.list(), list)


def test_bash_features_on_minimal(minimal_capsule):
    r = minimal_capsule.commands.run(
        "bash -c 'arr=(a b c); echo ${#arr[@]} ${arr[1]}; [[ x == x ]] && echo ok'"
    )
    assert r.stdout == "3 b\nok\n", r
    r = minimal_capsule.commands.run("seq 3 | tac | tr '\\n' ' '; id -un")
    assert r.stdout == "3 2 1 root\n", r


def test_git_helpers_on_minimal(minimal_capsule):
    git = minimal_capsule.git
    repo = "/tmp/repo"
    git.init(repo, initial_branch="main")
    minimal_capsule.files.write(f"{repo}/README.md", "# hi\n")
    status = git.status(cwd=repo)
    assert status.has_untracked, status
    git.add(all=True, cwd=repo)
    git.commit("first", author_name="E2E", author_email="e2e@example.com", cwd=repo)
    status = git.status(cwd=repo)
    assert status.branch == "main", status
    assert status.is_clean, status
    git.create_branch("feature", cwd=repo)
    branches = {b.name: b for b in git.branches(cwd=repo)}
    assert set(branches) == {"main", "feature"}, branches
    assert branches["feature"].is_current
    log = minimal_capsule.commands.run("git log --format=%an:%s", cwd=repo)
    assert log.stdout == "E2E:first\n", log


def test_parallel_foreground_execs_are_concurrent(capsule):
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: capsule.commands.run(f"sleep 2; echo {i}"), range(8)))
    elapsed = time.monotonic() - t0
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]
    assert elapsed < 8, f"8 parallel 2 s commands took {elapsed:.1f}s (serialised?)"


def test_kill_by_tag_with_sigterm(capsule, api):
    """§6.3: the selector may be a tag; ?signal=SIGTERM delivers SIGTERM (trap runs)."""
    capsule.commands.run(
        "trap 'echo got-term > /tmp/term.txt; exit 0' TERM; touch /tmp/trap-set;"
        " while true; do sleep 0.1; done",
        background=True,
        tag="trapper",
    )
    # A SIGTERM before the shell reached `trap` kills it outright (under TCG a shell takes
    # tens of ms to start): signal only once the trap is set.
    poll(lambda: capsule.files.exists("/tmp/trap-set"), timeout=10, what="trap set")
    r = api.delete(f"/v1/capsules/{capsule.capsule_id}/processes/trapper", params={"signal": "SIGTERM"})
    assert r.status_code == 204, r.text
    poll(lambda: capsule.files.exists("/tmp/term.txt"), timeout=10, what="TERM trap ran")
    assert capsule.files.read("/tmp/term.txt") == "got-term\n"
    r = api.delete(f"/v1/capsules/{capsule.capsule_id}/processes/trapper")
    assert r.status_code == 404, r.text


def test_foreground_tag_is_ignored(capsule):
    r = capsule.commands.run("echo tagged", tag="fg-tag")
    assert r.stdout == "tagged\n" and r.exit_code == 0


@pytest.mark.slow
def test_default_exec_timeout_is_30s(capsule):
    """timeout=None: the SDK omits timeout_sec (and sets no HTTP timeout); the server's
    default of 30 s applies (§6.1)."""
    t0 = time.monotonic()
    try:
        r = capsule.commands.run("sleep 45; echo finished", timeout=None)
    except WrennAgentError:
        r = None
    elapsed = time.monotonic() - t0
    assert 25 < elapsed < 41, f"answered after {elapsed:.1f}s"
    if r is not None:
        assert "finished" not in r.stdout and r.exit_code != 0, r
