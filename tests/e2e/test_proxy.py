"""Host-based port proxy `{port}-{capsule_id}.{domain}` (§11), as used by `get_url` and the
code runner. The SDK builds `http://{port}-{id}.127.0.0.1:{PORT}`; that name does not resolve,
so requests go to 127.0.0.1 with the SDK's Host header."""

from __future__ import annotations

import httpx

from conftest import UNKNOWN_ID, poll


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
