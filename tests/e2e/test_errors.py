"""Error mapping (SDK exception classes, §2) and bad input via raw httpx (never a 500)."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from wrenn import Capsule, WrennClient
from wrenn.exceptions import (
    WrennAuthenticationError,
    WrennConflictError,
    WrennNotFoundError,
    WrennValidationError,
)

from conftest import BUSYBOX, MALFORMED_ID, UNKNOWN_ID, assert_error, capsule_ids

# ── SDK exception classes ─────────────────────────────────────────────────────


def test_not_found_unknown_capsule(server):
    with pytest.raises(WrennNotFoundError) as ei:
        Capsule.get_info(UNKNOWN_ID)
    assert ei.value.status_code == 404 and ei.value.code == "not_found"
    with pytest.raises(WrennNotFoundError):
        Capsule.connect(UNKNOWN_ID)
    with pytest.raises(WrennNotFoundError):
        Capsule.pause(UNKNOWN_ID)


def test_not_found_missing_file(capsule):
    with pytest.raises(WrennNotFoundError) as ei:
        capsule.files.read("/no/such/file")
    assert ei.value.code == "not_found"


def test_authentication_error_bad_key(server):
    with pytest.raises(WrennAuthenticationError) as ei:
        Capsule.list(api_key="wrn_definitely_not_a_valid_key")
    assert ei.value.status_code == 401
    with WrennClient(api_key="wrn_bad") as c, pytest.raises(WrennAuthenticationError):
        c.capsules.get(UNKNOWN_ID)
    with pytest.raises(WrennAuthenticationError):
        Capsule(template=BUSYBOX, api_key="wrn_bad")


def test_conflict_exec_on_paused_capsule(capsule):
    capsule.pause(wait=True)
    with pytest.raises(WrennConflictError) as ei:
        capsule.commands.run("echo hi")
    assert ei.value.status_code == 409 and ei.value.code == "invalid_state"
    with pytest.raises(WrennConflictError):
        capsule.files.write("/tmp/x", "x")
    with pytest.raises(WrennConflictError):
        capsule.ping()


def test_conflict_resume_of_destroyed_capsule(make_capsule):
    cap = make_capsule(BUSYBOX)
    cap.destroy(wait=True)
    try:
        cap.resume()
    except WrennNotFoundError:
        pass  # 404 for a destroyed capsule is acceptable
    except WrennConflictError as exc:
        assert exc.code == "invalid_state"
    else:
        pytest.fail("resume of a destroyed capsule must fail (409 or 404)")


def test_validation_error_malformed_id(server):
    with pytest.raises(WrennValidationError) as ei:
        Capsule.get_info(MALFORMED_ID)
    assert ei.value.status_code == 400 and ei.value.code == "invalid_request"
    with pytest.raises(WrennValidationError):
        Capsule.destroy("CL-UPPERCASE")


def test_validation_error_bad_template_name(server):
    with pytest.raises(WrennValidationError):
        Capsule(template="../etc/passwd")


def test_unknown_template_is_not_found(server):
    with pytest.raises(WrennNotFoundError):
        Capsule(template="no-such-template-xyz")


# ── Raw bad input ─────────────────────────────────────────────────────────────


@pytest.fixture
def no_leak(api):
    """Assert that the test's bad requests left no capsule behind."""
    before = capsule_ids(api)
    yield
    after = capsule_ids(api)
    assert after <= before, f"bad requests leaked capsules: {after - before}"


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"not json at all",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"template": 42}',
        b'{"vcpus": "x"}',
        b'{"memory_mb": "lots"}',
        b'{"timeout_sec": 1.5}',
        b'{"metadata": "nope"}',
        b'{"metadata": {"k": 1}}',
    ],
)
def test_create_bad_json(api, no_leak, body):
    r = api.post("/v1/capsules", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "invalid_request")


@pytest.mark.parametrize(
    "metadata",
    [
        {"bad key!": "v"},
        {"-leading-dash": "v"},
        {"": "v"},
        {"k" * 65: "v"},
        {"key": "v" * 65},
        {f"k{i}": "v" for i in range(21)},
        {"kernel_version": "1"},
        {"agent_version": "1"},
    ],
    ids=["bad-char", "leading-dash", "empty", "long-key", "long-value", "21-keys",
         "reserved-kernel", "reserved-agent"],
)
def test_create_invalid_metadata(api, no_leak, metadata):
    r = api.post("/v1/capsules", json={"template": BUSYBOX, "metadata": metadata})
    assert_error(r, 400, "invalid_request")


def test_create_valid_metadata_round_trips(api):
    r = api.post("/v1/capsules", json={"template": BUSYBOX, "metadata": {"owner": "e2e", "a.b_c-1": "x"}})
    assert r.status_code in (201, 202), r.text
    cid = r.json()["id"]
    try:
        got = api.get(f"/v1/capsules/{cid}").json()
        assert got["metadata"]["owner"] == "e2e"
        assert got["metadata"]["a.b_c-1"] == "x"
    finally:
        api.delete(f"/v1/capsules/{cid}")


def test_create_unknown_template(api, no_leak):
    r = api.post("/v1/capsules", json={"template": "no-such-template"})
    assert_error(r, 404, "not_found")


def test_create_bad_template_name(api, no_leak):
    r = api.post("/v1/capsules", json={"template": "bad name/../x"})
    assert_error(r, 400, "invalid_request")


@pytest.mark.parametrize(
    "method,suffix,body",
    [
        ("GET", "", None),
        ("DELETE", "", None),
        ("POST", "/pause", None),
        ("POST", "/resume", None),
        ("POST", "/ping", None),
        ("POST", "/exec", {"cmd": "/bin/sh", "args": ["-c", "true"], "background": False}),
        ("GET", "/processes", None),
        ("DELETE", "/processes/1", None),
        ("POST", "/files/read", {"path": "/etc/passwd"}),
        ("POST", "/files/list", {"path": "/", "depth": 1}),
        ("POST", "/files/mkdir", {"path": "/tmp/x"}),
        ("POST", "/files/remove", {"path": "/tmp/x"}),
        ("POST", "/files/stream/read", {"path": "/etc/passwd"}),
        ("GET", "/metrics", None),
    ],
)
@pytest.mark.parametrize("cid,status,code", [(MALFORMED_ID, 400, "invalid_request"),
                                             (UNKNOWN_ID, 404, "not_found")],
                         ids=["malformed", "unknown"])
def test_bad_capsule_ids(api, method, suffix, body, cid, status, code):
    r = api.request(method, f"/v1/capsules/{cid}{suffix}", json=body)
    assert_error(r, status, code)


def test_api_prefix_is_served(api):
    """§1.1: every route is also served under /api."""
    r = api.get("/api/v1/capsules")
    assert r.status_code == 200 and isinstance(r.json(), list), r.text
    assert_error(api.get(f"/api/v1/capsules/{UNKNOWN_ID}"), 404, "not_found")


def test_unknown_route_is_json_404(api):
    assert_error(api.get("/v1/nope"), 404, "not_found")


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrn_nope"}, {"X-API-Key": ""}, {"Authorization": "Bearer abc"}],
    ids=["none", "bad", "empty", "bearer-only"],
)
def test_missing_or_bad_key_is_401(server, headers):
    with httpx.Client(base_url=server.base_url, headers=headers) as c:
        for method, path in [("GET", "/v1/capsules"), ("POST", "/v1/capsules"),
                             ("GET", f"/v1/capsules/{UNKNOWN_ID}"), ("GET", "/v1/snapshots")]:
            r = c.request(method, path, json={} if method == "POST" else None)
            assert_error(r, 401, "unauthorized")


@pytest.mark.parametrize(
    "path,body",
    [
        ("/exec", b"{"),
        ("/exec", b'{"args": ["-c", "true"]}'),
        ("/exec", b'{"cmd": ""}'),
        ("/exec", b'{"cmd": "/bin/sh", "args": "notalist"}'),
        ("/exec", b'{"cmd": "/bin/sh", "envs": {"A": 1}}'),
        ("/files/read", b"{}"),
        ("/files/read", b'{"path": ""}'),
        ("/files/read", b'{"path": 7}'),
        ("/files/list", b'{"path": "/tmp", "depth": "deep"}'),
        ("/files/mkdir", b"{"),
        ("/files/remove", b'{"path": ""}'),
    ],
)
def test_bad_bodies_on_capsule(capsule, api, path, body):
    r = api.post(
        f"/v1/capsules/{capsule.capsule_id}{path}",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request")


def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize(
    "parts",
    [
        [("file", "upload", b"data")],
        [("path", None, b"/tmp/x")],
        [("path", None, b""), ("file", "upload", b"data")],
        [],
    ],
    ids=["missing-path", "missing-file", "empty-path", "no-parts"],
)
@pytest.mark.parametrize("endpoint", ["/files/write", "/files/stream/write"])
def test_multipart_missing_parts(capsule, api, parts, endpoint):
    boundary = "e2eboundary1234567890"
    r = api.post(
        f"/v1/capsules/{capsule.capsule_id}{endpoint}",
        content=_multipart(boundary, parts),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(r, 400, "invalid_request")


def test_write_part_order_does_not_matter(capsule, api):
    boundary = "e2eboundaryorder"
    r = api.post(
        f"/v1/capsules/{capsule.capsule_id}/files/write",
        content=_multipart(boundary, [("file", "upload", b"reversed"), ("path", None, b"/tmp/rev")]),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 204, r.text
    assert capsule.files.read("/tmp/rev") == "reversed"


def test_write_not_multipart(capsule, api):
    r = api.post(
        f"/v1/capsules/{capsule.capsule_id}/files/write",
        content=b'{"path": "/tmp/x"}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400, "invalid_request")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_upload_is_413(capsule, api, chunked):
    """files/write caps uploads at 100 MiB (§8.1): 413 `payload_too_large`, never a 500."""
    boundary = "e2eboundarybig"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/tmp/huge\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = 100 * 1024 * 1024 + 1024 * 1024  # 101 MiB
    chunk = os.urandom(1024 * 1024)

    def body():
        yield head
        for _ in range(size // len(chunk)):
            yield chunk
        yield tail

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if not chunked:
        headers["Content-Length"] = str(len(head) + size + len(tail))
    try:
        r = api.post(f"/v1/capsules/{capsule.capsule_id}/files/write", content=body(),
                     headers=headers, timeout=120)
    except httpx.TransportError as exc:
        pytest.fail(f"server dropped the connection instead of answering 413: {exc!r}")
    assert_error(r, 413, "payload_too_large")
    assert not capsule.files.exists("/tmp/huge"), "a rejected upload must not leave a file"
    # The capsule still works afterwards.
    assert capsule.commands.run("echo ok").stdout == "ok\n"


def test_no_capsule_leaked_by_bad_requests(api, api_beta):
    """After all the bad input above, no capsule is left over (the make_capsule fixtures
    destroyed theirs)."""
    assert capsule_ids(api) == set(), capsule_ids(api)
    assert capsule_ids(api_beta) == set()


# ── Team isolation ────────────────────────────────────────────────────────────


def test_other_team_sees_404(capsule, api_beta, server):
    cid = capsule.capsule_id
    assert_error(api_beta.get(f"/v1/capsules/{cid}"), 404, "not_found")
    r = api_beta.post(f"/v1/capsules/{cid}/exec",
                      json={"cmd": "/bin/sh", "args": ["-c", "touch /tmp/pwned"], "background": False})
    assert_error(r, 404, "not_found")
    assert_error(api_beta.post(f"/v1/capsules/{cid}/files/read", json={"path": "/etc/passwd"}),
                 404, "not_found")
    assert_error(api_beta.post(f"/v1/capsules/{cid}/pause"), 404, "not_found")
    assert_error(api_beta.delete(f"/v1/capsules/{cid}"), 404, "not_found")
    assert cid not in capsule_ids(api_beta)

    # SDK view from team beta.
    with pytest.raises(WrennNotFoundError):
        Capsule.get_info(cid, api_key=server.key_beta)
    with pytest.raises(WrennNotFoundError):
        Capsule.destroy(cid, api_key=server.key_beta)

    # Still alive and untouched for its owner.
    assert capsule.get_info().status.value == "running"
    assert not capsule.files.exists("/tmp/pwned")


def test_error_body_shape_is_json_on_405(api):
    r = api.put("/v1/capsules")
    assert r.status_code in (404, 405), r.text
    body = r.json()
    assert isinstance(body["error"]["code"], str)


def test_json_error_body_has_no_500_on_garbage_paths(api):
    for path in ["/v1/capsules/%00", "/v1/capsules/" + "a" * 5000, "/v1/capsules/cl-%2F..%2F"]:
        r = api.get(path)
        assert r.status_code in (400, 404, 414), (path, r.status_code, r.text[:200])
        assert r.status_code == 414 or json.loads(r.text)["error"]["code"] in (
            "invalid_request", "not_found")
