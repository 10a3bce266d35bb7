"""Who may talk to `tandem serve`: its own address, same-origin pages, and (optionally) key holders."""

from __future__ import annotations

import base64
import http.cookiejar
import urllib.request

import openai
import pytest
from local_server import LocalServer

from edge.http_guard import HttpGuard
from edge.serve import ServeConfig

KEY = "s3same-open"
CHAT = b'{"model": "tandem", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'


@pytest.fixture(scope="module")
def keyed(tiny_cloud, tiny_drafter):
    with LocalServer(tiny_drafter("noisy"), tiny_cloud.address, config=ServeConfig(port=0, api_key=KEY)) as local:
        yield local


def test_the_page_and_its_files_are_served(server):
    status, headers, body = server.http("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script src="/ui/chat.js"' in body
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    for name, kind in (("chat.js", "javascript"), ("markdown.js", "javascript"), ("chat.css", "text/css")):
        status, headers, body = server.http("GET", f"/ui/{name}")
        assert status == 200 and kind in headers["Content-Type"] and body
    assert server.http("GET", "/ui/../serve.py")[0] in (403, 404)


@pytest.mark.parametrize("host,allowed", [
    ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("[::1]:{port}", True), ("LOCALHOST:{port}", True),
    ("evil.example:{port}", False), ("127.0.0.1.evil.example:{port}", False), ("127.0.0.1:1", False),
])
def test_only_the_bound_address_is_answered(server, host, allowed):
    """A DNS-rebound name (a web site's own host name pointing at 127.0.0.1) gets nothing."""
    status, _, body = server.http("GET", "/v1/models", headers={"Host": host.format(port=server.server.port)})
    assert status == (200 if allowed else 421), body
    status, _, _ = server.http("GET", "/", headers={"Host": host.format(port=server.server.port)})
    assert status == (200 if allowed else 421)


def test_other_web_sites_cannot_start_a_generation(server):
    before = server.health()["requests"]
    status, _, body = server.http("POST", "/v1/chat/completions", CHAT,
                                  headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
    assert status == 403 and body["error"]["code"] == "cross_origin"
    assert server.health()["requests"] == before  # refused before any generation began
    own = f"http://127.0.0.1:{server.server.port}"
    status, _, body = server.http("POST", "/v1/chat/completions", CHAT, headers={"Origin": own})
    assert status == 200 and body["usage"]["completion_tokens"] >= 1


def test_api_key_protects_page_and_api(keyed):
    port = keyed.server.port
    for path in ("/", "/ui/chat.js", "/v1/models", "/health"):
        status, headers, body = keyed.http("GET", path, headers={"Authorization": ""})
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
        assert body["error"]["type"] == "authentication_error"
    assert keyed.http("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert keyed.http("GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})[0] == 200
    basic = base64.b64encode(f"me:{KEY}".encode()).decode()
    assert keyed.http("GET", "/", headers={"Authorization": f"Basic {basic}"})[0] == 200
    with openai.OpenAI(base_url=keyed.base_url, api_key=KEY, max_retries=0, timeout=60) as client:
        assert client.chat.completions.create(model="tandem", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=2).usage.completion_tokens >= 1
    with openai.OpenAI(base_url=keyed.base_url, api_key="wrong", max_retries=0, timeout=60) as client, \
            pytest.raises(openai.AuthenticationError):
        client.models.list()

    # A browser opens /?key=KEY once: the key moves into a same-site, script-proof cookie.
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"http://127.0.0.1:{port}/?key={KEY}") as response:
        assert response.status == 200 and response.url == f"http://127.0.0.1:{port}/"
    (cookie,) = list(jar)
    assert cookie.value == KEY and cookie.has_nonstandard_attr("HttpOnly")
    with opener.open(f"http://127.0.0.1:{port}/v1/models") as response:
        assert response.status == 200


@pytest.mark.parametrize("bind,host,port,allowed", [
    ("127.0.0.1", "127.0.0.1:8000", 8000, True),
    ("127.0.0.1", "localhost", 8000, True),  # no port in the header: the scheme's default, a client's choice
    ("127.0.0.1", "192.168.1.5:8000", 8000, False),
    ("127.0.0.1", None, 8000, False),
    ("127.0.0.1", "bad host:8000", 8000, False),
    ("::1", "[::1]:8000", 8000, True),
    ("192.168.1.5", "192.168.1.5:8000", 8000, True),
    ("192.168.1.5", "localhost:8000", 8000, False),  # bound to the LAN address only: loopback names are not it
    ("0.0.0.0", "anything.example:1", 8000, True),  # all interfaces: no one name to check (use --api-key)
    ("::", "anything.example", 8000, True),
])
def test_host_rule(bind, host, port, allowed):
    guard = HttpGuard(bind)
    guard.port = port
    assert guard.host_allowed(host) is allowed


def test_origin_rule():
    guard = HttpGuard("127.0.0.1")
    assert guard.origin_allowed(None, "127.0.0.1:8000")  # not a browser
    assert guard.origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert not guard.origin_allowed("http://localhost:8000", "127.0.0.1:8000")  # another origin
    assert not guard.origin_allowed("null", "127.0.0.1:8000")  # sandboxed frames, file:// pages
    assert not guard.origin_allowed("https://evil.example", "127.0.0.1:8000")
