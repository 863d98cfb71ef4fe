"""The HTTP device API, `/api/v1` (SPEC §4.1, §5).

A transport like the broker plugin: the same domain calls, the same application-topic JSON, so
an application cannot tell an HTTP device's data from an MQTT device's. Statuses are
ThingsBoard's, except that a malformed body is 400 with a JSON error rather than its 500
(DESIGN.md, "Where we deliberately differ").

Order of checks, as in ThingsBoard: the payload size (its servlet filter runs before anything
else), then the token (401 with an empty body, whatever the body holds), then the body.
"""
from __future__ import annotations

import re

from flask import Blueprint, Response, abort, g, jsonify, request

from gatehouse.application_namespace import (
    attributes_message,
    device_topic,
    rpc_request_message,
    telemetry_message,
)
from gatehouse.errors import NotFoundError
from gatehouse.models import Device
from gatehouse.payloads import (
    PayloadError,
    TelemetryRecord,
    attribute_request_from_keys,
    parse_attributes,
    parse_json,
    parse_rpc_request,
    parse_telemetry,
)
from gatehouse.provisioning import (
    ProvisionRequest,
    ProvisionRequestError,
    ProvisionStatus,
)
from gatehouse.registry import DeviceData, Registry
from gatehouse.store import now_ms

from .context import sidecar
from .errors import error_response

device_api = Blueprint("device_api", __name__, url_prefix="/api/v1")

# ThingsBoard's transport.http.max_payload_size patterns: /api/v1/*/rpc/** has the smaller limit.
_RPC_PATH = re.compile(r"/api/v1/[^/]+/rpc(?:/.*)?", re.DOTALL)
_REQUEST_ID = re.compile(r"[0-9]{1,9}")  # what the application namespace's topics carry
_TIMEOUT_MS = re.compile(r"[0-9]{1,18}")
_READ_CHUNK = 1 << 20
PAYLOAD_TOO_LARGE = "Payload size exceeds the limit"
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
    g.payload_limit = limit = (settings.max_rpc_payload_size if _RPC_PATH.fullmatch(request.path)
                               else settings.max_payload_size)
    # Before the token check, as ThingsBoard's filter: nothing is looked up for such a request.
    content_length = request.content_length
    if content_length is not None and content_length > limit:
        return _error(413, PAYLOAD_TOO_LARGE)
    return None


def _device_or_401(token: str) -> Device:
    device = sidecar().device_for_token(token)
    if device is None:
        abort(_empty(401))  # ThingsBoard's 401 has no body
    return device


def _store(data: DeviceData, topic: str, message) -> None:
    try:
        sidecar().store_device_data(data, topic, message)
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

@device_api.post("/<token>/telemetry", **_NO_REDIRECTS)
def post_telemetry(token: str) -> Response:
    device = _device_or_401(token)
    records = _valid(parse_telemetry(_body_within_limit(), max_bytes=_payload_limit()))
    stamp = now_ms()  # one server time per request, for the stored and the published copy
    records = [TelemetryRecord(stamp if r.ts is None else r.ts, r.values) for r in records]
    _store(DeviceData(device.id, telemetry=tuple(records)), "telemetry", telemetry_message(records))
    return _empty(200)


@device_api.post("/<token>/attributes", **_NO_REDIRECTS)
def post_attributes(token: str) -> Response:
    device = _device_or_401(token)
    entries = _valid(parse_attributes(_body_within_limit(), max_bytes=_payload_limit()))
    _store(DeviceData(device.id, attributes=entries), "attributes", attributes_message(entries))
    return _empty(200)


@device_api.get("/<token>/attributes", **_NO_REDIRECTS)
def get_attributes(token: str) -> Response:
    device = _device_or_401(token)
    wanted = attribute_request_from_keys(_key_list_param("clientKeys"), _key_list_param("sharedKeys"))
    return jsonify(sidecar().registry.device_attributes(device.id, wanted.client_keys, wanted.shared_keys))


@device_api.get("/<token>/attributes/updates", **_NO_REDIRECTS)
def poll_attribute_updates(token: str) -> Response:
    device = _device_or_401(token)
    update = sidecar().mailboxes.wait_for_attribute_update(device.id, _timeout_seconds())
    return _empty(408) if update is None else jsonify(update)


# --- RPC ----------------------------------------------------------------------------------------

@device_api.get("/<token>/rpc", **_NO_REDIRECTS)
def poll_rpc_call(token: str) -> Response:
    device = _device_or_401(token)
    call = sidecar().mailboxes.take_rpc_call(device.id, _timeout_seconds())
    return _empty(408) if call is None else jsonify(call)


@device_api.post("/<token>/rpc/<request_id>", **_NO_REDIRECTS)
def reply_to_rpc_call(token: str, request_id: str) -> Response:
    device = _device_or_401(token)
    if not _REQUEST_ID.fullmatch(request_id):
        abort(_error(400, "RPC request id must be a number of at most 9 digits"))
    body = _body_within_limit()
    if not body:
        abort(_error(400, "Required request body is missing"))
    # Any reply goes to the application as it is, as the MQTT device API does.
    link = sidecar().link
    if link is not None:
        link.publish(device_topic(device.id, "rpc", "response", int(request_id)), body)
    return _empty(200)


@device_api.post("/<token>/rpc", **_NO_REDIRECTS)
def call_server(token: str) -> Response:
    """Client-side RPC: an application answers on .../rpc/reply/{id} while the request waits,
    up to `?timeout=` as for the long polls (ThingsBoard always waits its default)."""
    device = _device_or_401(token)
    rpc = _valid(parse_rpc_request(_body_within_limit(), max_bytes=_payload_limit()))
    timeout = _timeout_seconds()
    mailboxes, link = sidecar().mailboxes, sidecar().link
    request_id = mailboxes.next_request_id()
    mailboxes.expect_rpc_reply(device.id, request_id)
    published = link is not None and link.publish_json(device.id, ("rpc", "request", request_id),
                                                       rpc_request_message(rpc.method, rpc.params))
    # Unpublished, no application can answer: the request times out at once instead of holding a thread.
    reply = mailboxes.wait_for_rpc_reply(device.id, request_id, timeout if published else 0)
    return _empty(408) if reply is None else _json_body(reply)


# --- claiming and provisioning ------------------------------------------------------------------

@device_api.post("/<token>/claim", **_NO_REDIRECTS)
def claim_device(token: str) -> Response:
    """Claiming is out of scope; accepted as the MQTT device API accepts it, when well formed."""
    _device_or_401(token)
    body = _body_within_limit()
    if body.strip() and not isinstance(_valid(parse_json(body, max_bytes=_payload_limit())), dict):
        abort(_error(400, "Claiming info must be a JSON object"))
    return _empty(200)


@device_api.post("/provision", **_NO_REDIRECTS)
def provision_device() -> Response:
    """200 whatever the outcome: the status is in the body (SPEC §4.1)."""
    parsed = _valid(parse_json(_body_within_limit(), max_bytes=_payload_limit()))
    try:
        result = sidecar().write(Registry.provision, ProvisionRequest.from_json(parsed), transport="HTTP",
                                              remote_address=request.remote_addr)
    except ProvisionRequestError as e:
        abort(_error(400, str(e)))
    if result.status is ProvisionStatus.SUCCESS:
        sidecar().publish_event(result.device_id, "provisioned")
    return jsonify(result.to_json())
