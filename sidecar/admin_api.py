"""The admin REST API, `/api` (SPEC §8): ThingsBoard's paths and JSON for logins, device
profiles, devices, their credentials, bulk import, attributes and telemetry (latest values and
history), so scripts written for ThingsBoard (tb-rest-client among them) work unchanged.
GET /api/openapi.json describes it.

A transport like the others: admin_payloads reads the requests, the registry decides, and its
refusals become ThingsBoard's error JSON (ValidationError 400, NotFoundError 404). Every route
but login, token refresh and the OpenAPI document needs an access token (admin_auth).
"""
from __future__ import annotations

import json
from decimal import Decimal

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.routing import BaseConverter

from gatehouse import bulk_import
from gatehouse.certificates import CertificateError
from gatehouse.credentials import AccessToken
from gatehouse.errors import NotFoundError, ValidationError
from gatehouse.models import AttributeScope
from gatehouse.payloads import PayloadError, parse_attributes
from gatehouse.registry import DEFAULT_CN_REGEX

from . import admin_auth, openapi
from .admin_auth import public
from .admin_payloads import (
    DEVICE_SORT,
    MAX_ATTRIBUTES_BYTES,
    MAX_PUBLIC_BODY_BYTES,
    PROFILE_SORT,
    TENANT_DEVICES_PAGE_SIZE,
    attribute_scope,
    body_bytes,
    bool_param,
    bulk_import_request,
    device_credentials_update,
    device_fields,
    history_query,
    json_object,
    key_list,
    new_credentials,
    page_params,
    profile_fields,
    uuid_param,
)
from .context import sidecar
from .errors import error_response

admin_api = Blueprint("admin_api", __name__, url_prefix="/api")
admin_api.before_request(admin_auth.login_required)


class DeviceIdSegment(BaseConverter):
    """A device id in /api/device/<id>...: any segment but the names of the sibling routes
    /api/device/credentials and /api/device/bulk_import, so that those paths answer (and
    advertise in Allow) their own methods only. What is not a UUID is a 400 in the view."""

    regex = r"(?!(?:credentials|bulk_import)$)[^/]+"


# Converters must exist before the rules that use them are added: this runs first.
admin_api.record_once(lambda state: state.app.url_map.converters.setdefault("device_id", DeviceIdSegment))
# ThingsBoard's order of attribute scopes in answers that span them all.
ALL_SCOPES = (AttributeScope.CLIENT, AttributeScope.SERVER, AttributeScope.SHARED)


def _route(rule: str, **options):
    # No redirect to a path with merged slashes: an API has nowhere to redirect to.
    return admin_api.route(rule, merge_slashes=False, **options)


def _ok() -> Response:
    return Response(status=200)


@admin_api.errorhandler(NotFoundError)
def _not_found(error: NotFoundError) -> Response:
    return error_response(404, str(error))


@admin_api.errorhandler(ValidationError)
@admin_api.errorhandler(CertificateError)
def _invalid(error: Exception) -> Response:
    return error_response(400, str(error))


def _registry():
    return sidecar().registry


# --- logins -------------------------------------------------------------------------------------

def _token_pair(username: str) -> Response:
    settings = sidecar().settings
    return jsonify(admin_auth.issue_tokens(admin_auth.signing_key(), username, expiry_seconds=settings.jwt_expiry_seconds,
                                           refresh_expiry_seconds=settings.jwt_refresh_expiry_seconds))


@_route("/auth/login", methods=["POST"])
@public
def login() -> Response:
    body = json_object(MAX_PUBLIC_BODY_BYTES)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return error_response(400, "username and password must be strings")
    outcome = admin_auth.check_login(username, password)
    if outcome is admin_auth.AdminLogin.BLOCKED:
        response = error_response(429, admin_auth.TOO_MANY_FAILED_LOGINS)
        response.headers["Retry-After"] = str(admin_auth.retry_after_seconds())
        return response
    if outcome is admin_auth.AdminLogin.REFUSED:
        return error_response(401, "Invalid username or password", admin_auth.AUTHENTICATION)
    return _token_pair(username)


@_route("/auth/token", methods=["POST"])
@public
def refresh_token() -> Response:
    token = json_object(MAX_PUBLIC_BODY_BYTES).get("refreshToken")
    if not isinstance(token, str):
        return error_response(400, "refreshToken must be a string")
    try:
        claims = admin_auth.verify(admin_auth.signing_key(), token, admin_auth.REFRESH_TOKEN)
    except admin_auth.TokenError as e:
        return error_response(401, e.message, e.error_code)
    if not _registry().admin_exists(claims["sub"]):
        return error_response(401, "Authentication failed", admin_auth.AUTHENTICATION)
    return _token_pair(claims["sub"])


@_route("/auth/user")
def auth_user() -> Response:
    """The logged-in administrator as ThingsBoard's User."""
    username = g.admin["sub"]
    return jsonify({
        "id": {"entityType": "USER", "id": admin_auth.user_id(username)},
        "tenantId": {"entityType": "TENANT", "id": admin_auth.TENANT_ID},
        "customerId": {"entityType": "CUSTOMER", "id": admin_auth.NULL_UUID},
        "email": username, "name": username, "authority": admin_auth.TENANT_ADMIN,
        "firstName": None, "lastName": None, "additionalInfo": {},
    })


@_route("/openapi.json")
@public
def openapi_document() -> Response:
    return jsonify(openapi.document())


# --- device profiles ----------------------------------------------------------------------------

@_route("/deviceProfile", methods=["POST"])
def save_device_profile() -> Response:
    """Create, or with an `id` update in place; a duplicate key or name is 400."""
    fields = profile_fields(json_object())
    options = {"key": fields.key, "secret": fields.secret, "ca_certificate_pem": fields.ca_certificate_pem,
               "cn_regex": fields.cn_regex or DEFAULT_CN_REGEX,
               "allow_create": True if fields.allow_create is None else fields.allow_create,
               "description": fields.description, "mqtt_topics": fields.mqtt_topics}
    if fields.id is None:
        profile = _registry().create_profile(fields.name, fields.strategy, **options)
    else:
        profile = _registry().update_profile(fields.id, fields.name, fields.strategy, **options)
    return jsonify(profile.to_json())


@_route("/deviceProfile/<deviceProfileId>")
def get_device_profile(deviceProfileId: str) -> Response:
    return jsonify(_registry().get_profile(uuid_param(deviceProfileId), by_id=True).to_json())


@_route("/deviceProfile/<deviceProfileId>", methods=["DELETE"])
def delete_device_profile(deviceProfileId: str) -> Response:
    """The default profile and profiles that devices use cannot be deleted (400)."""
    _registry().delete_profile(uuid_param(deviceProfileId), by_id=True)
    return _ok()


@_route("/deviceProfile/<deviceProfileId>/default", methods=["POST"])
def set_default_device_profile(deviceProfileId: str) -> Response:
    return jsonify(_registry().set_default_profile(uuid_param(deviceProfileId), by_id=True).to_json())


def _profile_page():
    page = page_params(PROFILE_SORT)
    registry = _registry()
    profiles = registry.list_profiles(offset=page.offset, limit=page.page_size, name_contains=page.text_search,
                                      order_by=page.order_by, descending=page.descending)
    return page, profiles, registry.count_profiles(name_contains=page.text_search)


@_route("/deviceProfiles")
def get_device_profiles() -> Response:
    page, profiles, total = _profile_page()
    return jsonify(page.answer([p.to_json() for p in profiles], total))


@_route("/deviceProfileInfos")
def get_device_profile_infos() -> Response:
    page, profiles, total = _profile_page()
    infos = [{"id": p["id"], "tenantId": {"entityType": "TENANT", "id": admin_auth.TENANT_ID}, "name": p["name"],
              "image": None, "defaultDashboardId": None, "type": p["type"], "transportType": p["transportType"]}
             for p in (profile.to_json() for profile in profiles)]
    return jsonify(page.answer(infos, total))


# --- devices and credentials --------------------------------------------------------------------

@_route("/device", methods=["POST"])
def save_device() -> Response:
    """Create (with `?accessToken=` as its token, else a generated one) or, with an `id`,
    update in place (credentials unchanged); a duplicate name is 400."""
    fields = device_fields(json_object())
    token = request.args.get("accessToken")
    credentials = AccessToken(token) if token and fields.id is None else None
    return jsonify(_save_device(fields, credentials).to_json())


def _save_device(fields, credentials):
    return _registry().save_device(fields.name, device_id=fields.id, profile_id=fields.profile_id,
                                   profile_type=fields.profile_type, label=fields.label,
                                   additional_info=fields.additional_info, credentials=credentials)


@_route("/device-with-credentials", methods=["POST"])
def save_device_with_credentials() -> Response:
    body = json_object()
    device, credentials = body.get("device"), body.get("credentials")
    if not isinstance(device, dict) or not isinstance(credentials, dict):
        return error_response(400, "device and credentials must be objects")
    fields = device_fields(device)
    return jsonify(_save_device(fields, new_credentials(credentials)).to_json())


@_route("/device/<device_id:deviceId>")
def get_device(deviceId: str) -> Response:
    return jsonify(_registry().get_device(uuid_param(deviceId), by_id=True).to_json())


@_route("/device/<device_id:deviceId>", methods=["DELETE"])
def delete_device(deviceId: str) -> Response:
    """Its credentials and data go too; its live sessions end."""
    _registry().delete_device(uuid_param(deviceId), by_id=True)
    return _ok()


@_route("/device/<device_id:deviceId>/credentials")
def get_device_credentials(deviceId: str) -> Response:
    return jsonify(_registry().get_credentials(uuid_param(deviceId), by_id=True).to_json())


@_route("/device/credentials", methods=["POST"])
def update_device_credentials() -> Response:
    """The body carries the existing record's `id` and the `deviceId` (SPEC §8); the broker ends
    the device's sessions once it sees the new credentials version."""
    device_id, record_id, credentials = device_credentials_update(json_object())
    return jsonify(_registry().update_credentials(device_id, record_id, credentials).to_json())


def _device_by_name() -> Response:
    found = _registry().find_device_by_name(request.args["deviceName"])
    if found is None:
        return error_response(404, "Requested item wasn't found!")
    return jsonify(found.to_json())


@_route("/tenant/devices")
def get_tenant_devices() -> Response:
    """`?deviceName=` one device by name, else a page (`pageSize`, `page`, `textSearch`, `type`;
    without pageSize and page, the first 10)."""
    if "deviceName" in request.args:
        return _device_by_name()
    page = page_params(DEVICE_SORT, default_page_size=TENANT_DEVICES_PAGE_SIZE)
    profile_name = request.args.get("type") or None
    registry = _registry()
    devices = registry.list_devices(offset=page.offset, limit=page.page_size, name_contains=page.text_search,
                                    profile_name=profile_name, order_by=page.order_by, descending=page.descending)
    total = registry.count_devices(name_contains=page.text_search, profile_name=profile_name)
    return jsonify(page.answer([d.to_json() for d in devices], total))


@_route("/tenant/device")
def get_tenant_device() -> Response:
    """tb-rest-client 4.x asks for a device by name here."""
    if "deviceName" not in request.args:
        return error_response(400, "Required request parameter 'deviceName' is not present")
    return _device_by_name()


@_route("/device/bulk_import", methods=["POST"])
def bulk_import_devices() -> Response:
    """The CLI's import (gatehouse.bulk_import): {"created", "updated", "errors", "errorsList"}."""
    text, mapping = bulk_import_request(json_object())
    result = bulk_import.import_devices(_registry(), text, bulk_import.BulkImportMapping.from_json(mapping),
                                        shared_attributes_written=sidecar().shared_attributes_written)
    return jsonify(result.to_json())


# --- attributes and telemetry --------------------------------------------------------------------

TELEMETRY = "/plugins/telemetry"


def _device_id(deviceId: str) -> str:
    """The id of an existing device (404 otherwise)."""
    return _registry().get_device(uuid_param(deviceId), by_id=True).id


@_route(f"{TELEMETRY}/DEVICE/<deviceId>/values/attributes")
def get_attributes(deviceId: str) -> Response:
    device_id, keys = _device_id(deviceId), key_list()
    return jsonify([item for scope in ALL_SCOPES for item in _registry().attribute_data(device_id, scope, keys)])


@_route(f"{TELEMETRY}/DEVICE/<deviceId>/values/attributes/<scope>")
def get_attributes_by_scope(deviceId: str, scope: str) -> Response:
    device_id, chosen = _device_id(deviceId), attribute_scope(scope)
    return jsonify(_registry().attribute_data(device_id, chosen, key_list()))


def _save_attributes(deviceId: str, scope: str) -> Response:
    device_id, chosen = _device_id(deviceId), attribute_scope(scope, writable=True)
    # No more than one MQTT message carries: shared values must reach MQTT devices whole.
    entries = parse_attributes(body_bytes(MAX_ATTRIBUTES_BYTES), max_bytes=MAX_ATTRIBUTES_BYTES)
    if isinstance(entries, PayloadError):
        return error_response(400, entries.message)
    if not entries:
        return error_response(400, "No attributes data found in request body!")
    if chosen is AttributeScope.SHARED:
        sidecar().change_shared_attributes(device_id, entries)  # reaches the device wherever it is connected
    else:
        _registry().save_attributes(device_id, chosen, entries)
    return _ok()


@_route(f"{TELEMETRY}/DEVICE/<deviceId>/attributes/<scope>", methods=["POST"])
def save_entity_attributes_v2(deviceId: str, scope: str) -> Response:
    return _save_attributes(deviceId, scope)


@_route(f"{TELEMETRY}/DEVICE/<deviceId>/<scope>", methods=["POST"])
def save_entity_attributes_v1(deviceId: str, scope: str) -> Response:
    return _save_attributes(deviceId, scope)


@_route(f"{TELEMETRY}/<deviceId>/<scope>", methods=["POST"])
def save_device_attributes(deviceId: str, scope: str) -> Response:
    return _save_attributes(deviceId, scope)


def _delete_attributes(deviceId: str, scope: str) -> Response:
    device_id, chosen, keys = _device_id(deviceId), attribute_scope(scope), key_list(required=True)
    if chosen is AttributeScope.SHARED:
        sidecar().change_shared_attributes(device_id, deleted=keys)
    else:
        _registry().delete_attributes(device_id, chosen, keys)
    return _ok()


@_route(f"{TELEMETRY}/DEVICE/<deviceId>/<scope>", methods=["DELETE"])
def delete_entity_attributes(deviceId: str, scope: str) -> Response:
    return _delete_attributes(deviceId, scope)


@_route(f"{TELEMETRY}/<deviceId>/<scope>", methods=["DELETE"])
def delete_device_attributes(deviceId: str, scope: str) -> Response:
    return _delete_attributes(deviceId, scope)


@_route(f"{TELEMETRY}/DEVICE/<deviceId>/values/timeseries")
def get_timeseries(deviceId: str) -> Response:
    """{"key": [{"ts", "value"}]}: the latest values, or with startTs and endTs the history in
    that range (ThingsBoard serves both on this path: getLatestTimeseries, getTimeseries).
    Values as text unless `useStrictDataTypes=true`, as in ThingsBoard."""
    device_id, strict = _device_id(deviceId), bool_param("useStrictDataTypes")
    query = history_query(required=False)
    if query is not None:
        return _history(device_id, query, strict)
    keys = key_list()
    latest = _registry().latest_telemetry(device_id)
    return jsonify({key: [_point(point, strict)] for key, point in latest.items() if keys is None or key in keys})


@_route(f"{TELEMETRY}/DEVICE/<deviceId>/values/timeseries/history")
def get_timeseries_history(deviceId: str) -> Response:
    """The same history query on ThingsBoard 4's own path for it, which tb-rest-client 4.x calls."""
    device_id, strict = _device_id(deviceId), bool_param("useStrictDataTypes")
    return _history(device_id, history_query(required=True), strict)


def _history(device_id: str, query, strict: bool) -> Response:
    """At most `limit` points per key (as ThingsBoard runs one query per key); keys without
    points in the range are left out."""
    history = _registry().telemetry_history(device_id, key_list(required=True), start_ts=query.start_ts,
                                            end_ts=query.end_ts, limit=query.limit, descending=query.descending)
    return jsonify({key: [_point(point, strict) for point in points] for key, points in history.items()})


def _point(point: dict, strict: bool) -> dict:
    return {"ts": point["ts"], "value": point["value"] if strict else _as_text(point["value"])}


def _as_text(value) -> str:
    """A value as ThingsBoard's KvEntry.getValueAsString writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _java_double(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _java_double(value: float) -> str:
    """Java's Double.toString: positional for 1e-3 <= |x| < 1e7, else d.dddE±n; the shortest
    digits that read back as the same double, which Python's repr also writes."""
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(value)
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits))
    power = exponent + len(text) - 1
    text = text.rstrip("0") or "0"
    return f"{'-' if sign else ''}{text[0]}.{text[1:] or '0'}E{power}"
