"""Reading the admin API's requests: ThingsBoard's JSON bodies, ids and query parameters, turned
into the arguments of the registry's methods. Anything of the wrong shape is a 400 with a
message naming the field, before the registry is asked anything, so nothing is half-stored.
Every field the OpenAPI document declares is type-checked here; unknown fields are ignored, as
ThingsBoard's Jackson mapping ignores them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from flask import request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from gatehouse.credentials import NewCredentials, X509Certificate, credentials_from_json
from gatehouse.errors import ValidationError
from gatehouse.models import AttributeScope, CredentialsType, ProvisionType
from gatehouse.mqtt_topic_settings import MqttTopicSettings, check_payload_type
from gatehouse.registry import HISTORY_LIMIT

JAVA_INT_MAX = 2**31 - 1  # ThingsBoard's page parameters are Java ints
JAVA_LONG_MIN, JAVA_LONG_MAX = -(2**63), 2**63 - 1  # its timestamps are Java longs (SQLite's integers too)
TENANT_DEVICES_PAGE_SIZE = 10  # GET /api/tenant/devices without deviceName or pageSize
MAX_BODY_BYTES = 52_428_800  # bulk import files included (the HTTP device API's limit too)
MAX_PUBLIC_BODY_BYTES = 65_536  # login and token refresh, which anyone may call
MAX_ATTRIBUTES_BYTES = 65_536  # what one MQTT message to a device may carry
SORT_ORDERS = {"ASC": False, "DESC": True}
DEVICE_SORT = {"createdTime": "created_time", "name": "name", "label": "label", "deviceProfileName": "profile_name",
               "type": "profile_name"}
PROFILE_SORT = {"createdTime": "created_time", "name": "name", "description": "description"}
PROFILE_TYPE = "DEFAULT"  # ThingsBoard's only profile type
TRANSPORT_TYPES = ("DEFAULT", "MQTT")


def body_bytes(limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, read only up to `limit` bytes (413 beyond: ThingsBoard's message)."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge("Payload size exceeds the limit")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge("Payload size exceeds the limit")
    return data


def json_body(limit: int = MAX_BODY_BYTES) -> object:
    """The request body as JSON, whatever its Content-Type; 400 if it is not JSON or holds text
    that cannot be stored (an unpaired surrogate)."""
    try:
        body = json.loads(body_bytes(limit))
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        raise BadRequest("Invalid request body: expected JSON") from None
    return body


def json_object(limit: int = MAX_BODY_BYTES) -> dict:
    body = json_body(limit)
    if not isinstance(body, dict):
        raise BadRequest("Invalid request body: expected a JSON object")
    return body


_KINDS = {str: "a string", bool: "a boolean", dict: "an object"}


def _typed(obj: dict, field: str, kind: type, *, where: str = "") -> object:
    """obj[field] if it is null, absent or of `kind` (str, bool or dict); 400 otherwise."""
    value = obj.get(field)
    if value is not None and not isinstance(value, kind):
        raise BadRequest(f"{where}{field} must be {_KINDS[kind]}")
    return value


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def uuid_param(value: str) -> str:
    """An id from a path or a body (8-4-4-4-12 hex digits), in lower case; 400 otherwise."""
    if not _UUID.fullmatch(value):
        raise BadRequest(f"Invalid UUID string: {value[:64]}")
    return value.lower()


def entity_id(obj: dict, field: str, entity_type: str | None) -> str | None:
    """ThingsBoard's id objects, {"id": "<uuid>", "entityType": "DEVICE"}; None if absent."""
    value = _typed(obj, field, dict)
    if value is None:
        return None
    if not isinstance(value.get("id"), str):
        raise BadRequest(f"{field}.id must be a UUID string")
    kind = _typed(value, "entityType", str, where=f"{field}.")
    if entity_type is not None and kind is not None and kind != entity_type:
        raise BadRequest(f"{field}.entityType must be {entity_type}")
    return uuid_param(value["id"])


# --- query parameters ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Page:
    page: int
    page_size: int
    text_search: str | None
    order_by: str
    descending: bool

    @property
    def offset(self) -> int:
        return self.page * self.page_size

    def answer(self, data: list, total: int) -> dict:
        """ThingsBoard's PageData."""
        total_pages = -(-total // self.page_size)
        return {"data": data, "totalPages": total_pages, "totalElements": total, "hasNext": self.page + 1 < total_pages}


def _int_param(name: str, minimum: int, default: int | None = None) -> int:
    text = request.args.get(name)
    if text is None:
        if default is not None:
            return default
        raise BadRequest(f"Required request parameter '{name}' is not present")
    try:
        value = int(text.strip())
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not minimum <= value <= JAVA_INT_MAX:
        raise BadRequest(f"{name} must be between {minimum} and {JAVA_INT_MAX}")
    return value


def page_params(sort_properties: dict[str, str], *, default_page_size: int | None = None) -> Page:
    """pageSize, page, textSearch, sortProperty, sortOrder (ThingsBoard's PageLink); pageSize
    and page are required unless a default page size is given (page 0 then)."""
    page_size = _int_param("pageSize", 1, default_page_size)
    page = _int_param("page", 0, None if default_page_size is None else 0)
    sort_property = request.args.get("sortProperty", "name")
    if sort_property not in sort_properties:
        raise BadRequest(f"Unsupported sortProperty (supported: {', '.join(sort_properties)})")
    sort_order = request.args.get("sortOrder", "ASC")
    if sort_order not in SORT_ORDERS:
        raise BadRequest("sortOrder must be ASC or DESC")
    return Page(page, page_size, request.args.get("textSearch") or None, sort_properties[sort_property],
                SORT_ORDERS[sort_order])


def bool_param(name: str) -> bool:
    """An optional boolean query parameter, `true` or `false` in any case, as Spring reads it
    (tb-rest-client sends Python's `True`); absent: false."""
    text = request.args.get(name)
    if text is None or text.lower() == "false":
        return False
    if text.lower() == "true":
        return True
    raise BadRequest(f"{name} must be true or false")


def key_list(required: bool = False) -> list[str] | None:
    """`keys=a,b,c`; None when absent or empty (all keys), unless `required`."""
    keys = [key.strip() for key in (request.args.get("keys") or "").split(",") if key.strip()]
    if not keys and required:
        raise BadRequest("Empty keys: the keys parameter is required")
    return keys or None


@dataclass(frozen=True)
class HistoryQuery:
    start_ts: int
    end_ts: int  # excluded, as in ThingsBoard: start_ts <= ts < end_ts
    limit: int  # per key
    descending: bool


def _long_param(name: str) -> int | None:
    text = request.args.get(name)
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise BadRequest(f"{name} must be an integer (ms since the epoch)") from None
    if not JAVA_LONG_MIN <= value <= JAVA_LONG_MAX:
        raise BadRequest(f"{name} must be between {JAVA_LONG_MIN} and {JAVA_LONG_MAX}")
    return value


def history_query(*, required: bool) -> HistoryQuery | None:
    """ThingsBoard's time series query: startTs and endTs (ms), limit (per key, default 100),
    orderBy (ASC or DESC, default DESC) and agg (NONE only: no aggregation is implemented).
    Each is checked whether or not it is used, so a bad one is never silently ignored. None
    when neither startTs nor endTs is given and they are not `required`: the latest values
    are asked for. One of the two without the other is a 400 where ThingsBoard would quietly
    answer latest values instead."""
    limit = _int_param("limit", 1, HISTORY_LIMIT)
    order = request.args.get("orderBy", "DESC")
    if order not in SORT_ORDERS:
        raise BadRequest("orderBy must be ASC or DESC")
    aggregation = request.args.get("agg", "NONE")
    if aggregation != "NONE":
        raise BadRequest(f"agg {aggregation[:32]!r} is not supported: Gatehouse answers raw points only (agg=NONE)")
    start, end = _long_param("startTs"), _long_param("endTs")
    if start is None and end is None and not required:
        return None
    if start is None or end is None:
        raise BadRequest("startTs and endTs must both be given (ms since the epoch)")
    if start > end:
        raise BadRequest("startTs must not be after endTs")
    return HistoryQuery(start, end, limit, SORT_ORDERS[order])


def attribute_scope(scope: str, *, writable: bool = False) -> AttributeScope:
    """SERVER_SCOPE, SHARED_SCOPE or CLIENT_SCOPE; only the first two are written over REST."""
    try:
        parsed = AttributeScope(scope)
    except ValueError:
        parsed = None
    if parsed is None or (writable and parsed is AttributeScope.CLIENT):
        raise BadRequest(f"Invalid attribute scope: {scope[:64]}")
    return parsed


# --- device profiles ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileFields:
    id: str | None
    name: str | None
    description: str | None
    strategy: ProvisionType
    key: str | None
    secret: str | None
    ca_certificate_pem: str | None
    cn_regex: str | None
    allow_create: bool | None
    mqtt_topics: MqttTopicSettings | None


def _provision_type(value: object, field: str) -> ProvisionType | None:
    if value is None:
        return None
    try:
        return ProvisionType(value)
    except ValueError:
        raise BadRequest(f"{field} must be one of {', '.join(t.value for t in ProvisionType)}") from None


def profile_fields(body: dict) -> ProfileFields:
    """A DeviceProfile (SPEC §7.1): the key at the top, the secret (or an X.509 chain profile's
    CA certificate) in profileData.provisionConfiguration; both provision types, where given,
    must agree, and so must transportType and profileData.transportConfiguration.type. `default`
    is read-only here (POST /api/deviceProfile/{id}/default moves it)."""
    profile_id = entity_id(body, "id", "DEVICE_PROFILE")
    for field in ("name", "description", "provisionDeviceKey", "image"):
        _typed(body, field, str)
    _typed(body, "default", bool)
    if _typed(body, "type", str) not in (None, PROFILE_TYPE):
        raise BadRequest(f"type {str(body['type'])[:32]!r} is not supported: Gatehouse profiles are DEFAULT")
    data = _typed(body, "profileData", dict) or {}
    mqtt_topics = _mqtt_topics(body, data)
    config = _typed(data, "provisionConfiguration", dict, where="profileData.") or {}
    where = "profileData.provisionConfiguration."
    for field in ("type", "provisionDeviceSecret", "certificateRegExPattern"):
        _typed(config, field, str, where=where)
    _typed(config, "allowCreateNewDevicesByX509Certificate", bool, where=where)
    top = _provision_type(body.get("provisionType"), "provisionType")
    inner = _provision_type(config.get("type"), where + "type")
    if top is not None and inner is not None and top is not inner:
        raise BadRequest("provisionType and profileData.provisionConfiguration.type must agree")
    strategy = top or inner or ProvisionType.DISABLED
    key, secret, ca_pem = body.get("provisionDeviceKey"), config.get("provisionDeviceSecret"), None
    if strategy is ProvisionType.X509_CERTIFICATE_CHAIN:
        key, secret, ca_pem = None, None, secret  # the key is the CA's hash, computed on save
    elif strategy is ProvisionType.DISABLED:
        key = secret = None  # ThingsBoard keeps them, unused; a DISABLED Gatehouse profile has none
    return ProfileFields(profile_id, body.get("name"), body.get("description"), strategy, key or None, secret or None,
                         ca_pem, config.get("certificateRegExPattern"), config.get("allowCreateNewDevicesByX509Certificate"),
                         mqtt_topics)


def _mqtt_topics(body: dict, data: dict) -> MqttTopicSettings | None:
    """The profile's transport: DEFAULT (None) or MQTT with its topics (SPEC §2.8)."""
    config = _typed(data, "transportConfiguration", dict, where="profileData.") or {}
    where = "profileData.transportConfiguration."
    for field in ("deviceTelemetryTopic", "deviceAttributesTopic", "deviceAttributesSubscribeTopic"):
        _typed(config, field, str, where=where)
    for field in ("sparkplug", "sendAckOnValidationException"):
        _typed(config, field, bool, where=where)
    payload = _typed(config, "transportPayloadTypeConfiguration", dict, where=where) or {}
    top, inner = _typed(body, "transportType", str), _typed(config, "type", str, where=where)
    for field, value in (("transportType", top), ("profileData.transportConfiguration.type", inner)):
        if value is not None and value not in TRANSPORT_TYPES:
            raise BadRequest(f"{field} {value[:32]!r} is not supported: Gatehouse profiles are DEFAULT or MQTT")
    if top is not None and inner is not None and top != inner:
        raise BadRequest("transportType and profileData.transportConfiguration.type must agree")
    try:
        # Checked for a DEFAULT transport too: the document allows only JSON whatever the type.
        check_payload_type(_typed(payload, "transportPayloadType", str,
                                  where=where + "transportPayloadTypeConfiguration."))
        return None if (top or inner or "DEFAULT") == "DEFAULT" else MqttTopicSettings.from_json(config)
    except ValidationError as e:  # a 400 like the other shape errors, before anything is stored
        raise BadRequest(str(e)) from None


# --- devices and credentials -------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceFields:
    id: str | None
    name: str | None
    profile_id: str | None
    profile_type: str | None
    label: str | None
    additional_info: dict | None


def device_fields(body: dict) -> DeviceFields:
    """A Device (SPEC §7.2): `deviceProfileId`, else the profile named `type`, else the default."""
    for field in ("name", "type", "label"):
        _typed(body, field, str)
    return DeviceFields(entity_id(body, "id", "DEVICE"), body.get("name"), entity_id(body, "deviceProfileId",
                        "DEVICE_PROFILE"), body.get("type"), body.get("label"), _typed(body, "additionalInfo", dict))


def new_credentials(body: dict) -> NewCredentials:
    """DeviceCredentials in ThingsBoard's shape (SPEC §7.3): MQTT_BASIC's value is a string of
    JSON, X.509's a PEM certificate (or its Base64 body); credentialsId is derived, except a
    token's."""
    where = "credentials."
    kind = _typed(body, "credentialsType", str, where=where)
    credentials_id = _typed(body, "credentialsId", str, where=where)
    value = _typed(body, "credentialsValue", str, where=where)
    if kind is None:
        raise BadRequest("credentials.credentialsType must be specified")
    if kind == CredentialsType.X509_CERTIFICATE.value and value:
        return X509Certificate.parse(value)  # a CredentialsError is a 400 (admin_api)
    return credentials_from_json(kind, credentials_id, value)


def device_credentials_update(body: dict) -> tuple[str, str | None, NewCredentials]:
    """POST /api/device/credentials: (device id, credentials record id, new credentials)."""
    device_id = entity_id(body, "deviceId", "DEVICE")
    if device_id is None:
        raise BadRequest("deviceId must be specified")
    record = _typed(body, "id", dict)
    record_id = None
    if record is not None:
        if not isinstance(record.get("id"), str):
            raise BadRequest("id.id must be a UUID string")
        record_id = uuid_param(record["id"])
    return device_id, record_id, new_credentials(body)


def bulk_import_request(body: dict) -> tuple[str, object]:
    """{"file": CSV text, "mapping": {...}}; the mapping itself is read by the bulk import."""
    text = _typed(body, "file", str)
    if text is None or not isinstance(body.get("mapping"), dict):
        raise BadRequest("file (CSV text) and mapping (an object) must be specified")
    return text, body["mapping"]
