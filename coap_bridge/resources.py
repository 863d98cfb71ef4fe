"""The `/api/v1` resource: ThingsBoard's CoAP device API (SPEC §4.2, §6) on top of the sidecar.

One PathCapable resource gets everything below `/api/v1` (aiocoap leaves only the remainder in
`uri_path`), checks what ThingsBoard checks before any device lookup (method, feature), forwards
the rest to the sidecar's HTTP device API through a `Forwarder`, and maps its answer to CoAP
codes. Payloads pass through untouched: the sidecar parses them (relaxed JSON included).

Paths: `{token}/{feature}[/{requestId}]`, or `{feature}[/{requestId}]` for a device identified by
its DTLS client certificate (`request.remote.client_certificate`, DER; plain CoAP remotes have
no such attribute). Observe on `attributes` and `rpc` is fed by the sidecar's long polls: one
task per observed (device, feature), running while that feed has an observer.

Token guessing: the bridge, not the sidecar, limits CoAP clients, by their own UDP (DTLS) source
address. The sidecar sees every forwarded request come from the bridge's address, and does not
limit requests made with the bridge's service credentials, so no CoAP client's guesses can block
another's; a header naming the client's address would have to be trusted by the sidecar, and
observation feeds (shared by a device's observers) have no one client to name. A request whose
token the sidecar does not know (4.01) counts as a failure of its address; --max-failed-logins of
them block the address for --block-seconds: its device requests (even with a valid token, and
observations) get 4.29 Too Many Requests with Max-Age, the seconds left (RFC 8516), before
anything is forwarded. Nothing clears the count; provisioning is not limited.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import time
from urllib.parse import quote

from aiocoap import Code, Message, resource
from aiocoap.numbers import ContentFormat

from gatehouse import metrics as m
from gatehouse.device_requests import DEVICE_API_FEATURES
from gatehouse.login_limiter import LoginLimiter, whole_seconds

from .interfaces import (
    Forwarder,
    ForwardingError,
    HttpAnswer,
    SidecarTimeout,
    SidecarUnavailable,
)

log = logging.getLogger(__name__)

FEATURES = frozenset(DEVICE_API_FEATURES)
_request_seconds = m.Children(m.REQUEST_SECONDS, m.COAP)
# Only the refusals of blocked addresses: the sidecar counts the logins the bridge forwards.
_logins = m.Children(m.LOGINS, m.COAP)
TOO_MANY_UNKNOWN_TOKENS = b"Too many requests with unknown access tokens from this address; try again later"
OBSERVABLE = frozenset({"attributes", "rpc"})
CLIENT_RPC_TIMEOUT_MS = 10_000  # ThingsBoard's transport.coap.timeout for sync operations
POLL_TIMEOUT_MS = 30_000  # each long poll an observation feed keeps open on the sidecar
POLL_MARGIN = 5.0  # seconds on top of a long poll's own timeout before it counts as hung
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)  # a feed's pauses after failed polls (then the last, repeated)

# HTTP statuses of the sidecar's device API → CoAP (anything 5xx → 5.00).
_ERROR_CODES = {
    400: Code.BAD_REQUEST, 401: Code.UNAUTHORIZED, 403: Code.FORBIDDEN, 404: Code.NOT_FOUND,
    405: Code.METHOD_NOT_ALLOWED, 408: Code.GATEWAY_TIMEOUT, 413: Code.REQUEST_ENTITY_TOO_LARGE,
    503: Code.SERVICE_UNAVAILABLE,
}


def _segment(text: str) -> str:
    """One path segment for the sidecar's URL: every reserved character, and `.`/`..`, escaped."""
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return quote(text, safe="")


class _Target:
    """Who a request is for and what it asks: `identity` is ("token", token) or ("certificate",
    sha256 of the DER); `prefix` the sidecar path up to the feature."""

    def __init__(self, token: str | None, certificate: bytes | None, feature: str, rest: tuple[str, ...]):
        self.token = token
        self.certificate = certificate
        self.feature = feature
        self.rest = rest
        if token is not None:
            self.identity = ("token", token)
            self.prefix = f"/api/v1/{_segment(token)}"
        else:
            self.identity = ("certificate", hashlib.sha256(certificate or b"").hexdigest())
            self.prefix = "/api/v1"

    def path(self, *more: str) -> str:
        return "/".join([self.prefix, self.feature, *(_segment(s) for s in self.rest + more)])


def _route(uri_path: tuple[str, ...], certificate: bytes | None) -> _Target | Code:
    """The request's target, or the error code ThingsBoard answers before any device lookup."""
    if uri_path and uri_path[0] in FEATURES and uri_path[0] != "provision" and not (
            len(uri_path) >= 2 and uri_path[1] in FEATURES):
        # Token-less (X.509 over DTLS): only a client certificate says who this is.
        if certificate is None:
            return Code.UNAUTHORIZED
        return _Target(None, certificate, uri_path[0], tuple(uri_path[1:]))
    if len(uri_path) < 2 or uri_path[1] not in FEATURES or uri_path[1] == "provision":
        return Code.BAD_REQUEST  # no feature, or one ThingsBoard does not know
    if not uri_path[0] or "/" in uri_path[0]:  # no token, or one no device can have
        return Code.UNAUTHORIZED
    return _Target(uri_path[0], None, uri_path[1], tuple(uri_path[2:]))


def client_address(remote) -> str:
    """The IP address a CoAP request came from (plain UDP or DTLS), what the limiter counts: the
    port left out (a client gets a new one per socket), an IPv4 client on the dual-stack socket
    as IPv4."""
    sockaddr = getattr(remote, "sockaddr", None)
    if not sockaddr:
        return ""
    host = str(sockaddr[0]).partition("%")[0]  # an IPv6 zone
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        return host
    mapped = getattr(parsed, "ipv4_mapped", None)
    return str(mapped or parsed)


def _too_many_requests(seconds_blocked: float) -> Message:
    """RFC 8516's 4.29: Max-Age says when to try again; the payload is a diagnostic text."""
    return Message(code=Code.TOO_MANY_REQUESTS, max_age=whole_seconds(seconds_blocked),
                   payload=TOO_MANY_UNKNOWN_TOKENS)


def _response_format(request: Message) -> int:
    """ThingsBoard echoes the request's Content-Format, else JSON."""
    return request.opt.content_format if request.opt.content_format is not None else ContentFormat.JSON


def _json_message(payload: bytes, request: Message, code=Code.CONTENT) -> Message:
    return Message(code=code, payload=payload, content_format=_response_format(request))


def _error_message(answer: HttpAnswer) -> Message:
    if answer.status >= 500 and answer.status != 503:
        return Message(code=Code.INTERNAL_SERVER_ERROR)
    return Message(code=_ERROR_CODES.get(answer.status, Code.INTERNAL_SERVER_ERROR))


def _query(request: Message) -> list[tuple[str, str]]:
    pairs = []
    for item in request.opt.uri_query:
        name, _, value = item.partition("=")
        pairs.append((name, value))
    return pairs


class _Feed:
    """The observers of one (device, feature) and the task long-polling the sidecar for them."""

    def __init__(self, key, target: _Target):
        self.key = key
        self.target = target
        self.observers: list = []
        self.task: asyncio.Task | None = None


class ApiV1WithoutFeature(resource.Resource):
    """`/api/v1` itself, a request that names no feature: 4.00 as in ThingsBoard (4.05 for a
    method it does not serve). aiocoap hands ApiV1 only the paths below it."""

    async def render_get(self, request: Message) -> Message:
        return Message(code=Code.BAD_REQUEST)

    render_post = render_get


class ApiV1(resource.ObservableResource, resource.PathCapable):
    """Everything under `coap://host/api/v1/`."""

    def __init__(self, forwarder: Forwarder, *, poll_timeout_ms: int = POLL_TIMEOUT_MS,
                 client_rpc_timeout_ms: int = CLIENT_RPC_TIMEOUT_MS, limiter: LoginLimiter | None = None):
        super().__init__()
        self.forwarder = forwarder
        self.limiter = limiter if limiter is not None else LoginLimiter()  # CoAP clients' unknown tokens
        self.poll_timeout_ms = poll_timeout_ms
        self.client_rpc_timeout_ms = client_rpc_timeout_ms
        self._feeds: dict[tuple, _Feed] = {}

    # --- plain requests ---------------------------------------------------------------------

    async def render(self, request: Message) -> Message:
        started = time.perf_counter()
        try:
            return await self._render(request)
        except SidecarUnavailable as e:
            log.warning("%s", e)
            return Message(code=Code.SERVICE_UNAVAILABLE)
        except SidecarTimeout as e:
            log.warning("%s", e)
            return Message(code=Code.INTERNAL_SERVER_ERROR)
        finally:
            _request_seconds(_endpoint(request)).observe(time.perf_counter() - started)

    async def _render(self, request: Message) -> Message:
        if request.code not in (Code.GET, Code.POST):
            return Message(code=Code.METHOD_NOT_ALLOWED)
        uri_path = tuple(request.opt.uri_path)
        if uri_path == ("provision",):
            if request.code is not Code.POST:
                return Message(code=Code.BAD_REQUEST)
            return await self._provision(request)
        address = client_address(request.remote)
        seconds_blocked = self.limiter.seconds_blocked(address)
        if seconds_blocked > 0:  # before the token is even forwarded: from here, guessing learns nothing
            _logins(m.UNKNOWN, m.BLOCKED).inc()
            return _too_many_requests(seconds_blocked)
        target = _route(uri_path, getattr(request.remote, "client_certificate", None))
        if isinstance(target, Code):
            return Message(code=target)
        if request.code is Code.GET:
            response = await self._get(request, target)
        else:
            response = await self._post(request, target)
        if target.token is not None and response.code == Code.UNAUTHORIZED:  # the sidecar knows no such token
            self.limiter.failed(address)
        return response

    async def _forward(self, method: str, target: _Target, *more: str, query=None, body: bytes = b"",
                       timeout: float | None = None) -> HttpAnswer:
        return await self.forwarder.request(method, target.path(*more), query, body,
                                            client_certificate=target.certificate, timeout=timeout)

    async def _post(self, request: Message, target: _Target) -> Message:
        feature, rest = target.feature, target.rest
        if feature == "rpc" and not rest:  # client-side RPC: the application's reply, or 5.04
            query = [("timeout", str(self.client_rpc_timeout_ms))]
            answer = await self._forward("POST", target, query=query, body=request.payload,
                                         timeout=self.client_rpc_timeout_ms / 1000 + POLL_MARGIN)
            if answer.status == 200:
                return _json_message(answer.body, request)
            return _error_message(answer)
        if rest and not (feature == "rpc" and len(rest) == 1):
            return Message(code=Code.BAD_REQUEST)
        answer = await self._forward("POST", target, body=request.payload)
        if answer.status == 200:
            return Message(code=Code.CREATED)
        return _error_message(answer)

    async def _get(self, request: Message, target: _Target) -> Message:
        if target.feature not in OBSERVABLE or target.rest:
            return Message(code=Code.BAD_REQUEST)  # GET telemetry, claim, rpc/{id}
        if request.opt.observe == 1:  # deregistration: aiocoap has ended that token's observation
            return Message(code=Code.DELETED)
        observing = request.opt.observe == 0
        if target.feature == "rpc":
            if not observing:
                return Message(code=Code.BAD_REQUEST)
            # Only the device's credentials are checked; RPCs come as notifications.
            answer = await self._forward("GET", target.__class__(target.token, target.certificate,
                                                                  "attributes", ()))
            return Message(code=Code.VALID) if answer.status == 200 else _error_message(answer)
        answer = await self._forward("GET", target, query=None if observing else _query(request))
        if answer.status != 200:
            return _error_message(answer)
        try:
            found = json.loads(answer.body)
        except ValueError:
            return Message(code=Code.INTERNAL_SERVER_ERROR)
        if observing:  # the first notification: the current shared attributes, {} if none
            return _json_message(json.dumps(found.get("shared", {}), separators=(",", ":")).encode(), request)
        if not any(found.values()):
            return Message(code=Code.NOT_FOUND)  # ThingsBoard's CoAP answer when nothing is found
        return _json_message(answer.body, request)

    async def _provision(self, request: Message) -> Message:
        answer = await self.forwarder.request("POST", "/api/v1/provision", None, request.payload)
        if answer.status == 200:
            try:
                status = json.loads(answer.body).get("status")
            except (ValueError, AttributeError):
                return Message(code=Code.INTERNAL_SERVER_ERROR)
            code = Code.CREATED if status == "SUCCESS" else Code.BAD_REQUEST
            return _json_message(answer.body, request, code)
        if answer.status == 400:
            return Message(code=Code.BAD_REQUEST)  # undecodable, or no key or secret: no body
        return _error_message(answer)

    # --- Observe ----------------------------------------------------------------------------

    async def add_observation(self, request: Message, serverobservation) -> None:
        # aiocoap calls the cancellation callback of every Observe=0 request it saw, accepted or
        # not: accept all, and feed only those that can be observed.
        serverobservation.accept(lambda: None)
        if request.code is not Code.GET or request.opt.observe != 0:
            return
        if self.limiter.is_blocked(client_address(request.remote)):
            return  # render answers 4.29; the device's current observer is not replaced
        target = _route(tuple(request.opt.uri_path), getattr(request.remote, "client_certificate", None))
        if isinstance(target, Code) or target.feature not in OBSERVABLE or target.rest:
            return
        key = (target.identity, target.feature)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = _Feed(key, target)
            feed.task = asyncio.create_task(self._run_feed(feed), name=f"coap-feed-{target.feature}")
        # As ThingsBoard: a new observation of the same device and feature replaces the old one,
        # which gets a last 2.02 Deleted.
        replaced, feed.observers = feed.observers, [serverobservation]
        for old in replaced:
            old.trigger(Message(code=Code.DELETED), is_last=True)
        serverobservation.accept(lambda: self._leave(feed, serverobservation))

    def _leave(self, feed: _Feed, observation) -> None:
        with contextlib.suppress(ValueError):
            feed.observers.remove(observation)
        if not feed.observers and self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]
            if feed.task is not None and feed.task is not asyncio.current_task():
                feed.task.cancel()

    def _end_feed(self, feed: _Feed, message: Message) -> None:
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]
        observers, feed.observers = feed.observers, []
        for observation in observers:
            observation.trigger(message.copy(), is_last=True)

    async def _run_feed(self, feed: _Feed) -> None:
        target, failures = feed.target, 0
        poll_path = target.path("updates") if target.feature == "attributes" else target.path()
        query = [("timeout", str(self.poll_timeout_ms))]
        while feed.observers:
            try:
                answer = await self.forwarder.request("GET", poll_path, query, client_certificate=target.certificate,
                                                      timeout=self.poll_timeout_ms / 1000 + POLL_MARGIN)
            except ForwardingError as e:
                log.warning("observation feed: %s", e)
                answer = None
            if answer is not None and answer.status == 200:
                failures = 0
                for observation in list(feed.observers):  # each its own message: aiocoap numbers it
                    observation.trigger(Message(code=Code.CONTENT, payload=answer.body,
                                                content_format=ContentFormat.JSON))
                continue
            if answer is not None and answer.status == 408:  # nothing happened within the poll
                failures = 0
                continue
            if answer is not None and answer.status in (401, 403):  # the device is gone
                self._end_feed(feed, _error_message(answer))
                return
            await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
            failures += 1

    async def close(self) -> None:
        """End every feed (at shutdown)."""
        feeds, self._feeds = list(self._feeds.values()), {}
        tasks = [feed.task for feed in feeds if feed.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def feed_count(self) -> int:
        return len(self._feeds)


def _endpoint(request: Message) -> str:
    """The metrics label of a request: its feature (never the token), "other" if it names none."""
    return next((part for part in tuple(request.opt.uri_path)[:2] if part in FEATURES), "other")
