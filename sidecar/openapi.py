"""The admin API's OpenAPI 3.0 document, served at GET /api/openapi.json.

It describes exactly what admin_api and admin_payloads accept and answer, for API tools and
property-based testing (Schemathesis): request schemas declare the fields the API reads, with
the types it enforces (unknown fields are ignored, so objects stay open), and every operation
lists the statuses it can answer. tests/test_admin_api.py checks that each route is described
and that real answers match their schemas.
"""
from __future__ import annotations

import copy
import functools

from gatehouse.bulk_import import ColumnType
from gatehouse.models import CredentialsType, ProvisionType

from .admin_payloads import (
    DEVICE_SORT,
    JAVA_INT_MAX,
    JAVA_LONG_MAX,
    JAVA_LONG_MIN,
    MAX_ATTRIBUTES_BYTES,
    MAX_BODY_BYTES,
    MAX_PUBLIC_BODY_BYTES,
    PROFILE_SORT,
    TENANT_DEVICES_PAGE_SIZE,
    TRANSPORT_TYPES,
)

# Names as the registry takes them: something besides whitespace, and no NUL character.
NAME = {"type": "string", "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"}
UUID = {"type": "string", "format": "uuid", "pattern": "^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"}
SCOPES = ["CLIENT_SCOPE", "SERVER_SCOPE", "SHARED_SCOPE"]
WRITABLE_SCOPES = ["SERVER_SCOPE", "SHARED_SCOPE"]
PROVISION_TYPES = [t.value for t in ProvisionType]
CREDENTIALS_TYPES = [t.value for t in CredentialsType]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    schema = {**schema, "nullable": True}
    if "enum" in schema:
        schema["enum"] = [*schema["enum"], None]
    return schema


def _string(**extra) -> dict:
    return {"type": "string", **extra}


def _entity_id(entity_type: str) -> dict:
    return {"type": "object", "required": ["id", "entityType"], "properties": {
        "id": UUID, "entityType": {"type": "string", "enum": [entity_type]}}}


def _entity_id_input(entity_type: str) -> dict:
    return _nullable({"type": "object", "required": ["id"], "properties": {
        "id": UUID, "entityType": _nullable({"type": "string", "enum": [entity_type]})}})


def _page(item: str) -> dict:
    return {"type": "object", "required": ["data", "totalPages", "totalElements", "hasNext"], "properties": {
        "data": {"type": "array", "items": _ref(item)}, "totalPages": {"type": "integer", "minimum": 0},
        "totalElements": {"type": "integer", "minimum": 0}, "hasNext": {"type": "boolean"}}}


ANY = {}  # any JSON value

SCHEMAS = {
    "Error": {"type": "object", "required": ["status", "message", "errorCode", "timestamp"], "properties": {
        "status": {"type": "integer"}, "message": _string(), "errorCode": {"type": "integer"},
        "timestamp": {"type": "integer"}},
        "description": "ThingsBoard's error body. errorCode: 10 authentication, 11 token expired, "
                       "31 bad request, 32 not found."},
    "LoginRequest": {"type": "object", "required": ["username", "password"], "properties": {
        "username": _string(), "password": _string(format="password")}},
    "RefreshTokenRequest": {"type": "object", "required": ["refreshToken"], "properties": {
        "refreshToken": _string()}},
    "JwtPair": {"type": "object", "required": ["token", "refreshToken"], "properties": {
        "token": _string(description="Access token: send as 'X-Authorization: Bearer <token>'"),
        "refreshToken": _string(description="For POST /api/auth/token")}},
    "User": {"type": "object", "required": ["id", "tenantId", "email", "authority"], "properties": {
        "id": _entity_id("USER"), "tenantId": _entity_id("TENANT"), "customerId": _entity_id("CUSTOMER"),
        "email": _string(), "name": _string(), "authority": _string(enum=["TENANT_ADMIN"]),
        "firstName": _nullable(_string()), "lastName": _nullable(_string()),
        "additionalInfo": {"type": "object"}}},
    "ProvisionConfiguration": {"type": "object", "required": ["type"], "properties": {
        "type": _string(enum=PROVISION_TYPES),
        "provisionDeviceSecret": _nullable(_string(
            description="The secret; for X509_CERTIFICATE_CHAIN the CA certificate (PEM)")),
        "certificateRegExPattern": _nullable(_string()),
        "allowCreateNewDevicesByX509Certificate": _nullable({"type": "boolean"})}},
    "TransportConfiguration": {
        "type": "object",
        "description": "DEFAULT: JSON on the v1/devices/me topics. MQTT (SPEC §2.8): the topics (filters, with "
                       "MQTT wildcards) a device publishes telemetry and attributes on and subscribes to for "
                       "attribute updates, blank meaning the default; sendAckOnValidationException acknowledges "
                       "an invalid QoS 1 payload instead of closing the connection. Only JSON payloads; no "
                       "Sparkplug.",
        "properties": {
            "type": _string(enum=list(TRANSPORT_TYPES)),
            "deviceTelemetryTopic": _nullable(_string()), "deviceAttributesTopic": _nullable(_string()),
            "deviceAttributesSubscribeTopic": _nullable(_string()),
            "transportPayloadTypeConfiguration": _nullable({"type": "object", "properties": {
                "transportPayloadType": _string(enum=["JSON"])}}),
            "sparkplug": _nullable({"type": "boolean"}),
            "sendAckOnValidationException": _nullable({"type": "boolean"})}},
    "DeviceProfile": {"type": "object", "required": [
        "id", "createdTime", "name", "default", "type", "transportType", "provisionType", "profileData"],
        "properties": {
            "id": _entity_id("DEVICE_PROFILE"), "createdTime": {"type": "integer"}, "name": _string(),
            "description": _nullable(_string()), "default": {"type": "boolean"}, "type": _string(enum=["DEFAULT"]),
            "transportType": _string(enum=list(TRANSPORT_TYPES)), "provisionType": _string(enum=PROVISION_TYPES),
            "provisionDeviceKey": _nullable(_string(
                description="Globally unique; for X509_CERTIFICATE_CHAIN the SHA3 hash of the CA certificate")),
            "profileData": {"type": "object", "required": ["provisionConfiguration"], "properties": {
                "configuration": {"type": "object"}, "transportConfiguration": _ref("TransportConfiguration"),
                "provisionConfiguration": _ref("ProvisionConfiguration")}}}},
    "DeviceProfileRequest": {
        "type": "object", "required": ["name"],
        "description": "Without id: create; with the id of an existing profile: update it in place. "
                       "provisionType and profileData.provisionConfiguration.type must agree where both are "
                       "given. A key/secret profile's key and secret are generated when missing; an "
                       "X509_CERTIFICATE_CHAIN profile's key is computed. 'default' is read-only here.",
        "properties": {
            "id": _entity_id_input("DEVICE_PROFILE"), "name": NAME, "description": _nullable(_string()),
            "image": _nullable(_string()), "default": _nullable({"type": "boolean"}),
            "type": _nullable(_string(enum=["DEFAULT"])), "transportType": _nullable(_string(enum=list(TRANSPORT_TYPES))),
            "provisionType": _nullable(_string(enum=PROVISION_TYPES)),
            "provisionDeviceKey": _nullable(_string()),
            "profileData": _nullable({"type": "object", "properties": {
                "transportConfiguration": _nullable(_ref("TransportConfiguration")),
                "provisionConfiguration": _nullable({"type": "object", "properties": {
                    "type": _nullable(_string(enum=PROVISION_TYPES)),
                    "provisionDeviceSecret": _nullable(_string()),
                    "certificateRegExPattern": _nullable(_string()),
                    "allowCreateNewDevicesByX509Certificate": _nullable({"type": "boolean"})}})}})}},
    "DeviceProfileInfo": {"type": "object", "required": ["id", "tenantId", "name", "type", "transportType"],
                          "properties": {
                              "id": _entity_id("DEVICE_PROFILE"), "tenantId": _entity_id("TENANT"), "name": _string(),
                              "image": _nullable(_string()), "defaultDashboardId": _nullable({"type": "object"}),
                              "type": _string(enum=["DEFAULT"]), "transportType": _string(enum=list(TRANSPORT_TYPES))}},
    "Device": {"type": "object", "required": [
        "id", "createdTime", "name", "type", "deviceProfileId", "additionalInfo"], "properties": {
        "id": _entity_id("DEVICE"), "createdTime": {"type": "integer"}, "name": _string(),
        "type": _string(description="The device profile's name"), "label": _nullable(_string()),
        "deviceProfileId": _entity_id("DEVICE_PROFILE"), "additionalInfo": {"type": "object"}}},
    "DeviceRequest": {
        "type": "object", "required": ["name"],
        "description": "Without id: create; with the id of an existing device: update it in place (its "
                       "credentials stay). The profile is deviceProfileId, else the profile named 'type' "
                       "(created if missing), else the default profile.",
        "properties": {
            "id": _entity_id_input("DEVICE"), "name": {**NAME, "maxLength": 255},
            "type": _nullable(_string(pattern="^[^\\u0000]*$", description="Blank: the default profile")),
            "label": _nullable(_string()), "deviceProfileId": _entity_id_input("DEVICE_PROFILE"),
            "additionalInfo": _nullable({"type": "object", "description": "Free JSON, e.g. {\"gateway\": true}"})}},
    "CredentialsRequest": {
        "type": "object", "required": ["credentialsType"],
        "description": "ACCESS_TOKEN: credentialsId is the token. MQTT_BASIC: credentialsValue is a string "
                       "holding JSON {\"clientId\", \"userName\", \"password\"}. X509_CERTIFICATE: "
                       "credentialsValue is the PEM certificate. Other ids are derived as in ThingsBoard.",
        "properties": {
            "credentialsType": _string(enum=CREDENTIALS_TYPES), "credentialsId": _nullable(_string()),
            "credentialsValue": _nullable(_string())}},
    "SaveDeviceWithCredentialsRequest": {"type": "object", "required": ["device", "credentials"], "properties": {
        "device": _ref("DeviceRequest"), "credentials": _ref("CredentialsRequest")}},
    "DeviceCredentials": {"type": "object", "required": ["id", "deviceId", "credentialsType", "credentialsId"],
                          "properties": {
                              "id": {"type": "object", "required": ["id"], "properties": {"id": UUID}},
                              "deviceId": _entity_id("DEVICE"), "credentialsType": _string(enum=CREDENTIALS_TYPES),
                              "credentialsId": _string(), "credentialsValue": _nullable(_string())}},
    "DeviceCredentialsUpdate": {
        "type": "object", "required": ["deviceId", "credentialsType"],
        "description": "Must carry the id of the device's current credentials record (from GET "
                       "/api/device/{deviceId}/credentials), else 400 'Unable to update non-existent device "
                       "credentials!'. The device's live sessions end.",
        "allOf": [_ref("CredentialsRequest")],
        "properties": {
            "id": _nullable({"type": "object", "required": ["id"], "properties": {"id": UUID}}),
            "deviceId": {"type": "object", "required": ["id"], "properties": {
                "id": UUID, "entityType": _nullable(_string(enum=["DEVICE"]))}}}},
    "BulkImportRequest": {"type": "object", "required": ["file", "mapping"], "properties": {
        "file": _string(description="CSV text"),
        "mapping": {"type": "object", "required": ["columns"], "properties": {
            "columns": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["type"], "properties": {
                "type": _string(enum=[t.value for t in ColumnType]),
                "key": _nullable(_string(description="Attribute or time series key"))}}},
            "delimiter": _nullable(_string(minLength=1, maxLength=1)),
            "update": _nullable({"type": "boolean"}), "header": _nullable({"type": "boolean"})}}}},
    "BulkImportResult": {"type": "object", "required": ["created", "updated", "errors", "errorsList"], "properties": {
        "created": {"type": "integer"}, "updated": {"type": "integer"}, "errors": {"type": "integer"},
        "errorsList": {"type": "array", "items": _string()}}},
    "AttributeData": {"type": "object", "required": ["lastUpdateTs", "key", "value"], "properties": {
        "lastUpdateTs": {"type": "integer"}, "key": _string(), "value": ANY}},
    "Attributes": {"type": "object", "minProperties": 1, "additionalProperties": ANY,
                   "description": "Key/values, typed as devices' attributes are"},
    "Timeseries": {"type": "object", "additionalProperties": {"type": "array", "items": {
        "type": "object", "required": ["ts", "value"], "properties": {"ts": {"type": "integer"}, "value": ANY}}},
        "description": "Points by key: {\"temperature\": [{\"ts\": 1609459200000, \"value\": \"36.7\"}]}"},
    "PageDataDevice": _page("Device"),
    "PageDataDeviceProfile": _page("DeviceProfile"),
    "PageDataDeviceProfileInfo": _page("DeviceProfileInfo"),
}

ERROR_DESCRIPTIONS = {400: "Invalid request (ThingsBoard's message)", 401: "Missing, invalid or expired token",
                      404: "No such device or profile", 413: "Body larger than the limit",
                      429: "Too many failed logins from this address (Retry-After: seconds)",
                      503: "The database is unavailable; try again later (Retry-After: seconds)"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _path(name: str, schema: dict = UUID) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict, description: str = "", *, required: bool = False) -> dict:
    parameter = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _paging(sort_properties: dict, *, default_page_size: int | None = None) -> list[dict]:
    required, defaults = default_page_size is None, {} if default_page_size is None else {"page": 0,
                                                                                          "pageSize": default_page_size}
    return [
        _query("pageSize", {"type": "integer", "minimum": 1, "maximum": JAVA_INT_MAX,
                            **({"default": defaults["pageSize"]} if defaults else {})}, required=required),
        _query("page", {"type": "integer", "minimum": 0, "maximum": JAVA_INT_MAX,
                        **({"default": 0} if defaults else {})}, "0-based", required=required),
        _query("textSearch", _string(), "Case-insensitive part of the name"),
        _query("sortProperty", _string(enum=list(sort_properties)), "Default: name"),
        _query("sortOrder", _string(enum=["ASC", "DESC"]), "Default: ASC"),
    ]


KEYS = _query("keys", _string(), "Comma-separated keys; all keys when absent")
STRICT_TYPES = _query("useStrictDataTypes", {"type": "boolean"}, "false (default): values as text, as in ThingsBoard")
_TS = {"type": "integer", "format": "int64", "minimum": JAVA_LONG_MIN, "maximum": JAVA_LONG_MAX}


def _history_parameters(*, required: bool) -> list[dict]:
    """ThingsBoard's getTimeseries query; `required`: startTs and endTs (and keys) must be given."""
    return [
        _query("startTs", _TS, "Start of the range, ms since the epoch (included)", required=required),
        _query("endTs", _TS, "End of the range, ms since the epoch (excluded)", required=required),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": JAVA_INT_MAX, "default": 100},
               "At most this many points per key"),
        _query("orderBy", _string(enum=["ASC", "DESC"], default="DESC"), "By time; DESC: newest first"),
        _query("agg", _string(enum=["NONE"], default="NONE"), "Only NONE: raw points, no aggregation"),
    ]
DEVICE_ID, PROFILE_ID = _path("deviceId"), _path("deviceProfileId")


def _operation(operation_id: str, tag: str, summary: str, *, parameters=(), body: str | None = None,
               ok: dict | None = None, errors=(400, 401, 404), public: bool = False, description: str = "",
               database: bool = True) -> dict:
    """`database`: the operation reads or writes the database, and answers 503 while it is away."""
    responses = {"200": {"description": "OK", **({"content": _json(ok)} if ok is not None else {})}}
    for status in (*errors, *((413,) if body is not None else ()), *((503,) if database else ())):
        responses[str(status)] = {"description": ERROR_DESCRIPTIONS[status], "content": _json(_ref("Error"))}
    operation = {"operationId": operation_id, "tags": [tag], "summary": summary, "responses": responses}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(_ref(body)), "description": (
            f"At most {MAX_PUBLIC_BODY_BYTES if public else MAX_ATTRIBUTES_BYTES if body == 'Attributes' else MAX_BODY_BYTES}"
            " bytes")}
    if public:
        operation["security"] = []
    return operation


def _paths() -> dict:
    telemetry = "/api/plugins/telemetry"
    scope, writable_scope = _path("scope", _string(enum=SCOPES)), _path("scope", _string(enum=WRITABLE_SCOPES))
    save_attributes = {"parameters": [DEVICE_ID, writable_scope], "body": "Attributes",
                       "description": "SHARED_SCOPE values reach the device at once wherever it is connected "
                                      "(MQTT or HTTP long poll)."}
    delete_attributes = {"parameters": [DEVICE_ID, scope, {**KEYS, "required": True,
                                                           "description": "Comma-separated keys to delete"}]}
    return {
        "/api/auth/login": {"post": _operation(
            "login", "Auth", "Log in as an administrator (gatehouse admin add)", body="LoginRequest",
            ok=_ref("JwtPair"), errors=(400, 401, 429), public=True,
            description="An address with 10 failed logins (web UI ones included) is refused for 60 s "
                        "(gatehouse sidecar --max-failed-logins, --block-seconds).")},
        "/api/auth/token": {"post": _operation(
            "refreshToken", "Auth", "A new token pair for a refresh token", body="RefreshTokenRequest",
            ok=_ref("JwtPair"), errors=(400, 401), public=True)},
        "/api/auth/user": {"get": _operation(
            "getUser", "Auth", "The logged-in administrator", ok=_ref("User"), errors=(401,))},
        "/api/openapi.json": {"get": _operation(
            "getOpenApiDocument", "Meta", "This document", ok={"type": "object"}, errors=(), public=True,
            database=False)},
        "/api/deviceProfile": {"post": _operation(
            "saveDeviceProfile", "Device profiles", "Create or update a device profile", body="DeviceProfileRequest",
            ok=_ref("DeviceProfile"), description="A duplicate name or provision key is 400 ('Device profile with "
                                                  "such provision device key already exists!').")},
        "/api/deviceProfile/{deviceProfileId}": {
            "get": _operation("getDeviceProfileById", "Device profiles", "A device profile",
                              parameters=[PROFILE_ID], ok=_ref("DeviceProfile")),
            "delete": _operation("deleteDeviceProfile", "Device profiles", "Delete a device profile",
                                 parameters=[PROFILE_ID],
                                 description="The default profile and profiles that devices use cannot be deleted "
                                             "(400).")},
        "/api/deviceProfile/{deviceProfileId}/default": {"post": _operation(
            "setDefaultDeviceProfile", "Device profiles", "Make a profile the default",
            parameters=[PROFILE_ID], ok=_ref("DeviceProfile"))},
        "/api/deviceProfiles": {"get": _operation(
            "getDeviceProfiles", "Device profiles", "A page of device profiles", parameters=_paging(PROFILE_SORT),
            ok=_ref("PageDataDeviceProfile"), errors=(400, 401))},
        "/api/deviceProfileInfos": {"get": _operation(
            "getDeviceProfileInfos", "Device profiles", "A page of device profile infos",
            parameters=_paging(PROFILE_SORT), ok=_ref("PageDataDeviceProfileInfo"), errors=(400, 401))},
        "/api/device": {"post": _operation(
            "saveDevice", "Devices", "Create or update a device", body="DeviceRequest", ok=_ref("Device"),
            parameters=[_query("accessToken", _string(), "The new device's token (generated when absent)")],
            description="A duplicate name is 400 ('Device with such name already exists!').")},
        "/api/device-with-credentials": {"post": _operation(
            "saveDeviceWithCredentials", "Devices", "Create or update a device with its credentials",
            body="SaveDeviceWithCredentialsRequest", ok=_ref("Device"))},
        "/api/device/{deviceId}": {
            "get": _operation("getDeviceById", "Devices", "A device", parameters=[DEVICE_ID], ok=_ref("Device")),
            "delete": _operation("deleteDevice", "Devices", "Delete a device with its credentials and data",
                                 parameters=[DEVICE_ID])},
        "/api/device/{deviceId}/credentials": {"get": _operation(
            "getDeviceCredentialsByDeviceId", "Devices", "A device's credentials, secrets included",
            parameters=[DEVICE_ID], ok=_ref("DeviceCredentials"))},
        "/api/device/credentials": {"post": _operation(
            "updateDeviceCredentials", "Devices", "Replace a device's credentials", body="DeviceCredentialsUpdate",
            ok=_ref("DeviceCredentials"))},
        "/api/tenant/devices": {"get": _operation(
            "getTenantDevices", "Devices", "A device by name, or a page of devices",
            parameters=[_query("deviceName", _string(), "Exact name: answers that one device"),
                        *_paging(DEVICE_SORT, default_page_size=TENANT_DEVICES_PAGE_SIZE),
                        _query("type", _string(), "Only devices of the profile of this name")],
            ok={"anyOf": [_ref("Device"), _ref("PageDataDevice")]},
            description="With deviceName: that device (404 if none). Otherwise a page of devices.")},
        "/api/tenant/device": {"get": _operation(
            "getTenantDevice", "Devices", "A device by name (tb-rest-client 4.x)",
            parameters=[_query("deviceName", _string(), required=True)], ok=_ref("Device"))},
        "/api/device/bulk_import": {"post": _operation(
            "processDevicesBulkImport", "Devices", "Create or update devices from CSV", body="BulkImportRequest",
            ok=_ref("BulkImportResult"), errors=(400, 401),
            description="Rows that fail are reported in errorsList ('Line N: ...') and change nothing.")},
        f"{telemetry}/DEVICE/{{deviceId}}/values/attributes": {"get": _operation(
            "getAttributes", "Attributes", "Attributes of every scope", parameters=[DEVICE_ID, KEYS],
            ok={"type": "array", "items": _ref("AttributeData")})},
        f"{telemetry}/DEVICE/{{deviceId}}/values/attributes/{{scope}}": {"get": _operation(
            "getAttributesByScope", "Attributes", "Attributes of one scope", parameters=[DEVICE_ID, scope, KEYS],
            ok={"type": "array", "items": _ref("AttributeData")})},
        f"{telemetry}/DEVICE/{{deviceId}}/attributes/{{scope}}": {"post": _operation(
            "saveEntityAttributesV2", "Attributes", "Save server or shared attributes", **save_attributes)},
        f"{telemetry}/DEVICE/{{deviceId}}/{{scope}}": {
            "post": _operation("saveEntityAttributesV1", "Attributes", "Save server or shared attributes",
                               **save_attributes),
            "delete": _operation("deleteEntityAttributes", "Attributes", "Delete attributes", **delete_attributes)},
        f"{telemetry}/{{deviceId}}/{{scope}}": {
            "post": _operation("saveDeviceAttributes", "Attributes", "Save server or shared attributes",
                               **save_attributes),
            "delete": _operation("deleteDeviceAttributes", "Attributes", "Delete attributes", **delete_attributes)},
        f"{telemetry}/DEVICE/{{deviceId}}/values/timeseries": {"get": _operation(
            "getTimeseries", "Telemetry", "Latest telemetry values, or with startTs and endTs their history",
            parameters=[DEVICE_ID, KEYS, STRICT_TYPES, *_history_parameters(required=False)],
            ok=_ref("Timeseries"),
            description="Without startTs and endTs: each key's latest value (ThingsBoard's getLatestTimeseries; "
                        "limit, orderBy and agg are checked, not used). With both: the points with "
                        "startTs <= ts < endTs, at most limit per key (getTimeseries); keys is then required, "
                        "and keys without points in the range are left out. One of startTs and endTs alone "
                        "is a 400.")},
        f"{telemetry}/DEVICE/{{deviceId}}/values/timeseries/history": {"get": _operation(
            "getTimeseriesHistory", "Telemetry", "Telemetry history (ThingsBoard 4's path, tb-rest-client 4.x)",
            parameters=[DEVICE_ID, {**KEYS, "required": True, "description": "Comma-separated keys"}, STRICT_TYPES,
                        *_history_parameters(required=True)],
            ok=_ref("Timeseries"),
            description="The points with startTs <= ts < endTs, at most limit per key; keys without points in "
                        "the range are left out.")},
    }


@functools.cache
def _document() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Gatehouse admin REST API", "version": "1.0",
                 "description": "ThingsBoard-compatible operator API: device profiles, devices, credentials, "
                                "bulk import, attributes and telemetry. Log in with POST /api/auth/login and send the token "
                                "as 'X-Authorization: Bearer <token>'."},
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "X-Authorization": {"type": "apiKey", "in": "header", "name": "X-Authorization",
                                    "description": "'Bearer ' and the token (ThingsBoard's header)"},
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
        "security": [{"X-Authorization": []}, {"bearerAuth": []}],
    }


def document() -> dict:
    return copy.deepcopy(_document())
