"""Host-based port proxy `{port}-{capsule_id}.{domain}` (§11), as used by `get_url` and the
code runner. The SDK builds `http://{port}-{id}.127.0.0.1:{PORT}`; that name does not resolve,
so requests go to 127.0.0.1 with the SDK's Host header."""

from __future__ import annotations

import httpx

from conftest import UNKNOWN_ID, poll, wait_status


def _via_proxy(server, host: str, path: str = "/", **kw) -> httpx.Response:
    return httpx.get(
        f"{server.base_url}{path}",
        headers={"Host": host, "X-API-Key": server.key_alpha},
        timeout=30,
        **kw,
    )


def test_get_url_shape(capsule, server):
    url = capsule.get_url(8000)
    assert url == f"http://8000-{capsule.capsule_id}.127.0.0.1:{server.port}"


def test_proxy_nothing_listening_is_5xx(capsule, server):
    """The code runner retries 5xx but fails at once on 4xx (§11, §12)."""
    host = httpx.URL(capsule.get_url(8001)).netloc.decode()
    r = _via_proxy(server, host, "/api/kernels")
    assert r.status_code in (502, 503), (r.status_code, r.text[:200])


def test_proxy_serves_capsule_http(capsule, server):
    capsule.files.write("/tmp/www/index.html", "hello through the proxy\n")
    capsule.files.write("/tmp/www/sub/a.txt", "sub file")
    capsule.commands.run("busybox httpd -f -p 8000 -h /tmp/www", background=True)
    host = httpx.URL(capsule.get_url(8000)).netloc.decode()

    def ok():
        r = _via_proxy(server, host, "/")
        return r if r.status_code == 200 else None

    r = poll(ok, timeout=15, interval=0.3, what="proxied 200 from busybox httpd")
    assert r.text == "hello through the proxy\n"
    r = _via_proxy(server, host, "/sub/a.txt")
    assert r.status_code == 200 and r.text == "sub file"


def test_proxy_unknown_capsule_and_bad_port(server):
    r = _via_proxy(server, f"8000-{UNKNOWN_ID}.127.0.0.1:{server.port}")
    assert r.status_code == 404, (r.status_code, r.text[:200])
    r = _via_proxy(server, f"70000-{UNKNOWN_ID}.127.0.0.1:{server.port}")
    assert r.status_code == 400, (r.status_code, r.text[:200])


def test_proxy_paused_capsule_is_409(capsule, server):
    capsule.pause(wait=True)
    r = _via_proxy(server, httpx.URL(capsule.get_url(8000)).netloc.decode())
    assert r.status_code == 409, (r.status_code, r.text[:200])


ECHO_HEADERS = (
    "python3 -c \"import http.server as h\n"
    "class H(h.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        b = str(self.headers).encode(); self.send_response(200); self.end_headers(); self.wfile.write(b)\n"
    "h.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\""
)


def _serve_headers(cap):
    cap.commands.run(ECHO_HEADERS, background=True)


def _get(server, host, key=None):
    headers = {"Host": host}
    if key is not None:
        headers["X-API-Key"] = key
    return httpx.get(f"{server.base_url}/", headers=headers, timeout=30)


def test_proxy_wants_the_owning_teams_key_and_strips_it(make_capsule, server):
    cap = make_capsule("minimal")
    _serve_headers(cap)
    host = httpx.URL(cap.get_url(8000)).netloc.decode()
    r = poll(lambda: (lambda r: r if r.status_code == 200 else None)(_get(server, host, server.key_alpha)),
             timeout=20, interval=0.3, what="proxied 200 with the owner's key")
    assert "x-api-key" not in r.text.lower(), r.text
    assert _get(server, host).status_code == 401
    assert _get(server, host, "wrn_" + "0" * 40).status_code == 401
    # Another team's key: as if the capsule did not exist.
    r = _get(server, host, server.key_beta)
    assert r.status_code == 404, (r.status_code, r.text)


def test_proxy_public_traffic_needs_no_key(api, server):
    r = api.post("/v1/capsules", json={"template": "minimal", "metadata": {"public_traffic": "true"}})
    assert r.status_code == 202, r.text
    cid = r.json()["id"]
    try:
        r = api.post(f"/v1/capsules/{cid}/exec", json={"cmd": "/bin/sh", "args": ["-c", ECHO_HEADERS],
                                                       "background": True})
        assert r.status_code in (200, 202), r.text
        host = f"8000-{cid}.127.0.0.1:{server.port}"
        r = poll(lambda: (lambda r: r if r.status_code == 200 else None)(_get(server, host)),
                 timeout=20, interval=0.3, what="proxied 200 without a key")
        assert "host:" in r.text.lower()
    finally:
        api.delete(f"/v1/capsules/{cid}")
        wait_status(api, cid, {"stopped"})
