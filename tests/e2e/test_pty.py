"""PTY over WebSocket (§7): binary frames, resize, kill, re-attach by tag."""

from __future__ import annotations

import json

import httpx_ws
import pytest

from conftest import PtyReader, skip_if_ws_unimplemented, ws_send_text


def open_pty(capsule, **kw):
    """``capsule.pty(**kw)`` that skips (visibly) if the route does not exist."""
    cm = capsule.pty(**kw)
    try:
        term = cm.__enter__()
    except httpx_ws.WebSocketUpgradeError as exc:
        skip_if_ws_unimplemented(exc, "pty")
        raise
    return cm, term


def test_pty_write_read_resize_kill(minimal_capsule):
    cm, term = open_pty(minimal_capsule, cols=80, rows=24)
    try:
        r = PtyReader(term)
        started = r.wait_control("started")
        assert started.tag and started.tag.startswith("pty-"), started
        assert started.pid and started.pid > 0
        assert term.tag == started.tag and term.pid == started.pid

        term.write(b"echo hi-$((6*7))\n")
        r.expect(rb"hi-42")
        term.write(b"stty size\n")
        r.expect(rb"24 80")
        term.resize(120, 40)
        term.write(b"stty size\n")
        r.expect(rb"40 120")
        term.write(b"tty\n")
        r.expect(rb"/dev/pts/\d+")

        term.kill()
        ev = r.wait_control("exit")
        assert ev.exit_code is not None
    finally:
        cm.__exit__(None, None, None)


def test_pty_exit_code_and_binary_output(minimal_capsule):
    cm, term = open_pty(minimal_capsule)
    try:
        r = PtyReader(term)
        r.wait_control("started")
        # Raw bytes (not UTF-8) must arrive verbatim in binary frames.
        term.write(b"printf 'X\\377\\376Y\\n'\n")
        r.expect(rb"X\xff\xfeY")
        term.write(b"exit 7\n")
        ev = r.wait_control("exit")
        assert ev.exit_code == 7
    finally:
        cm.__exit__(None, None, None)


def test_pty_envs_cwd_and_args(minimal_capsule):
    cm, term = open_pty(
        minimal_capsule,
        cmd="/bin/bash",
        args=["--norc", "--noprofile"],
        envs={"E2E_VAR": "pty-env-ok"},
        cwd="/tmp",
    )
    try:
        r = PtyReader(term)
        r.wait_control("started")
        term.write(b'echo "v=$E2E_VAR d=$(pwd) t=$TERM"\n')
        m = r.expect(rb"v=pty-env-ok d=/tmp t=(\S*)")
        assert m.group(1), "TERM should have a sensible default"
    finally:
        cm.__exit__(None, None, None)


def test_pty_sh_on_busybox(capsule):
    cm, term = open_pty(capsule, cmd="/bin/sh")
    try:
        r = PtyReader(term)
        r.wait_control("started")
        term.write(b"echo busy-$((40+2))\n")
        r.expect(rb"busy-42")
    finally:
        cm.__exit__(None, None, None)


def test_pty_reattach_by_tag_keeps_shell_state(minimal_capsule):
    cm, term = open_pty(minimal_capsule)
    try:
        r = PtyReader(term)
        r.wait_control("started")
        tag = term.tag
        term.write(b"export X=42\n")
        term.write(b"echo set-$X\n")
        r.expect(rb"set-42")
    finally:
        # Leaving `with capsule.pty()` closes the socket without killing the shell.
        cm.__exit__(None, None, None)

    with minimal_capsule.pty_connect(tag) as term2:
        r2 = PtyReader(term2)
        term2.write(b"echo got-$X\n")
        r2.expect(rb"got-42")
        term2.write(b"exit 0\n")
        ev = r2.wait_control("exit")
        assert ev.exit_code == 0


def test_pty_two_sessions_are_independent(minimal_capsule):
    cm1, t1 = open_pty(minimal_capsule)
    cm2, t2 = open_pty(minimal_capsule)
    try:
        r1, r2 = PtyReader(t1), PtyReader(t2)
        r1.wait_control("started")
        r2.wait_control("started")
        assert t1.tag != t2.tag
        t1.write(b"export Y=one\n")
        t2.write(b"echo y=[$Y]\n")
        r2.expect(rb"y=\[\]")
        t1.write(b"echo y=[$Y]\n")
        r1.expect(rb"y=\[one\]")
        t1.kill()
        t2.kill()
        r1.wait_control("exit")
        r2.wait_control("exit")
    finally:
        cm1.__exit__(None, None, None)
        cm2.__exit__(None, None, None)


# ── bad input (raw httpx-ws) ──────────────────────────────────────────────────


@pytest.mark.parametrize(
    "first",
    [{"type": "resize", "cols": 10, "rows": 10}, {"type": "bogus"}, {"cmd": "/bin/sh"}],
    ids=["resize", "bogus", "no-type"],
)
def test_pty_bad_first_message(capsule, api, first):
    try:
        with httpx_ws.connect_ws(f"/v1/capsules/{capsule.capsule_id}/pty", api) as ws:
            ws.send_text(json.dumps(first))
            frame = json.loads(ws.receive_text(timeout=15))
            assert frame["type"] == "error" and frame.get("fatal") is True, frame
            with pytest.raises((httpx_ws.WebSocketDisconnect, httpx_ws.WebSocketNetworkError)):
                for _ in range(10):
                    ws.receive(timeout=15)
    except httpx_ws.WebSocketUpgradeError as exc:
        skip_if_ws_unimplemented(exc, "pty")
        raise


@pytest.mark.parametrize("msg", [{"type": "connect"}, {"type": "connect", "tag": "pty-deadbeef"}],
                         ids=["no-tag", "unknown-tag"])
def test_pty_connect_bad_tag(capsule, api, msg):
    with httpx_ws.connect_ws(f"/v1/capsules/{capsule.capsule_id}/pty", api) as ws:
        ws.send_text(json.dumps(msg))
        frame = json.loads(ws.receive_text(timeout=15))
        assert frame["type"] == "error" and frame.get("fatal") is True, frame


def test_pty_on_paused_capsule_is_fatal_error(capsule, api):
    capsule.pause(wait=True)
    try:
        with httpx_ws.connect_ws(f"/v1/capsules/{capsule.capsule_id}/pty", api) as ws:
            ws_send_text(ws, json.dumps({"type": "start", "cmd": "/bin/sh", "cols": 80, "rows": 24}))
            frame = json.loads(ws.receive_text(timeout=15))
            assert frame["type"] == "error" and frame.get("fatal") is True, frame
    except httpx_ws.WebSocketUpgradeError as exc:
        assert exc.response.status_code == 409, exc.response.status_code


@pytest.mark.slow
def test_pty_idle_70s_survives_keepalives(capsule):
    """Server pings every 30 s (SDK pongs); client WS pings every 20 s must be answered."""
    import time

    cm, term = open_pty(capsule, cmd="/bin/sh")
    try:
        r = PtyReader(term)
        r.wait_control("started")
        deadline = time.monotonic() + 70
        while time.monotonic() < deadline:
            assert not r.ended, f"PTY stream ended while idle; controls={r.controls}"
            try:
                r.wait_control("__never__", timeout=max(0.1, deadline - time.monotonic()))
            except AssertionError:
                pass
        assert not r.ended, f"PTY stream ended while idle; controls={r.controls}"
        term.write(b"echo still-$((1+1))\n")
        r.expect(rb"still-2")
    finally:
        cm.__exit__(None, None, None)
