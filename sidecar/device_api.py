"""The HTTP device API, `/api/v1` (SPEC §4.1, §5).

A transport like the broker plugin: the same domain calls, the same application-topic JSON, so
an application cannot tell an HTTP device's data from an MQTT device's. Statuses are
ThingsBoard's, except that a malformed body is 400 with a JSON error rather than its 500
(DESIGN.md, "Where we deliberately differ").

Order of checks, as in ThingsBoard: the payload size (its servlet filter runs before anything
else), then the token (401 with an empty body, whatever the body holds), then the body.

Every device route also exists without the token segment, `/api/v1/{feature}...`, for the CoAP
bridge: over two-way DTLS a device is whoever its client certificate belongs to (SPEC §6, X.509
over DTLS). The bridge passes the certificate in `X-Gatehouse-Client-Certificate` (Base64 DER)
and authenticates as its service account with HTTP Basic; the header is believed only once that
account's credentials check out, so no one else can claim a certificate they do not hold. Both
forms of a route run the same view, given the device.

Token guessing: an address whose requests named --max-failed-logins unknown tokens is refused
for --block-seconds with 429 and Retry-After, before any token is looked up, even a valid one
(ThingsBoard's ip limits, as the broker applies them to MQTT logins). Only a failure counts and
nothing clears the count: every request is a login of its own, and a device's one valid token
must not launder its address's guesses. Requests the CoAP bridge forwards are not limited here:
they all come from the bridge's address, so the bridge limits CoAP clients by their own UDP
address before forwarding (coap_bridge/resources.py), and the sidecar never blocks the bridge.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Callable

from flask import Blueprint, Response, abort, g, jsonify, request
from werkzeug.routing import BaseConverter

from gatehouse import device_requests
from gatehouse import metrics as gm
from gatehouse.application_namespace import (
    device_topic,
    rpc_request_message,
)
from gatehouse.clock import now_ms
from gatehouse.device_requests import DEVICE_API_FEATURES, DataUpload, attributes_upload, telemetry_upload
from gatehouse.errors import NotFoundError
from gatehouse.login_limiter import LoginLimiter, whole_seconds
from gatehouse.models import Device
from gatehouse.payloads import (
    PayloadError,
    attribute_request_from_keys,
    parse_json,
    parse_rpc_request,
)

from . import metrics
from .bridge_account import from_the_bridge
from .context import sidecar
from .errors import error_response

device_api = Blueprint("device_api", __name__, url_prefix="/api/v1")


class _NotAFeatureConverter(BaseConverter):
    """A path segment that is not a feature name. Werkzeug prefers static segments, so without
    it POST /api/v1/rpc/attributes would be the token-less RPC reply with id "attributes" rather
    than a device with the token "rpc" posting attributes, as the CoAP bridge (and ThingsBoard's
    CoAP transport) read such a path."""

    regex = "(?!(?:" + "|".join(DEVICE_API_FEATURES) + ")$)[^/]+"


# Before any rule: a blueprint's deferred functions run in the order they were recorded.
device_api.record_once(lambda state: state.app.url_map.converters.setdefault("not_a_feature",
                                                                              _NotAFeatureConverter))

CLIENT_CERTIFICATE_HEADER = "X-Gatehouse-Client-Certificate"
# The CoAP bridge's service account (Registry.service_credentials), the one caller of the
# token-less routes.
_REQUEST_ID = re.compile(r"[0-9]{1,9}")  # what the application namespace's topics carry
_TIMEOUT_MS = re.compile(r"[0-9]{1,18}")
_READ_CHUNK = 1 << 20
PAYLOAD_TOO_LARGE = "Payload size exceeds the limit"
TOO_MANY_UNKNOWN_TOKENS = "Too many requests with unknown access tokens from this address; try again later"
POLLS_FULL_RETRY_AFTER = "5"  # seconds
# Werkzeug would answer a path such as /api/v1/..%2F/telemetry (..// once decoded) with a redirect
# to the path with the slashes merged; a device API has nothing to redirect to.
_NO_REDIRECTS = {"merge_slashes": False}


# --- answers ------------------------------------------------------------------------------------

def _empty(status: int) -> Response:
    return Response(status=status)


def _error(status: int, message: str) -> Response:
    return error_response(status, message)


def _json_body(payload: bytes) -> Response:
    return Response(payload, status=200, mimetype="application/json")


# --- what every request goes through ------------------------------------------------------------

def _payload_limit() -> int:
    """This request's body limit, by path as ThingsBoard's transport.http.max_payload_size (set
    for the request before anything else runs)."""
    return g.payload_limit


@device_api.before_request
def _refuse_a_declared_oversized_payload() -> Response | None:
    settings = sidecar().settings
    # ThingsBoard's transport.http.max_payload_size patterns: /api/v1/*/rpc/** has the smaller
    # limit; here by route, so the token-less RPC routes have it too.
    g.payload_limit = limit = (settings.max_rpc_payload_size if request.endpoint in _RPC_ENDPOINTS
                               else settings.max_payload_size)
    # Before the token check, as ThingsBoard's filter: nothing is looked up for such a request.
    content_length = request.content_length
    if content_length is not None and content_length > limit:
        return _error(413, PAYLOAD_TOO_LARGE)
    return None


def _token_limiter() -> LoginLimiter | None:
    """The limiter of this request's address; None for the CoAP bridge's requests, whose CoAP
    clients the bridge limits itself (their address is not this request's)."""
    return None if from_the_bridge() else sidecar().device_logins


def _refuse_a_blocked_address(limiter: LoginLimiter | None, address: str) -> None:
    seconds_blocked = limiter.seconds_blocked(address) if limiter is not None else 0.0
    if seconds_blocked > 0:
        metrics.login(gm.UNKNOWN, gm.BLOCKED)
        response = _error(429, TOO_MANY_UNKNOWN_TOKENS)
        response.headers["Retry-After"] = str(whole_seconds(seconds_blocked))
        abort(response)


def _device_or_401(token: str) -> Device:
    limiter, address = _token_limiter(), request.remote_addr or ""
    _refuse_a_blocked_address(limiter, address)  # before the lookup: from there, guessing learns nothing
    device = sidecar().device_for_token(token)
    if device is None:
        if limiter is not None:
            limiter.failed(address)
        metrics.login(gm.UNKNOWN, "NOT_AUTHORIZED")
        abort(_empty(401))  # ThingsBoard's 401 has no body
    metrics.login("ACCESS_TOKEN", gm.ACCEPTED)
    sidecar().activity.active(device.id, now_ms())
    return device


def _certificate_device_or_401() -> Device:
    """The device of the certificate the CoAP bridge vouches for; 401 unless the request comes
    with the bridge's service credentials and the certificate is an X.509 device's."""
    if not from_the_bridge():
        abort(_empty(401))  # the certificate header is not even read
    try:
        der = base64.b64decode(request.headers.get(CLIENT_CERTIFICATE_HEADER, ""), validate=True)
    except (binascii.Error, ValueError):
        der = b""
    device = sidecar().device_for_certificate(der) if der else None
    if device is None:
        metrics.login("X509_CERTIFICATE", "NOT_AUTHORIZED")
        abort(_empty(401))
    metrics.login("X509_CERTIFICATE", gm.ACCEPTED)
    sidecar().activity.active(device.id, now_ms())
    return device


_RPC_ENDPOINTS: set[str] = set()


def _device_route(method: str, rule: str) -> Callable:
    """Register `view(device, **path_values)` twice: as `/<token>{rule}` for devices that name
    their token, and as `{rule}` for certificate-identified devices behind the CoAP bridge.
    The device is found before the view runs, so the order of checks is the same for both."""
    def register(view: Callable[..., Response]) -> Callable[..., Response]:
        def by_token(token: str, **path_values) -> Response:
            return view(_device_or_401(token), **path_values)

        def by_certificate(**path_values) -> Response:
            return view(_certificate_device_or_401(), **path_values)

        endpoints = (view.__name__, f"{view.__name__}_by_certificate")
        device_api.add_url_rule(f"/<token>{rule}", endpoints[0], by_token, methods=[method], **_NO_REDIRECTS)
        device_api.add_url_rule(rule, endpoints[1], by_certificate, methods=[method], **_NO_REDIRECTS)
        if rule == "/rpc" or rule.startswith("/rpc/"):
            _RPC_ENDPOINTS.update(f"{device_api.name}.{name}" for name in endpoints)
        return view
    return register


def _store(upload: DataUpload) -> None:
    try:
        sidecar().store_device_data(upload)
    except NotFoundError:  # deleted since its token was checked: the token is no longer valid
        abort(_empty(401))


def _body_within_limit() -> bytes:
    """The request body; 413 when it is over the limit. A body whose length is not declared
    (chunked, under a WSGI server that does not count it first) is read to at most one byte
    past the limit."""
    limit = _payload_limit()
    content_length = request.content_length
    if content_length is not None:  # checked against the limit before the request got here
        return request.stream.read(content_length)
    stream = request.stream
    body = bytearray()
    while len(body) <= limit:
        chunk = stream.read(min(_READ_CHUNK, limit + 1 - len(body)))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        abort(_error(413, PAYLOAD_TOO_LARGE))
    return bytes(body)


def _valid(parsed):
    """A parser's result, or 400 with its message (safe to show: it never holds a traceback)."""
    if isinstance(parsed, PayloadError):
        abort(_error(400, parsed.message))
    return parsed


def _timeout_seconds() -> float:
    """`?timeout=` in milliseconds; absent or 0: the default, and never past the ceiling."""
    settings = sidecar().settings
    text = request.args.get("timeout", "").strip()
    if text and not _TIMEOUT_MS.fullmatch(text):
        abort(_error(400, "timeout must be a whole number of milliseconds"))
    millis = int(text) if text else 0
    return min(millis or settings.request_timeout_ms, settings.max_request_timeout_ms) / 1000


def _key_list_param(name: str) -> str | None:
    # Spring binds a repeated parameter to a String by joining the values with commas.
    values = request.args.getlist(name)
    return ",".join(values) if values else None


# --- telemetry and attributes -------------------------------------------------------------------

@_device_route("POST", "/telemetry")
def post_telemetry(device: Device) -> Response:
    _store(_valid(telemetry_upload(device.id, _body_within_limit(), now=now_ms(), max_bytes=_payload_limit())))
    metrics.message(gm.IN, "telemetry")
    return _empty(200)


@_device_route("POST", "/attributes")
def post_attributes(device: Device) -> Response:
    _store(_valid(attributes_upload(device.id, _body_within_limit(), max_bytes=_payload_limit())))
    metrics.message(gm.IN, "attributes")
    return _empty(200)


@_device_route("GET", "/attributes")
def get_attributes(device: Device) -> Response:
    wanted = attribute_request_from_keys(_key_list_param("clientKeys"), _key_list_param("sharedKeys"))
    metrics.message(gm.IN, "attribute_request")
    return jsonify(sidecar().registry.device_attributes(device.id, wanted.client_keys, wanted.shared_keys))


def _polls_full() -> Response:
    """503 for a long poll when every poll slot is taken (Sidecar.poll_slot); the CoAP bridge
    tries its observation's poll again after a pause."""
    metrics.long_poll_refused()
    response = _error(503, "Too many open long polls; try again later")
    response.headers["Retry-After"] = POLLS_FULL_RETRY_AFTER
    return response


def _long_poll(device: Device, wait: Callable[[str, float], dict | None], kind: str) -> Response:
    """`wait(device id, timeout)` for what the device is sent (`kind`); 408 if nothing came."""
    timeout = _timeout_seconds()
    with sidecar().poll_slot() as taken:
        if not taken:
            return _polls_full()
        with metrics.open_polls.polling(device.id), _session_of(device):
            sent = wait(device.id, timeout)
    if sent is None:
        return _empty(408)
    metrics.message(gm.OUT, kind)
    return jsonify(sent)


def _session_of(device: Device) -> contextlib.AbstractContextManager:
    """The bridge's long polls feed CoAP observations, which are sessions (the device is
    connected); an HTTP device's own long polls are requests like any other."""
    return sidecar().observations.polling(device.id) if from_the_bridge() else contextlib.nullcontext()


@_device_route("GET", "/attributes/updates")
def poll_attribute_updates(device: Device) -> Response:
    return _long_poll(device, sidecar().mailboxes.wait_for_attribute_update, "attributes_update")


# --- RPC ----------------------------------------------------------------------------------------

@_device_route("GET", "/rpc")
def poll_rpc_call(device: Device) -> Response:
    return _long_poll(device, sidecar().mailboxes.take_rpc_call, "rpc_call")


@_device_route("POST", "/rpc/<not_a_feature:request_id>")
def reply_to_rpc_call(device: Device, request_id: str) -> Response:
    if not _REQUEST_ID.fullmatch(request_id):
        abort(_error(400, "RPC request id must be a number of at most 9 digits"))
    body = _body_within_limit()
    if not body:
        abort(_error(400, "Required request body is missing"))
    # Any reply goes to the application as it is, as the MQTT device API does.
    link = sidecar().link
    if link is not None:
        link.publish(device_topic(device.id, "rpc", "response", int(request_id)), body)
    metrics.message(gm.IN, "rpc_response")
    return _empty(200)


@_device_route("POST", "/rpc")
def call_server(device: Device) -> Response:
    """Client-side RPC: an application answers on .../rpc/reply/{id} while the request waits,
    up to `?timeout=` as for the long polls (ThingsBoard always waits its default)."""
    rpc = _valid(parse_rpc_request(_body_within_limit(), max_bytes=_payload_limit()))
    metrics.message(gm.IN, "rpc_request")
    timeout = _timeout_seconds()
    mailboxes, link = sidecar().mailboxes, sidecar().link
    with sidecar().poll_slot() as taken:
        if not taken:  # before publishing: no application answers a request that then is not waited for
            return _polls_full()
        request_id = mailboxes.next_request_id()
        mailboxes.expect_rpc_reply(device.id, request_id)
        published = link is not None and link.publish_json(device.id, ("rpc", "request", request_id),
                                                           rpc_request_message(rpc.method, rpc.params))
        # Unpublished, no application can answer: the request times out at once instead of holding a thread.
        reply = mailboxes.wait_for_rpc_reply(device.id, request_id, timeout if published else 0)
    if reply is None:
        return _empty(408)
    metrics.message(gm.OUT, "rpc_reply")
    return _json_body(reply)


# --- claiming and provisioning ------------------------------------------------------------------

@_device_route("POST", "/claim")
def claim_device(device: Device) -> Response:
    """Claiming is out of scope; accepted as the MQTT device API accepts it, when well formed."""
    body = _body_within_limit()
    if body.strip() and not isinstance(_valid(parse_json(body, max_bytes=_payload_limit())), dict):
        abort(_error(400, "Claiming info must be a JSON object"))
    metrics.message(gm.IN, "claim")
    return _empty(200)


@device_api.post("/provision", **_NO_REDIRECTS)
def provision_device() -> Response:
    """200 whatever the outcome: the status is in the body (SPEC §4.1)."""
    answer = sidecar().write(device_requests.provision, _body_within_limit(), max_bytes=_payload_limit(),
                             transport=metrics.transport(), remote_address=request.remote_addr)
    metrics.provisioning(*answer.metric_labels)
    if answer.refused is not None:
        abort(_error(400, answer.why_refused))
    if answer.succeeded:
        sidecar().publish_event(answer.result.device_id, device_requests.PROVISIONED_EVENT)
    return jsonify(answer.result.to_json())
