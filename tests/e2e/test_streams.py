"""Streaming: `commands.stream` / `commands.connect` (WS, §6.4-6.5) and
`files.upload_stream` / `download_stream` (§8.2, §8.4)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import httpx
import httpx_ws
import pytest

from conftest import (
    UNKNOWN_ID,
    assert_error,
    iterate_with_deadline,
    poll,
    rss_bytes,
    skip_if_ws_unimplemented,
    ws_refusal,
    ws_send_text,
)


def run_stream(capsule, cmd, args=None, timeout=30):
    """All events of ``commands.stream`` (skips if the endpoint is missing)."""
    try:
        return list(iterate_with_deadline(capsule.commands.stream(cmd, args), timeout))
    except httpx_ws.WebSocketUpgradeError as exc:
        skip_if_ws_unimplemented(exc, "exec/stream")
        raise


def joined(events, type_):
    return "".join(e.data for e in events if e.type == type_)


def test_stream_event_order(capsule):
    events = run_stream(capsule, "echo one; echo two >&2; echo three; exit 3")
    types = [e.type for e in events]
    assert types[0] == "start", types
    assert events[0].pid > 0
    assert types[-1] == "exit", types
    assert events[-1].exit_code == 3
    assert set(types[1:-1]) <= {"stdout", "stderr"}, types
    assert joined(events, "stdout") == "one\nthree\n"
    assert joined(events, "stderr") == "two\n"


def test_stream_exit_zero_is_explicit(capsule):
    events = run_stream(capsule, "true")
    assert [e.type for e in events] == ["start", "exit"]
    assert events[-1].exit_code == 0


def test_stream_with_explicit_args(capsule):
    events = run_stream(capsule, "/bin/echo", ["a b", "c"])
    assert joined(events, "stdout") == "a b c\n"
    assert events[-1].type == "exit" and events[-1].exit_code == 0


def test_stream_output_is_incremental(capsule):
    """Output arrives while the process runs, not only at exit."""
    gen = capsule.commands.stream("echo first; sleep 3; echo second")
    t0 = time.monotonic()
    seen_first_at = None
    try:
        for ev in iterate_with_deadline(gen, 30):
            if ev.type == "stdout" and "first" in ev.data and seen_first_at is None:
                seen_first_at = time.monotonic() - t0
            if ev.type == "exit":
                break
    except httpx_ws.WebSocketUpgradeError as exc:
        skip_if_ws_unimplemented(exc, "exec/stream")
        raise
    total = time.monotonic() - t0
    assert seen_first_at is not None
    assert seen_first_at < total - 2, f"'first' arrived at {seen_first_at:.1f}s of {total:.1f}s"


def test_stream_large_output(capsule):
    events = run_stream(capsule, "seq 1 100000", timeout=60)
    lines = joined(events, "stdout").splitlines()
    assert len(lines) == 100000 and lines[0] == "1" and lines[-1] == "100000"
    assert events[-1].type == "exit" and events[-1].exit_code == 0


def test_stream_invalid_utf8_is_replaced(capsule):
    events = run_stream(capsule, r"printf 'a\377b'")
    assert joined(events, "stdout") == "a\ufffdb"


@pytest.mark.slow
def test_stream_silent_60s_survives_client_pings(capsule):
    """httpx-ws pings every 20 s and gives up after 20 s without pong (§1.4)."""
    t0 = time.monotonic()
    events = run_stream(capsule, "sleep 60; echo done", timeout=90)
    elapsed = time.monotonic() - t0
    assert [e.type for e in events][-1] == "exit", [e.type for e in events]
    assert events[-1].exit_code == 0
    assert joined(events, "stdout") == "done\n"
    assert elapsed >= 59, elapsed


def test_stream_client_close_kills_process(capsule):
    gen = capsule.commands.stream("echo ready; sleep 300")
    pid = None
    try:
        # Iterated in this thread so that gen.close() can drop the socket (pytest-timeout
        # guards against a server that never answers).
        for ev in gen:
            if ev.type == "start":
                pid = ev.pid
            if ev.type == "stdout" and "ready" in ev.data:
                break
    except httpx_ws.WebSocketUpgradeError as exc:
        skip_if_ws_unimplemented(exc, "exec/stream")
        raise
    finally:
        gen.close()
    assert pid
    poll(
        lambda: capsule.commands.run(f"kill -0 {pid} 2>/dev/null || echo gone").stdout == "gone\n",
        timeout=10,
        what=f"streamed process {pid} killed after the client closed",
    )


def test_connect_to_background_process(capsule):
    h = capsule.commands.run(
        "sleep 1; i=0; while [ $i -lt 6 ]; do echo tick$i; i=$((i+1)); sleep 0.3; done; exit 4",
        background=True,
    )
    try:
        events = list(iterate_with_deadline(capsule.commands.connect(h.pid), 30))
    except httpx_ws.WebSocketUpgradeError as exc:
        skip_if_ws_unimplemented(exc, "processes/{pid}/stream")
        raise
    types = [e.type for e in events]
    assert types[0] == "start" and events[0].pid == h.pid, types
    assert "tick5" in joined(events, "stdout"), events
    assert types[-1] == "exit" and events[-1].exit_code == 4, types


def test_connect_to_finished_or_unknown_process_ends(capsule):
    h = capsule.commands.run("true", background=True)
    poll(lambda: h.pid not in {p.pid for p in capsule.commands.list()}, timeout=10,
         what="process finished")
    for pid in (h.pid, 999999):
        try:
            events = list(iterate_with_deadline(capsule.commands.connect(pid), 15))
        except httpx_ws.WebSocketUpgradeError as exc:
            assert_error(ws_refusal(exc), 404, "not_found")
            continue
        assert events and events[-1].type in ("error", "exit"), [e.type for e in events]


# ── WS bad input (raw httpx-ws) ───────────────────────────────────────────────


def _first_frame(ws) -> dict:
    return json.loads(ws.receive_text(timeout=15))


def _assert_closes(ws) -> None:
    with pytest.raises((httpx_ws.WebSocketDisconnect, httpx_ws.WebSocketNetworkError)):
        for _ in range(10):
            ws.receive(timeout=15)


@pytest.mark.parametrize(
    "first",
    [
        {"type": "stop"},
        {"type": "start"},
        {"cmd": "/bin/echo"},
        "not json",
    ],
    ids=["stop", "start-without-cmd", "no-type", "garbage"],
)
def test_exec_stream_bad_first_message(capsule, api, first):
    try:
        with httpx_ws.connect_ws(f"/v1/capsules/{capsule.capsule_id}/exec/stream", api) as ws:
            ws.send_text(first if isinstance(first, str) else json.dumps(first))
            frame = _first_frame(ws)
            assert frame["type"] == "error" and frame.get("data"), frame
            _assert_closes(ws)
    except httpx_ws.WebSocketUpgradeError as exc:
        skip_if_ws_unimplemented(exc, "exec/stream")
        raise


@pytest.mark.parametrize("path", ["exec/stream", "processes/1/stream", "pty"])
def test_ws_upgrade_without_key_is_401(capsule, api_nokey, path):
    with pytest.raises(httpx_ws.WebSocketUpgradeError) as ei:
        with httpx_ws.connect_ws(f"/v1/capsules/{capsule.capsule_id}/{path}", api_nokey):
            pass
    assert ei.value.response.status_code == 401
    assert_error(ws_refusal(ei.value), 401, "unauthorized")


@pytest.mark.parametrize("path", ["exec/stream", "pty"])
def test_ws_upgrade_malformed_id_is_400(api, path):
    with pytest.raises(httpx_ws.WebSocketUpgradeError) as ei:
        with httpx_ws.connect_ws(f"/v1/capsules/NOT-AN-ID/{path}", api):
            pass
    assert ei.value.response.status_code == 400
    assert_error(ws_refusal(ei.value), 400, "invalid_request")


def _ws_outcome(client, cid: str, path: str, first: dict) -> tuple:
    """What a client observes: ('upgrade', status) or ('frame', type, fatal)."""
    try:
        with httpx_ws.connect_ws(f"/v1/capsules/{cid}/{path}", client) as ws:
            ws_send_text(ws, json.dumps(first))
            frame = _first_frame(ws)
            _assert_closes(ws)
            return ("frame", frame.get("type"), frame.get("fatal"))
    except httpx_ws.WebSocketUpgradeError as exc:
        return ("upgrade", exc.response.status_code)


@pytest.mark.parametrize(
    "path,first",
    [
        ("exec/stream", {"type": "start", "cmd": "/bin/sh", "args": ["-c", "touch /tmp/pwned"]}),
        ("pty", {"type": "start", "cmd": "/bin/sh", "cols": 80, "rows": 24}),
    ],
    ids=["exec", "pty"],
)
def test_ws_other_team_looks_missing(capsule, api_beta, path, first):
    theirs = _ws_outcome(api_beta, capsule.capsule_id, path, first)
    unknown = _ws_outcome(api_beta, UNKNOWN_ID, path, first)
    assert theirs == unknown, (theirs, unknown)
    assert theirs[0] == "upgrade" and theirs[1] == 404 or theirs[:2] == ("frame", "error"), theirs
    assert not capsule.files.exists("/tmp/pwned")


def test_exec_stream_on_paused_capsule_is_error_frame(capsule, api):
    capsule.pause(wait=True)
    out = _ws_outcome(api, capsule.capsule_id, "exec/stream",
                      {"type": "start", "cmd": "/bin/echo", "args": ["x"]})
    assert out[:2] == ("frame", "error") or out == ("upgrade", 409), out


# ── Streaming file transfer ───────────────────────────────────────────────────

GIB = 1024 * 1024 * 1024
CHUNK = 1024 * 1024


class RssSampler:
    """Samples the server's VmRSS in a thread; ``peak`` is the maximum seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def test_download_stream_missing_file(capsule):
    with pytest.raises(httpx.HTTPStatusError) as ei:
        b"".join(capsule.files.download_stream("/tmp/nope"))
    assert ei.value.response.status_code == 404


def test_upload_stream_small_and_odd_chunks(capsule):
    parts = [b"", b"a", os.urandom(70_000), b"", b"tail"]
    capsule.files.upload_stream("/tmp/sub/odd.bin", iter(parts))
    assert capsule.files.read_bytes("/tmp/sub/odd.bin") == b"".join(parts)
    got = b"".join(capsule.files.download_stream("/tmp/sub/odd.bin"))
    assert got == b"".join(parts)


@pytest.mark.slow
def test_stream_1gib_round_trip_constant_memory(capsule, server):
    path = "/root/big.bin"
    block = os.urandom(CHUNK)
    up_hash = hashlib.sha256()

    def source():
        for i in range(GIB // CHUNK):
            chunk = i.to_bytes(8, "little") + block[8:]
            up_hash.update(chunk)
            yield chunk

    rss_before = rss_bytes(server.pid)
    sampler = RssSampler(server.pid)
    try:
        capsule.files.upload_stream(path, source())
        size = capsule.commands.run(f"stat -c %s {path}").stdout.strip()
        assert size == str(GIB), size

        down_hash = hashlib.sha256()
        n = 0
        for chunk in capsule.files.download_stream(path):
            down_hash.update(chunk)
            n += len(chunk)
    finally:
        peak = sampler.stop()
    rss_after = rss_bytes(server.pid)
    assert n == GIB
    assert down_hash.hexdigest() == up_hash.hexdigest()
    growth = peak - rss_before
    assert growth < 64 * 1024 * 1024, (
        f"server RSS grew by {growth / 2**20:.1f} MiB during a 1 GiB round trip "
        f"(before {rss_before / 2**20:.1f} MiB, peak {peak / 2**20:.1f}, after "
        f"{rss_after / 2**20:.1f})"
    )
    capsule.files.remove(path)
