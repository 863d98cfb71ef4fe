"""The bridge's side of the sidecar's HTTP device API: one long-lived keep-alive aiohttp session.

Every call is bounded: a short connect timeout (a sidecar that is down is known at once) and a
total timeout (a sidecar that hangs is given up on), so a CoAP client always gets an answer.
"""
from __future__ import annotations

import base64

import aiohttp
from yarl import URL

from gatehouse.logs import redact_token_path

from .interfaces import HttpAnswer, SidecarTimeout, SidecarUnavailable

CERTIFICATE_HEADER = "X-Gatehouse-Client-Certificate"
# The sidecar counts what the bridge forwards under the COAP transport (sidecar/metrics.py).
TRANSPORT_HEADERS = {"X-Gatehouse-Transport": "COAP"}
DEFAULT_TIMEOUT = 10.0  # ThingsBoard's transport.coap.timeout (10000 ms)
CONNECT_TIMEOUT = 2.0
MAX_CONNECTIONS = 256  # every observed attribute or RPC feed holds one during its long poll


class HttpForwarder:
    """Forwards to the sidecar at `base_url`, with the bridge's `service_credentials` (username,
    password): the sidecar believes a client certificate, and that a request came over CoAP,
    only from a request that carries them."""

    def __init__(self, base_url: str, service_credentials: tuple[str, str] | None = None, *,
                 default_timeout: float = DEFAULT_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):
        self.base_url = URL(base_url.rstrip("/"))
        self.default_timeout = default_timeout
        self.connect_timeout = connect_timeout
        self._authorization = None
        if service_credentials is not None:
            username, password = service_credentials
            self._authorization = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created inside the running loop, on first use
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30),
                auto_decompress=False, raise_for_status=False)
        return self._session

    async def request(self, method: str, path: str, query: list[tuple[str, str]] | None = None,
                      body: bytes = b"", *, client_certificate: bytes | None = None,
                      timeout: float | None = None) -> HttpAnswer:
        headers = dict(TRANSPORT_HEADERS)
        if body:
            headers["Content-Type"] = "application/json"
        if self._authorization is not None:  # what the bridge says of a request is believed with it
            headers["Authorization"] = self._authorization
        if client_certificate is not None:
            if self._authorization is None:
                raise SidecarUnavailable("no service account for certificate requests")
            headers[CERTIFICATE_HEADER] = base64.b64encode(client_certificate).decode("ascii")
        url = URL(str(self.base_url) + path, encoded=True)
        if query:
            url = url.with_query(query)
        total = self.default_timeout if timeout is None else timeout
        bounds = aiohttp.ClientTimeout(total=total, sock_connect=min(self.connect_timeout, total))
        try:
            async with self._open_session().request(method, url, data=body or None, headers=headers,
                                                    timeout=bounds, allow_redirects=False) as response:
                content = await response.read()
                return HttpAnswer(response.status, content, response.headers.get("Content-Type"))
        except TimeoutError:  # these messages are logged: the path without its token
            raise SidecarTimeout(f"the sidecar did not answer {method} {redact_token_path(path)} within {total:g} s") \
                from None
        except (aiohttp.ClientError, OSError) as e:
            raise SidecarUnavailable(f"the sidecar is unavailable: {_without_url(e)}") from None

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _without_url(error: Exception) -> str:
    """An aiohttp error's text without any request URL it carries (the path holds the token)."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect to {error.host}:{error.port}: {error.os_error.strerror or error.os_error}"
    if isinstance(error, aiohttp.ClientResponseError):
        return f"{type(error).__name__} {error.status}"
    return type(error).__name__ if "/api/v1/" in str(error) else str(error)
