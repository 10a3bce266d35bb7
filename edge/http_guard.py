"""Who may talk to `tandem serve`: the address it binds, same-origin pages, and an optional key.

A local endpoint is reachable by every web page the user has open: a hostile site can make the
browser send requests to http://127.0.0.1:8000, either directly (a cross-site POST needs no
permission to be *sent*) or by DNS rebinding (its own host name, re-pointed at 127.0.0.1, makes
the request same-origin to the browser). So every request must:

- name, in its Host header, the address the server binds (or, on loopback, `localhost` /
  `127.0.0.1` / `[::1]` with the bound port): a rebound host name is refused;
- come from no other web origin: a browser's `Origin` header, when present, must be this
  server's own (cross-site POSTs are refused before they start a generation);
- with `--api-key`, carry the key: `Authorization: Bearer KEY` (OpenAI clients), HTTP Basic
  auth with the key as password (a browser asks for it, so the chat page works too), or the
  cookie the page sets after `/?key=KEY`.

Binding to all interfaces (`--host 0.0.0.0`) accepts any Host header (there is no one name to
check); that is when `--api-key` matters.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress

from aiohttp import web
from yarl import URL

COOKIE = "tandem_key"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class HttpGuard:
    def __init__(self, host: str, api_key: str | None = None):
        self.host = host.strip("[]").lower()
        self.api_key = api_key or None
        self.port: int | None = None  # known once bound

    @property
    def any_host(self) -> bool:
        """Bound to every interface: no one Host name to insist on."""
        try:
            return ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            return False

    def _host_names(self) -> set[str]:
        names = {self.host}
        if self.host in LOOPBACK_NAMES:
            names |= LOOPBACK_NAMES
        return names

    def host_allowed(self, header: str | None) -> bool:
        if self.any_host:
            return True
        try:
            url = URL(f"http://{header}")
        except ValueError:
            return False
        if not header or url.host is None or url.path not in ("", "/"):
            return False
        port_ok = url.explicit_port is None or self.port is None or url.explicit_port == self.port
        return url.host.lower() in self._host_names() and port_ok

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """A browser names the page's origin on cross-origin requests (and POSTs): it must be ours."""
        if origin is None:
            return True  # not from a web page (curl, SDKs, desktop apps)
        scheme, _, rest = origin.partition("://")
        return scheme in ("http", "https") and host is not None and rest.lower() == host.lower()

    def key_ok(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        offered = [request.cookies.get(COOKIE, "")]
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip())
        elif scheme.lower() == "basic":
            try:
                offered.append(base64.b64decode(value.strip()).decode().partition(":")[2])
            except (binascii.Error, UnicodeDecodeError):
                pass
        return any(hmac.compare_digest(key.encode(), self.api_key.encode()) for key in offered if key)

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not self.host_allowed(host):
            return _refuse(421, f"this server answers on {self.host}, not on {host!r}", "misdirected_request")
        if not self.origin_allowed(request.headers.get("Origin"), host):
            return _refuse(403, "requests from other web sites are refused", "cross_origin")
        if request.path == "/" and self.api_key and request.query.get("key") == self.api_key:
            # The key in a link (as `tandem serve` prints it): kept in a cookie, then out of the address bar.
            response = web.Response(status=302, headers={"Location": "/"})
            response.set_cookie(COOKIE, self.api_key, httponly=True, samesite="Strict")
            return response
        if not self.key_ok(request):
            return _refuse(401, "this server needs its API key: `Authorization: Bearer KEY` (or open "
                                "/?key=KEY in a browser)", "invalid_api_key",
                           {"WWW-Authenticate": 'Basic realm="tandem", charset="UTF-8"'})
        return await handler(request)


def _refuse(status: int, message: str, code: str, headers: dict | None = None) -> web.Response:
    kind = "authentication_error" if status == 401 else "permission_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}},
                             status=status, headers=headers)
