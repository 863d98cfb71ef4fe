"""The admin REST API (SPEC §8) over real HTTP against a real `gatehouse sidecar` and `gatehouse
broker`: logins and tokens, device profiles, devices and their credentials, bulk import,
attributes and telemetry (latest values and history), with paho MQTT devices on the other side,
hostile input, and the OpenAPI document that describes it all.

Every answer the tests get is checked against that document (status documented, body valid
against the documented schema), so the document stays accurate for tools that rely on it.
All tests share one broker and sidecar; each works on its own uniquely named profiles and
devices. ThingsBoard's own REST client is exercised in test_thingsboard_sdk.py.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import jwt
import pytest
import requests
from openapi_spec_validator import validate as validate_openapi

from gatehouse.credentials import sha3_hash
from gatehouse.data_dir import DataDir
from gatehouse.models import AttributeScope
from gatehouse.pki import (
    DevelopmentPki,
    certificate_pem,
    create_ca,
    issue_device_certificate,
)
from gatehouse.registry import Registry
from sidecar.app import create_app
from sidecar.context import SidecarSettings

from .admin_api_client import ADMIN, ADMIN_PASSWORD, Answer, Api, login_from
from .conftest import NO_BLOCKING, broker_and_sidecar
from .devices import unique
from .mqtt_client import connect, next_on, wait_until

WHOLE_MODULE_ANSWERS = 50  # fewer: only some of this module's tests ran
ATTRIBUTES_TOPIC = "v1/devices/me/attributes"
NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"
JWT_EXPIRY_SECONDS = 9_000  # SidecarSettings.jwt_expiry_seconds, ThingsBoard's default


# --- fixtures and helpers ------------------------------------------------------------------------

@dataclass
class Gatehouse:
    broker: object
    sidecar: object

    @property
    def data_dir(self) -> DataDir | Path:
        return self.broker.data_dir

    def registry(self) -> Registry:
        return Registry.open(self.data_dir)


@pytest.fixture(scope="module")
def gh(tmp_path_factory, module_database_url):
    """The shared broker and sidecar, with one administrator, on each store in turn. Many tests
    here log in wrongly on purpose, so address blocking is pushed out of the way (the test of
    blocking has a sidecar of its own)."""
    root = tmp_path_factory.mktemp("admin-api")
    with broker_and_sidecar(root, *NO_BLOCKING, sidecar_options=NO_BLOCKING,
                            database_url=module_database_url) as (broker, sidecar):
        with Registry.open(broker.data_dir) as registry:
            registry.add_admin(ADMIN, ADMIN_PASSWORD)
        yield Gatehouse(broker, sidecar)


@pytest.fixture(scope="module")
def document(gh) -> dict:
    answer = Api(gh.sidecar.url).get("/api/openapi.json", token=None)
    assert answer.status == 200
    return answer.body


@pytest.fixture(scope="module")
def api(gh, document) -> Api:
    """The module's client. Once the module has run (enough answers to speak of), every
    documented operation must have answered 200 somewhere in it, each answer matching its
    schema (checked in Api.call); a partial run (-k) checks the answers it saw only."""
    client = Api(gh.sidecar.url, document)
    client.token = client.ok("POST", "/api/auth/login", {"username": ADMIN, "password": ADMIN_PASSWORD})["token"]
    yield client
    if len(client.checked) >= WHOLE_MODULE_ANSWERS:
        operations = {(method.upper(), template) for template, ops in document["paths"].items() for method in ops}
        answered_ok = {(method, template) for method, template, status in client.checked if status == 200}
        assert operations - answered_ok == set(), "documented operations no test answered with 200"


def signing_key(gh) -> bytes:
    with gh.registry() as registry:
        return registry.key.jwt_signing_key()


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def make_profile(api: Api, **fields) -> dict:
    return api.ok("POST", "/api/deviceProfile", {"name": unique("profile"), **fields})


def key_secret_profile(api: Api, strategy: str = "ALLOW_CREATE_NEW_DEVICES", **fields) -> dict:
    return make_profile(api, provisionType=strategy, provisionDeviceKey=unique("key"), profileData={
        "provisionConfiguration": {"type": strategy, "provisionDeviceSecret": unique("secret")}}, **fields)


def make_device(api: Api, token: str | None = None, **fields) -> dict:
    query = f"?accessToken={token}" if token else ""
    return api.ok("POST", f"/api/device{query}", {"name": unique("device"), **fields})


def device_id(device: dict) -> str:
    return device["id"]["id"]


def credentials_of(api: Api, device: dict) -> dict:
    return api.ok("GET", f"/api/device/{device_id(device)}/credentials")


def mqtt_login(gh, client_id: str, username: str | None = None, password: str | None = None, **kwargs):
    """A paho MQTT 3.1.1 session; retried briefly, as the broker picks up new devices by polling."""
    client, port = None, kwargs.pop("port", gh.broker.mqtt_port)

    def accepted() -> bool:
        nonlocal client
        if client is not None:
            client.close()
        client = connect(port, client_id, username, password, **kwargs)
        return client.return_code == 0

    assert wait_until(accepted, timeout=10, interval=0.2), f"login refused: {client.return_code}"
    return client


def expect_error(answer: Answer, status: int, message: str | None = None, error_code: int | None = None) -> None:
    assert answer.status == status, answer.text
    if message is not None:
        assert answer.message == message
    if error_code is not None:
        assert answer.body["errorCode"] == error_code


def device_count(gh) -> int:
    with gh.registry() as registry:
        return registry.count_devices()


# --- logins and tokens ---------------------------------------------------------------------------

def test_login_returns_a_thingsboard_jwt_pair(api):
    pair = api.ok("POST", "/api/auth/login", {"username": ADMIN, "password": ADMIN_PASSWORD}, token=None)
    access, refresh = claims_of(pair["token"]), claims_of(pair["refreshToken"])
    assert access["sub"] == ADMIN and access["scopes"] == ["TENANT_ADMIN"]
    assert access["exp"] - access["iat"] == JWT_EXPIRY_SECONDS
    assert {"userId", "tenantId", "customerId", "iss"} <= set(access)
    assert refresh["scopes"] == ["REFRESH_TOKEN"] and refresh["sub"] == ADMIN and refresh["exp"] > access["exp"]
    assert jwt.get_unverified_header(pair["token"])["alg"] == "HS256"


@pytest.mark.parametrize("username, password", [
    (ADMIN, "wrong-password"), ("nobody@gatehouse.test", ADMIN_PASSWORD), ("", ""), (ADMIN, ""),
    ("' OR '1'='1", "' OR '1'='1"),
], ids=["wrong password", "unknown user", "empty", "empty password", "sql injection"])
def test_login_with_wrong_credentials_is_401(api, username, password):
    answer = api.post("/api/auth/login", {"username": username, "password": password}, token=None)
    expect_error(answer, 401, "Invalid username or password", 10)


def test_login_from_an_address_that_failed_too_often_is_429_while_other_addresses_log_in(
        broker_factory, sidecar_factory):
    broker = broker_factory()
    sidecar = sidecar_factory(broker, "--max-failed-logins", "3", "--block-seconds", "60")
    with Registry.open(broker.data_dir) as registry:
        registry.add_admin(ADMIN, ADMIN_PASSWORD)
    assert login_from(sidecar, "127.0.0.1", ADMIN_PASSWORD)[0] == 200
    assert [login_from(sidecar, "127.0.0.1", "wrong")[0] for _ in range(3)] == [401, 401, 401]
    status, body, retry_after = login_from(sidecar, "127.0.0.1", ADMIN_PASSWORD)  # the right password, too late
    assert (status, body["errorCode"], body["message"]) == (
        429, 33, "Too many failed logins from this address; try again later")
    assert 0 < int(retry_after) <= 60
    assert login_from(sidecar, "127.0.0.2", ADMIN_PASSWORD)[0] == 200


def test_behind_a_trusted_proxy_the_forwarded_client_is_blocked_and_elsewhere_the_header_is_ignored(
        broker_factory, sidecar_factory):
    broker = broker_factory()
    with Registry.open(broker.data_dir) as registry:
        registry.add_admin(ADMIN, ADMIN_PASSWORD)
    limits = ("--max-failed-logins", "2", "--block-seconds", "60")
    behind_proxy = sidecar_factory(broker, *limits, "--trusted-proxy", "127.0.0.3")
    for _ in range(2):
        assert login_from(behind_proxy, "127.0.0.3", "wrong", forwarded_for="203.0.113.9")[0] == 401
    assert login_from(behind_proxy, "127.0.0.3", ADMIN_PASSWORD, forwarded_for="203.0.113.9")[0] == 429
    assert login_from(behind_proxy, "127.0.0.3", ADMIN_PASSWORD, forwarded_for="203.0.113.10")[0] == 200

    exposed = sidecar_factory(broker, *limits)  # no proxy: a client cannot choose its own address
    for forwarded_for in ("203.0.113.20", "203.0.113.21"):
        assert login_from(exposed, "127.0.0.4", "wrong", forwarded_for=forwarded_for)[0] == 401
    assert login_from(exposed, "127.0.0.4", ADMIN_PASSWORD, forwarded_for="203.0.113.22")[0] == 429


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'{"username": "a"}', b'{"username": 1, "password": "x"}'],
                         ids=["empty", "not json", "array", "no password", "number"])
def test_login_with_a_malformed_body_is_400(api, raw):
    expect_error(api.post("/api/auth/login", raw=raw, token=None), 400)


def protected_operations(document: dict) -> list[tuple[str, str]]:
    """(method, path) of every operation that needs a token, with placeholder parameters."""
    values = {"deviceId": NO_SUCH_ID, "deviceProfileId": NO_SUCH_ID, "scope": "SERVER_SCOPE"}
    return [(method.upper(), re.sub(r"\{([^/]+)\}", lambda m: values[m.group(1)], template))
            for template, operations in document["paths"].items()
            for method, operation in operations.items() if operation.get("security") != []]


def test_every_protected_route_needs_a_token(api, document):
    operations = protected_operations(document)
    assert len(operations) >= 24
    for method, path in operations:
        answer = api.call(method, path, {}, token=None)
        expect_error(answer, 401, "Authentication failed", 10)


def forged(key: bytes, **overrides) -> str:
    now = int(time.time())
    claims = {"sub": ADMIN, "scopes": ["TENANT_ADMIN"], "iss": "gatehouse", "iat": now, "exp": now + 600, **overrides}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, "HS256")


@pytest.mark.parametrize("make_header", [
    lambda key, api: {"X-Authorization": "Bearer not-a-jwt"},
    lambda key, api: {"X-Authorization": "Bearer " + forged(secrets.token_bytes(32))},
    lambda key, api: {"X-Authorization": "Bearer " + jwt.encode(claims_of(api.token), None, "none")},
    lambda key, api: {"X-Authorization": "Bearer " + forged(key, iss="thingsboard.io")},
    lambda key, api: {"X-Authorization": "Bearer " + forged(key, scopes=["REFRESH_TOKEN"])},
    lambda key, api: {"X-Authorization": "Bearer " + forged(key, scopes="TENANT_ADMIN")},
    lambda key, api: {"X-Authorization": "Bearer " + forged(key, exp=None)},
    lambda key, api: {"X-Authorization": "Bearer " + api.token[:-2] + ("AA" if api.token[-2:] != "AA" else "BB")},
    lambda key, api: {"X-Authorization": api.token},
    lambda key, api: {"Authorization": "Basic " + base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()},
], ids=["garbage", "other key", "alg none", "other issuer", "refresh scope", "scopes not a list", "no exp",
        "tampered signature", "no Bearer prefix", "basic auth"])
def test_bad_tokens_are_401(gh, api, make_header):
    answer = api.get("/api/auth/user", token=None, headers=make_header(signing_key(gh), api))
    expect_error(answer, 401, error_code=10)


def test_an_expired_token_is_401_with_thingsboards_expiry_code(gh, api):
    now = int(time.time())
    answer = api.get("/api/deviceProfiles?pageSize=1&page=0", token=forged(signing_key(gh), iat=now - 100, exp=now - 10))
    expect_error(answer, 401, "Token has expired", 11)


def test_an_authorization_bearer_header_works_like_x_authorization(api):
    user = api.ok("GET", "/api/auth/user", token=None, headers={"Authorization": f"Bearer {api.token}"})
    assert user["email"] == ADMIN


def test_auth_user_is_the_logged_in_administrator(api):
    user = api.ok("GET", "/api/auth/user")
    claims = claims_of(api.token)
    assert user["email"] == ADMIN and user["authority"] == "TENANT_ADMIN"
    assert user["id"]["id"] == claims["userId"] and user["tenantId"]["id"] == claims["tenantId"]


def test_a_refresh_token_gives_a_new_pair_and_nothing_else_does(gh, api):
    pair = api.ok("POST", "/api/auth/login", {"username": ADMIN, "password": ADMIN_PASSWORD}, token=None)
    renewed = api.ok("POST", "/api/auth/token", {"refreshToken": pair["refreshToken"]}, token=None)
    assert claims_of(renewed["token"])["scopes"] == ["TENANT_ADMIN"]
    assert api.ok("GET", "/api/auth/user", token=renewed["token"])["email"] == ADMIN

    expect_error(api.post("/api/auth/token", {"refreshToken": pair["token"]}, token=None), 401, error_code=10)
    now = int(time.time())
    expired = forged(signing_key(gh), scopes=["REFRESH_TOKEN"], iat=now - 100, exp=now - 1)
    expect_error(api.post("/api/auth/token", {"refreshToken": expired}, token=None), 401, error_code=11)
    ghost = forged(signing_key(gh), sub="deleted@gatehouse.test", scopes=["REFRESH_TOKEN"])
    expect_error(api.post("/api/auth/token", {"refreshToken": ghost}, token=None), 401, error_code=10)
    expect_error(api.post("/api/auth/token", {"refreshToken": 42}, token=None), 400)


# --- device profiles -----------------------------------------------------------------------------

def test_a_provisioning_profile_is_created_read_and_listed(api):
    name, key, secret = unique("Provisioning profile"), unique("key"), unique("secret")
    profile = api.ok("POST", "/api/deviceProfile", {
        "name": name, "description": "made over REST", "type": "DEFAULT", "transportType": "DEFAULT",
        "provisionType": "ALLOW_CREATE_NEW_DEVICES", "provisionDeviceKey": key,
        "profileData": {"configuration": {"type": "DEFAULT"}, "transportConfiguration": {"type": "DEFAULT"},
                        "provisionConfiguration": {"type": "ALLOW_CREATE_NEW_DEVICES", "provisionDeviceSecret": secret}},
        "defaultRuleChainId": None, "someFieldGatehouseIgnores": {"x": 1}})
    assert profile["id"]["entityType"] == "DEVICE_PROFILE" and profile["name"] == name
    assert (profile["provisionType"], profile["provisionDeviceKey"]) == ("ALLOW_CREATE_NEW_DEVICES", key)
    assert profile["profileData"]["provisionConfiguration"] == {"type": "ALLOW_CREATE_NEW_DEVICES",
                                                                "provisionDeviceSecret": secret}
    assert profile["default"] is False and profile["description"] == "made over REST"
    assert api.ok("GET", f"/api/deviceProfile/{profile['id']['id']}") == profile

    page = api.ok("GET", f"/api/deviceProfiles?pageSize=10&page=0&textSearch={name.split()[1]}")
    assert page == {"data": [profile], "totalPages": 1, "totalElements": 1, "hasNext": False}
    infos = api.ok("GET", f"/api/deviceProfileInfos?pageSize=10&page=0&textSearch={name.split()[1]}")
    assert [info["id"] for info in infos["data"]] == [profile["id"]]


def test_a_key_and_secret_profile_without_them_gets_generated_ones(api):
    profile = make_profile(api, provisionType="CHECK_PRE_PROVISIONED_DEVICES")
    assert len(profile["provisionDeviceKey"]) == 20
    assert len(profile["profileData"]["provisionConfiguration"]["provisionDeviceSecret"]) == 20


def test_a_duplicate_provision_key_or_name_is_400_and_stores_nothing(gh, api):
    first = key_secret_profile(api)
    answer = api.post("/api/deviceProfile", {"name": unique("profile"), "provisionType": "ALLOW_CREATE_NEW_DEVICES",
                                              "provisionDeviceKey": first["provisionDeviceKey"]})
    expect_error(answer, 400, "Device profile with such provision device key already exists!", 31)
    answer = api.post("/api/deviceProfile", {"name": first["name"]})
    expect_error(answer, 400, "Device profile with such name already exists!")
    with gh.registry() as registry:
        assert [p.name for p in registry.list_profiles(name_contains=first["name"])] == [first["name"]]


def test_a_profile_is_updated_in_place_by_its_id(api):
    profile = key_secret_profile(api)
    profile["name"] = unique("renamed")
    profile["profileData"]["provisionConfiguration"]["provisionDeviceSecret"] = "new-Secret-9"
    updated = api.ok("POST", "/api/deviceProfile", profile)
    assert updated["id"] == profile["id"] and updated["name"] == profile["name"]
    assert updated["createdTime"] == profile["createdTime"]
    assert updated["profileData"]["provisionConfiguration"]["provisionDeviceSecret"] == "new-Secret-9"
    assert api.ok("GET", f"/api/deviceProfile/{profile['id']['id']}") == updated

    disabled = api.ok("POST", "/api/deviceProfile", {**updated, "provisionType": "DISABLED", "profileData": {
        "provisionConfiguration": {"type": "DISABLED"}}})
    assert disabled["provisionDeviceKey"] is None and disabled["provisionType"] == "DISABLED"
    answer = api.post("/api/deviceProfile", {"id": {"entityType": "DEVICE_PROFILE", "id": NO_SUCH_ID}, "name": "x"})
    expect_error(answer, 404, f"Device profile with id [{NO_SUCH_ID}] is not found", 32)


def test_an_x509_chain_profile_is_keyed_by_its_ca_certificate(api):
    ca_pem = certificate_pem(create_ca(unique("Profile CA"))[0])
    profile = make_profile(api, provisionType="X509_CERTIFICATE_CHAIN", provisionDeviceKey="ignored", profileData={
        "provisionConfiguration": {"type": "X509_CERTIFICATE_CHAIN", "provisionDeviceSecret": ca_pem,
                                   "certificateRegExPattern": "([^@]+)", "allowCreateNewDevicesByX509Certificate": False}})
    assert profile["provisionDeviceKey"] == sha3_hash(ca_pem.split("-----END CERTIFICATE-----")[0])
    config = profile["profileData"]["provisionConfiguration"]
    assert (config["certificateRegExPattern"], config["allowCreateNewDevicesByX509Certificate"]) == ("([^@]+)", False)
    answer = api.post("/api/deviceProfile", {"name": unique("profile"), "provisionType": "X509_CERTIFICATE_CHAIN",
                                              "profileData": {"provisionConfiguration": {
                                                  "type": "X509_CERTIFICATE_CHAIN", "provisionDeviceSecret": ca_pem}}})
    expect_error(answer, 400, "Device profile with such certificate already exists!")
    answer = api.post("/api/deviceProfile", {"name": unique("profile"), "provisionType": "X509_CERTIFICATE_CHAIN",
                                              "profileData": {"provisionConfiguration": {
                                                  "provisionDeviceSecret": "-----BEGIN CERTIFICATE-----\nAAAA\n"
                                                                           "-----END CERTIFICATE-----"}}})
    expect_error(answer, 400)


@pytest.mark.parametrize("fields, message", [
    ({"provisionType": "ALLOW_CREATE_NEW_DEVICES", "profileData": {"provisionConfiguration": {
        "type": "CHECK_PRE_PROVISIONED_DEVICES"}}}, "provisionType and profileData.provisionConfiguration.type must agree"),
    ({"provisionType": "EVERYONE_WELCOME"}, None),
    ({"transportType": "COAP"}, "transportType 'COAP' is not supported: Gatehouse profiles are DEFAULT or MQTT"),
    ({"transportType": "MQTT", "profileData": {"transportConfiguration": {"type": "DEFAULT"}}},
     "transportType and profileData.transportConfiguration.type must agree"),
    ({"profileData": {"transportConfiguration": {"type": "MQTT", "transportPayloadTypeConfiguration": {
        "transportPayloadType": "PROTOBUF"}}}},
     "MQTT payload type 'PROTOBUF' is not supported: Gatehouse devices send JSON"),
    ({"profileData": {"transportConfiguration": {"type": "MQTT", "deviceTelemetryTopic": "a/#/b"}}},
     "The telemetry topic may have '#' only as its whole last level"),
    ({"type": "CUSTOM"}, None),
    ({"provisionType": "ALLOW_CREATE_NEW_DEVICES", "provisionDeviceKey": " padded "}, None),
    ({"name": ""}, "Device profile name should be specified!"),
    ({"name": None}, "Device profile name should be specified!"),
    ({"name": "nul\u0000byte"}, "Device profile name should not contain 0x00 symbol!"),
], ids=["types disagree", "unknown type", "coap transport", "transports disagree", "protobuf", "bad topic filter",
        "custom type", "padded key", "empty name", "null name", "nul in name"])
def test_profiles_gatehouse_cannot_store_as_asked_are_400(api, fields, message):
    answer = api.post("/api/deviceProfile", {"name": unique("profile"), **fields})
    expect_error(answer, 400, message)


def test_an_mqtt_transport_profile_keeps_its_topics_and_a_default_save_drops_them(api):
    configuration = {"type": "MQTT", "deviceTelemetryTopic": "sensors/+/data", "deviceAttributesTopic": "",
                     "deviceAttributesSubscribeTopic": "commands/#", "sendAckOnValidationException": True,
                     "transportPayloadTypeConfiguration": {"transportPayloadType": "JSON"}, "sparkplug": False}
    profile = make_profile(api, transportType="MQTT", profileData={"transportConfiguration": configuration})
    assert profile["transportType"] == "MQTT"
    assert profile["profileData"]["transportConfiguration"] == {**configuration,
                                                                "deviceAttributesTopic": "v1/devices/me/attributes"}
    profile_id = profile["id"]["id"]
    assert api.ok("GET", f"/api/deviceProfile/{profile_id}") == profile
    saved = api.ok("POST", "/api/deviceProfile", {**profile, "transportType": "DEFAULT",
                                                  "profileData": {"transportConfiguration": {"type": "DEFAULT"}}})
    assert (saved["transportType"], saved["profileData"]["transportConfiguration"]) == ("DEFAULT", {"type": "DEFAULT"})


def test_the_default_profile_moves_and_cannot_be_deleted(api):
    original = next(p for p in api.ok("GET", "/api/deviceProfiles?pageSize=1000&page=0")["data"] if p["default"])
    profile = make_profile(api)
    moved = api.ok("POST", f"/api/deviceProfile/{profile['id']['id']}/default")
    assert moved["default"] is True
    assert api.ok("GET", f"/api/deviceProfile/{original['id']['id']}")["default"] is False
    device = make_device(api)
    assert device["type"] == profile["name"]  # new devices land in the default profile
    expect_error(api.delete(f"/api/deviceProfile/{profile['id']['id']}"), 400,
                 "Deletion of Default Device Profile is prohibited!")
    assert api.ok("POST", f"/api/deviceProfile/{original['id']['id']}/default")["default"] is True
    expect_error(api.post(f"/api/deviceProfile/{NO_SUCH_ID}/default"), 404)


def test_a_profile_in_use_cannot_be_deleted_and_an_unused_one_can(api):
    used, unused = make_profile(api), make_profile(api)
    make_device(api, type=used["name"])
    expect_error(api.delete(f"/api/deviceProfile/{used['id']['id']}"), 400,
                 "The device profile referenced by the devices cannot be deleted!")
    assert api.delete(f"/api/deviceProfile/{unused['id']['id']}").status == 200
    expect_error(api.get(f"/api/deviceProfile/{unused['id']['id']}"), 404)
    expect_error(api.delete(f"/api/deviceProfile/{unused['id']['id']}"), 404)


def test_profiles_come_in_thingsboard_pages(api):
    tag = unique("paged")
    names = sorted(make_profile(api, name=f"{tag}-{i}")["name"] for i in range(3))
    first = api.ok("GET", f"/api/deviceProfiles?pageSize=2&page=0&textSearch={tag}")
    assert [p["name"] for p in first["data"]] == names[:2]
    assert (first["totalPages"], first["totalElements"], first["hasNext"]) == (2, 3, True)
    second = api.ok("GET", f"/api/deviceProfiles?pageSize=2&page=1&textSearch={tag}&sortProperty=name&sortOrder=ASC")
    assert [p["name"] for p in second["data"]] == names[2:] and second["hasNext"] is False
    backwards = api.ok("GET", f"/api/deviceProfiles?pageSize=5&page=0&textSearch={tag.upper()}&sortOrder=DESC")
    assert [p["name"] for p in backwards["data"]] == names[::-1]
    beyond = api.ok("GET", f"/api/deviceProfiles?pageSize=2&page=2147483647&textSearch={tag}")
    assert beyond["data"] == [] and beyond["totalElements"] == 3
    for query in ("pageSize=0&page=0", "pageSize=1&page=-1", "pageSize=x&page=0", "page=0", "pageSize=10",
                  "pageSize=2147483648&page=0", "pageSize=1&page=0&sortProperty=provisionDeviceKey",
                  "pageSize=1&page=0&sortOrder=sideways", "pageSize=1&page=0&sortOrder=",
                  "pageSize=1&page=0&sortOrder=desc", "pageSize=1&page=0&sortProperty="):
        expect_error(api.get(f"/api/deviceProfiles?{query}"), 400)


# --- devices -------------------------------------------------------------------------------------

def test_a_device_created_with_an_access_token_logs_in_over_mqtt(gh, api):
    token = unique("REST_TOKEN")
    device = make_device(api, token=token, label="kitchen", additionalInfo={"gateway": True, "description": "d"})
    assert device["id"]["entityType"] == "DEVICE" and device["type"] == "default"
    assert (device["label"], device["additionalInfo"]) == ("kitchen", {"gateway": True, "description": "d"})
    assert api.ok("GET", f"/api/device/{device_id(device)}") == device
    credentials = credentials_of(api, device)
    assert (credentials["credentialsType"], credentials["credentialsId"]) == ("ACCESS_TOKEN", token)
    assert credentials["credentialsValue"] is None and credentials["deviceId"] == device["id"]
    client = mqtt_login(gh, unique("cid"), token)
    assert client.publish("v1/devices/me/telemetry", '{"viaRest": true}')


def test_a_device_without_an_access_token_gets_a_generated_one(api):
    credentials = credentials_of(api, make_device(api))
    assert credentials["credentialsType"] == "ACCESS_TOKEN" and re.fullmatch(r"[A-Za-z0-9]{20}",
                                                                             credentials["credentialsId"])


def test_a_device_type_names_its_profile_which_is_created_when_missing(api):
    type_name = unique("thermostats")
    device = make_device(api, type=type_name)
    profile = api.ok("GET", f"/api/deviceProfile/{device['deviceProfileId']['id']}")
    assert device["type"] == profile["name"] == type_name and profile["provisionType"] == "DISABLED"
    by_id = make_device(api, deviceProfileId=device["deviceProfileId"], type="ignored-when-an-id-is-given")
    assert by_id["type"] == type_name
    answer = api.post("/api/device", {"name": unique("device"),
                                      "deviceProfileId": {"entityType": "DEVICE_PROFILE", "id": NO_SUCH_ID}})
    expect_error(answer, 400, "Device is referencing non existing device profile!")


def test_a_duplicate_device_name_is_400_and_changes_nothing(gh, api):
    device = make_device(api, token=unique("tok"))
    before = device_count(gh)
    answer = api.post(f"/api/device?accessToken={unique('tok')}", {"name": device["name"], "type": unique("new-type")})
    expect_error(answer, 400, "Device with such name already exists!", 31)
    assert device_count(gh) == before
    with gh.registry() as registry:
        assert registry.count_profiles(name_contains="new-type") == 0


def test_a_device_is_updated_in_place_and_keeps_its_credentials(api):
    token = unique("kept")
    device = make_device(api, token=token, label="before")
    updated = api.ok("POST", "/api/device?accessToken=ignored-on-update",
                     {**device, "name": unique("renamed"), "label": "after", "additionalInfo": {"gateway": True}})
    assert updated["id"] == device["id"] and updated["createdTime"] == device["createdTime"]
    assert (updated["label"], updated["additionalInfo"]) == ("after", {"gateway": True})
    assert credentials_of(api, updated)["credentialsId"] == token
    answer = api.post("/api/device", {"id": {"entityType": "DEVICE", "id": NO_SUCH_ID}, "name": unique("ghost")})
    expect_error(answer, 404, f"Device with id [{NO_SUCH_ID}] is not found")


def test_devices_by_name_and_in_pages(api):
    tag = unique("listed")
    profile = make_profile(api)
    devices = [make_device(api, name=f"{tag}-{i}", type=profile["name"] if i else None) for i in range(3)]
    for path in ("/api/tenant/devices", "/api/tenant/device"):
        assert api.ok("GET", f"{path}?deviceName={devices[1]['name']}") == devices[1]
        expect_error(api.get(f"{path}?deviceName={tag}"), 404, "Requested item wasn't found!")
    expect_error(api.get("/api/tenant/device"), 400)
    page = api.ok("GET", f"/api/tenant/devices?pageSize=2&page=0&textSearch={tag}")
    assert [d["name"] for d in page["data"]] == [devices[0]["name"], devices[1]["name"]]
    assert (page["totalPages"], page["totalElements"], page["hasNext"]) == (2, 3, True)
    typed = api.ok("GET", f"/api/tenant/devices?pageSize=10&page=0&type={profile['name']}&sortOrder=DESC")
    assert [d["name"] for d in typed["data"]] == [devices[2]["name"], devices[1]["name"]]
    by_profile = api.ok("GET", f"/api/tenant/devices?pageSize=10&page=0&textSearch={tag}&sortProperty=deviceProfileName")
    assert by_profile["data"][-1]["type"] == profile["name"] and by_profile["totalElements"] == 3
    first_ten = api.ok("GET", "/api/tenant/devices")  # no deviceName and no paging: the first page of 10
    assert len(first_ten["data"]) == min(10, first_ten["totalElements"]) and first_ten["totalElements"] >= 3
    expect_error(api.get("/api/tenant/devices?pageSize=0"), 400)


def test_a_device_with_mqtt_basic_credentials_logs_in_with_them(gh, api):
    client_id, user_name, password = unique("cid"), unique("user"), "basic-Pass-1"
    value = json.dumps({"clientId": client_id, "userName": user_name, "password": password})
    device = api.ok("POST", "/api/device-with-credentials", {
        "device": {"name": unique("basic"), "label": "basic"},
        "credentials": {"credentialsType": "MQTT_BASIC", "credentialsId": "replaced", "credentialsValue": value}})
    credentials = credentials_of(api, device)
    assert credentials["credentialsType"] == "MQTT_BASIC"
    assert credentials["credentialsId"] == sha3_hash(client_id, user_name)
    assert json.loads(credentials["credentialsValue"]) == {"clientId": client_id, "userName": user_name,
                                                           "password": password}
    client = mqtt_login(gh, client_id, user_name, password)
    assert client.publish("v1/devices/me/telemetry", '{"basic": 1}')
    refused = connect(gh.broker.mqtt_port, client_id, user_name, "wrong")
    assert refused.return_code == 5


def test_a_device_with_an_x509_certificate_logs_in_over_tls(gh, api, tmp_path):
    name = unique("x509")
    cert, key = issue_device_certificate(DevelopmentPki.in_directory(DataDir.of(gh.data_dir).pki), name, tmp_path)
    device = api.ok("POST", "/api/device-with-credentials", {
        "device": {"name": name}, "credentials": {"credentialsType": "X509_CERTIFICATE",
                                                  "credentialsValue": cert.read_text()}})
    credentials = credentials_of(api, device)
    body = "".join(line for line in cert.read_text().splitlines() if not line.startswith("-----"))
    der = base64.b64decode(body)
    assert credentials["credentialsValue"] == body
    assert credentials["credentialsId"] == hashlib.sha3_256(base64.b64encode(der)).hexdigest()
    client = mqtt_login(gh, unique("tls"), port=gh.broker.mqtts_port, ca_cert=gh.broker.ca_cert, cert=cert, key=key)
    assert client.publish("v1/devices/me/telemetry", '{"tls": true}')


@pytest.mark.parametrize("credentials, message", [
    ({"credentialsType": "MQTT_BASIC", "credentialsValue": '{"clientId": null, "userName": null}'},
     "Both mqtt client id and user name are empty!"),
    ({"credentialsType": "MQTT_BASIC", "credentialsValue": '{"clientId": "c", "password": "p"}'},
     "Password cannot be specified along with client id"),
    ({"credentialsType": "MQTT_BASIC", "credentialsValue": "{not json"}, None),
    ({"credentialsType": "MQTT_BASIC", "credentialsValue": {"userName": "an object, not a string"}}, None),
    ({"credentialsType": "ACCESS_TOKEN"}, "Device credentials id should be specified!"),
    ({"credentialsType": "ACCESS_TOKEN", "credentialsId": "tab\there"}, None),
    ({"credentialsType": "X509_CERTIFICATE", "credentialsValue": "not a certificate"}, None),
    ({"credentialsType": "LWM2M_CREDENTIALS", "credentialsId": "x"}, None),
    ({"credentialsId": "no-type"}, None),
], ids=["basic without ids", "client id with password", "basic not json", "basic value object", "token without id",
        "control character", "bad certificate", "lwm2m", "no type"])
def test_refused_credentials_leave_no_device_behind(gh, api, credentials, message):
    name = unique("refused")
    answer = api.post("/api/device-with-credentials", {"device": {"name": name, "type": unique("refused-type")},
                                                       "credentials": credentials})
    expect_error(answer, 400, message)
    with gh.registry() as registry:
        assert registry.find_device_by_name(name) is None
        assert registry.count_profiles(name_contains="refused-type") == 0


def test_saving_a_device_with_credentials_under_an_unknown_id_is_404_as_documented(gh, api):
    """Found by tests/test_fuzz_admin_api.py: the answer was right, the document left 404 out."""
    name = unique("no-such-id")
    answer = api.post("/api/device-with-credentials", {
        "device": {"name": name, "id": {"entityType": "DEVICE", "id": NO_SUCH_ID}},
        "credentials": {"credentialsType": "ACCESS_TOKEN", "credentialsId": unique("token")}})
    expect_error(answer, 404)
    with gh.registry() as registry:
        assert registry.find_device_by_name(name) is None


def test_credentials_of_another_device_are_refused(gh, api):
    token = unique("taken")
    make_device(api, token=token)
    name = unique("clash")
    for path, body in ((f"/api/device?accessToken={token}", {"name": name}),
                       ("/api/device-with-credentials", {"device": {"name": name}, "credentials": {
                           "credentialsType": "MQTT_BASIC", "credentialsValue": json.dumps({"userName": token})}})):
        expect_error(api.post(path, body), 400, "Device credentials are already assigned to another device!")
    with gh.registry() as registry:
        assert registry.find_device_by_name(name) is None


def test_credentials_update_needs_the_current_record_and_ends_the_mqtt_session(gh, api):
    old_token, new_token = unique("old"), unique("new")
    device = make_device(api, token=old_token)
    client = mqtt_login(gh, unique("cid"), old_token)
    current = credentials_of(api, device)
    change = {"deviceId": device["id"], "credentialsType": "ACCESS_TOKEN", "credentialsId": new_token}
    for record in (None, {"id": NO_SUCH_ID}):
        answer = api.post("/api/device/credentials", {**change, "id": record})
        expect_error(answer, 400, "Unable to update non-existent device credentials!")
    assert credentials_of(api, device) == current
    expect_error(api.post("/api/device/credentials", {**change, "id": current["id"],
                                                      "deviceId": {"entityType": "DEVICE", "id": NO_SUCH_ID}}), 404)

    updated = api.ok("POST", "/api/device/credentials", {**current, **change})
    assert (updated["id"], updated["credentialsId"]) == (current["id"], new_token)
    assert client.wait_disconnected(15), "the session with the old token was not closed"
    assert mqtt_login(gh, unique("cid"), new_token).return_code == 0
    assert connect(gh.broker.mqtt_port, unique("cid"), old_token).return_code == 5


def test_deleting_a_device_ends_its_session_and_its_data(gh, api):
    token = unique("doomed")
    device = make_device(api, token=token)
    api.ok("POST", f"/api/plugins/telemetry/DEVICE/{device_id(device)}/attributes/SERVER_SCOPE", {"kept": False})
    client = mqtt_login(gh, unique("cid"), token)
    assert api.delete(f"/api/device/{device_id(device)}").status == 200
    assert client.wait_disconnected(15), "the deleted device's session was not closed"
    for path in (f"/api/device/{device_id(device)}", f"/api/device/{device_id(device)}/credentials",
                 f"/api/plugins/telemetry/DEVICE/{device_id(device)}/values/attributes"):
        expect_error(api.get(path), 404, f"Device with id [{device_id(device)}] is not found", 32)
    expect_error(api.delete(f"/api/device/{device_id(device)}"), 404)
    assert connect(gh.broker.mqtt_port, unique("cid"), token).return_code == 5


# --- bulk import ---------------------------------------------------------------------------------

def test_bulk_import_takes_thingsboards_request_and_reports_bad_lines(gh, api):
    tag, token = unique("bulk"), unique("bulk-token")
    csv_text = (f"Name,Type,Token,Model\n{tag}-a,{tag}-type,{token},M1\n{tag}-b,{tag}-type,{token},M2\n"
                f"{tag}-c,,,M3\n")
    request = {"file": csv_text, "mapping": {
        "columns": [{"type": "NAME"}, {"type": "TYPE"}, {"type": "ACCESS_TOKEN"},
                    {"type": "SHARED_ATTRIBUTE", "key": "model"}],
        "delimiter": ",", "update": True, "header": True}}
    result = api.ok("POST", "/api/device/bulk_import", request)
    assert result == {"created": 2, "updated": 0, "errors": 1,
                      "errorsList": ["Line 3: Device credentials are already assigned to another device!"]}
    again = api.ok("POST", "/api/device/bulk_import", request)
    assert (again["created"], again["updated"], again["errors"]) == (0, 2, 1)
    device = api.ok("GET", f"/api/tenant/devices?deviceName={tag}-a")
    assert device["type"] == f"{tag}-type" and credentials_of(api, device)["credentialsId"] == token
    with gh.registry() as registry:
        assert registry.get_attributes(device_id(device), AttributeScope.SHARED) == {"model": "M1"}
        assert registry.find_device_by_name(f"{tag}-b") is None

    for bad in ({"file": csv_text}, {"file": 5, "mapping": request["mapping"]},
                {"file": csv_text, "mapping": {"columns": [{"type": "TOKEN"}]}},
                {"file": csv_text, "mapping": {"columns": [{"type": "ACCESS_TOKEN"}]}},
                {"file": csv_text, "mapping": {**request["mapping"], "delimiter": ";;"}}):
        expect_error(api.post("/api/device/bulk_import", bad), 400)


def test_a_bulk_import_updating_shared_attributes_pushes_them_to_connected_devices(gh, api):
    """As ThingsBoard does: a CSV that updates a fleet's shared attributes reaches the devices."""
    tag = unique("fleet")
    mqtt_token, http_token, quiet_token = unique("fleet-mqtt"), unique("fleet-http"), unique("fleet-quiet")

    def import_csv(rows: str, update: bool = True) -> dict:
        return api.ok("POST", "/api/device/bulk_import", {"file": "Name,Token,Firmware\n" + rows, "mapping": {
            "columns": [{"type": "NAME"}, {"type": "ACCESS_TOKEN"}, {"type": "SHARED_ATTRIBUTE", "key": "firmware"}],
            "delimiter": ",", "update": update, "header": True}})

    assert import_csv(f"{tag}-mqtt,{mqtt_token},v1\n{tag}-http,{http_token},v1\n{tag}-quiet,{quiet_token},\n")[
        "created"] == 3
    client = mqtt_login(gh, unique("cid"), mqtt_token)
    assert [code.value for code in client.subscribe(ATTRIBUTES_TOPIC, 1)] == [1]
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(requests.get, f"{gh.sidecar.url}/api/v1/{http_token}/attributes/updates?timeout=10000",
                           timeout=20)
        time.sleep(0.5)  # the poll is open
        result = import_csv(f"{tag}-mqtt,,v2\n{tag}-http,,v2\n{tag}-quiet,,\n")
        assert (result["created"], result["updated"], result["errors"]) == (0, 3, 0)
        assert json.loads(next_on(client, ATTRIBUTES_TOPIC).payload) == {"firmware": "v2"}
        assert poll.result().json() == {"firmware": "v2"}
    import_csv(f"{tag}-mqtt,,v3\n", update=False)  # existing devices keep their data: nothing to push
    assert client.no_message(1.0)


def test_bulk_import_of_text_the_csv_reader_cannot_read_is_400_not_500(api):
    """Found by tests/test_fuzz_admin_api.py (a lone CR in a cell was a 500 then; it is a line end now)."""
    mapping = {"columns": [{"type": "NAME"}], "delimiter": ",", "update": True, "header": False}
    too_long = "x" * 200_000  # over the csv module's field size limit
    expect_error(api.post("/api/device/bulk_import", {"file": too_long, "mapping": mapping}), 400)


# --- attributes and latest telemetry -------------------------------------------------------------

def attribute_values(items: list) -> dict:
    return {item["key"]: item["value"] for item in items}


def test_server_and_shared_attributes_on_every_thingsboard_path(api):
    device = make_device(api)
    base = f"/api/plugins/telemetry/DEVICE/{device_id(device)}"
    assert api.ok("POST", f"{base}/attributes/SERVER_SCOPE", {"floor": 3, "ratio": 0.5, "tags": ["a"]}) is None
    api.ok("POST", f"{base}/SHARED_SCOPE", {"targetTemp": 21.5, "mode": "eco"})
    api.ok("POST", f"/api/plugins/telemetry/{device_id(device)}/SERVER_SCOPE", {"installed": True, "count": "42"})

    server = api.ok("GET", f"{base}/values/attributes/SERVER_SCOPE")
    assert attribute_values(server) == {"floor": 3, "ratio": 0.5, "tags": ["a"], "installed": True, "count": 42}
    assert all(isinstance(item["lastUpdateTs"], int) for item in server)
    assert attribute_values(api.ok("GET", f"{base}/values/attributes/SHARED_SCOPE?keys=mode,missing")) == {"mode": "eco"}
    assert api.ok("GET", f"{base}/values/attributes/CLIENT_SCOPE") == []
    everything = api.ok("GET", f"{base}/values/attributes")
    assert [item["key"] for item in everything] == ["count", "floor", "installed", "ratio", "tags", "mode", "targetTemp"]
    assert attribute_values(api.ok("GET", f"{base}/values/attributes?keys=floor,%20targetTemp")) == {
        "floor": 3, "targetTemp": 21.5}

    api.ok("DELETE", f"{base}/SERVER_SCOPE?keys=floor,ratio")
    api.ok("DELETE", f"/api/plugins/telemetry/{device_id(device)}/SHARED_SCOPE?keys=mode")
    # The broker stores shared changes again as it relays them to the device, so wait for it.
    assert wait_until(lambda: set(attribute_values(api.ok("GET", f"{base}/values/attributes"))) == {
        "count", "installed", "tags", "targetTemp"})


@pytest.mark.parametrize("method, path, raw", [
    ("POST", "{base}/attributes/CLIENT_SCOPE", b'{"a": 1}'),
    ("POST", "{base}/attributes/ALL_SCOPE", b'{"a": 1}'),
    ("POST", "{base}/SERVER_SCOPE", b"[1, 2]"),
    ("POST", "{base}/SERVER_SCOPE", b"{}"),
    ("POST", "{base}/SERVER_SCOPE", b'{"a": null}'),
    ("POST", "{base}/SERVER_SCOPE", b"not json"),
    ("POST", "{base}/SERVER_SCOPE", b'{"": 1}'),
    ("GET", "{base}/values/attributes/NOT_A_SCOPE", None),
    ("DELETE", "{base}/SERVER_SCOPE", None),
    ("DELETE", "{base}/SERVER_SCOPE?keys=,,", None),
    ("GET", "{base}/values/timeseries?useStrictDataTypes=maybe", None),
], ids=["client scope", "unknown scope", "array", "empty object", "only nulls", "not json", "empty key",
        "read unknown scope", "delete without keys", "delete empty keys", "bad boolean"])
def test_attribute_requests_thingsboard_refuses_are_400(api, method, path, raw):
    base = f"/api/plugins/telemetry/DEVICE/{device_id(make_device(api))}"
    expect_error(api.call(method, path.format(base=base), raw=raw), 400)


def test_a_shared_attribute_written_over_rest_reaches_a_connected_mqtt_device(gh, api):
    token = unique("listener")
    device = make_device(api, token=token)
    client = mqtt_login(gh, unique("cid"), token)
    assert [code.value for code in client.subscribe(ATTRIBUTES_TOPIC, 1)] == [1]
    api.ok("POST", f"/api/plugins/telemetry/DEVICE/{device_id(device)}/SHARED_SCOPE", {"targetTemp": 23, "on": True})
    assert json.loads(next_on(client, ATTRIBUTES_TOPIC).payload) == {"targetTemp": 23, "on": True}
    api.ok("DELETE", f"/api/plugins/telemetry/DEVICE/{device_id(device)}/SHARED_SCOPE?keys=on")
    assert json.loads(next_on(client, ATTRIBUTES_TOPIC).payload) == {"deleted": ["on"]}
    api.ok("POST", f"/api/plugins/telemetry/DEVICE/{device_id(device)}/SERVER_SCOPE", {"serverOnly": 1})
    assert client.no_message(1.0)  # server attributes stay on the server

    request_topic = "v1/devices/me/attributes/request/1"
    assert client.publish(request_topic, '{"sharedKeys": "targetTemp"}')
    response = next_on(client, "v1/devices/me/attributes/response/1")
    assert json.loads(response.payload) == {"shared": {"targetTemp": 23}}


def test_latest_telemetry_is_text_unless_strict_types_are_asked_for(gh, api):
    token = unique("sender")
    device = make_device(api, token=token)
    client = mqtt_login(gh, unique("cid"), token)
    values = {"temp": 21.5, "count": 40, "on": True, "state": "ok", "cfg": {"a": [1, 2]}, "big": 1.5e10, "whole": 2.0}
    assert client.publish("v1/devices/me/telemetry", json.dumps(values))
    path = f"/api/plugins/telemetry/DEVICE/{device_id(device)}/values/timeseries"
    assert wait_until(lambda: len(api.ok("GET", path)) == len(values))

    latest = api.ok("GET", path)
    assert {key: points[0]["value"] for key, points in latest.items()} == {
        "temp": "21.5", "count": "40", "on": "true", "state": "ok", "cfg": '{"a":[1,2]}', "big": "1.5E10",
        "whole": "2.0"}
    strict = api.ok("GET", f"{path}?useStrictDataTypes=true&keys=temp,on,cfg,whole")
    assert {key: points[0]["value"] for key, points in strict.items()} == {
        "temp": 21.5, "on": True, "cfg": {"a": [1, 2]}, "whole": 2.0}
    assert all(isinstance(points[0]["ts"], int) for points in strict.values())
    assert api.ok("GET", f"/api/plugins/telemetry/DEVICE/{device_id(make_device(api))}/values/timeseries") == {}


T0 = 1_700_000_000_000  # the history tests' first point


def history_device(gh, api) -> tuple[dict, str]:
    """A device that sent ten points of `temp` (21.5, 22.5, ...) and `on` over MQTT, one a second
    from T0, with the path of its time series; once the broker has stored them all."""
    token = unique("historian")
    device = make_device(api, token=token)
    client = mqtt_login(gh, unique("cid"), token)
    records = [{"ts": T0 + n * 1_000, "values": {"temp": 21.5 + n, "on": n % 2 == 0}} for n in range(10)]
    assert client.publish("v1/devices/me/telemetry", json.dumps(records), qos=1)
    path = f"/api/plugins/telemetry/DEVICE/{device_id(device)}/values/timeseries"
    everything = f"{path}?keys=temp,on&startTs={T0}&endTs={T0 + 10_000}"
    assert wait_until(lambda: [len(points) for points in api.ok("GET", everything).values()] == [10, 10])
    return device, path


def timestamps(answer: dict) -> dict:
    return {key: [(point["ts"] - T0) // 1_000 for point in points] for key, points in answer.items()}


def test_telemetry_history_is_the_range_newest_first_and_limited_per_key(gh, api):
    device, path = history_device(gh, api)
    # startTs included, endTs excluded; DESC and at most 100 points per key by default.
    in_range = api.ok("GET", f"{path}?keys=temp&startTs={T0 + 2_000}&endTs={T0 + 5_000}")
    assert in_range == {"temp": [{"ts": T0 + n * 1_000, "value": str(21.5 + n)} for n in (4, 3, 2)]}
    assert timestamps(api.ok("GET", f"{path}?keys=temp,on&startTs={T0}&endTs={T0 + 60_000}&limit=2")) == {
        "temp": [9, 8], "on": [9, 8]}
    oldest = api.ok("GET", f"{path}?keys=on,temp&startTs=0&endTs={T0 + 60_000}&limit=3&orderBy=ASC"
                           "&useStrictDataTypes=true")
    assert list(oldest) == ["on", "temp"]  # the order asked for
    assert oldest == {"on": [{"ts": T0 + n * 1_000, "value": n % 2 == 0} for n in range(3)],
                      "temp": [{"ts": T0 + n * 1_000, "value": 21.5 + n} for n in range(3)]}
    assert api.ok("GET", f"{path}?keys=on&startTs={T0}&endTs={T0 + 1_000}") == {"on": [{"ts": T0, "value": "true"}]}
    # Keys without points in the range are left out, as ThingsBoard leaves them.
    assert timestamps(api.ok("GET", f"{path}?keys=nothing,temp&startTs={T0 + 9_000}&endTs={T0 + 60_000}")) == {
        "temp": [9]}
    assert api.ok("GET", f"{path}?keys=temp&startTs={T0 - 60_000}&endTs={T0}") == {}
    assert api.ok("GET", f"{path}?keys=temp&startTs={T0}&endTs={T0}") == {}
    # The same query on ThingsBoard 4's path; without a range, the latest values as before.
    assert api.ok("GET", f"{path}/history?keys=temp&startTs={T0 + 2_000}&endTs={T0 + 5_000}") == in_range
    assert api.ok("GET", f"{path}?keys=temp&useStrictDataTypes=true") == {"temp": [{"ts": T0 + 9_000, "value": 30.5}]}
    other = make_device(api)
    assert api.ok("GET", f"/api/plugins/telemetry/DEVICE/{device_id(other)}/values/timeseries?keys=temp"
                         f"&startTs=0&endTs={T0 + 60_000}") == {}


@pytest.mark.parametrize("query", [
    f"keys=temp&startTs={T0}", f"keys=temp&endTs={T0}", f"startTs={T0}&endTs={T0 + 1}", "keys=,&startTs=0&endTs=1",
    f"keys=temp&startTs={T0 + 1}&endTs={T0}", "keys=temp&startTs=0&endTs=1&agg=AVG",
    "keys=temp&startTs=0&endTs=1&agg=whatever", "keys=temp&startTs=0&endTs=1&limit=0",
    "keys=temp&startTs=0&endTs=1&limit=-5", "keys=temp&startTs=0&endTs=1&limit=many",
    "keys=temp&startTs=0&endTs=1&orderBy=SIDEWAYS", "keys=temp&startTs=yesterday&endTs=1",
    "keys=temp&startTs=1.5&endTs=2", f"keys=temp&startTs=0&endTs={2**63}", "keys=temp&startTs=0&endTs=1&useStrictDataTypes=maybe",
    "limit=0", "agg=SUM", "orderBy=up",
], ids=["no endTs", "no startTs", "no keys", "empty keys", "start after end", "aggregation", "unknown aggregation",
        "zero limit", "negative limit", "limit not a number", "unknown order", "startTs not a number",
        "startTs not an integer", "endTs past a long", "bad boolean", "latest with zero limit",
        "latest with aggregation", "latest with unknown order"])
def test_history_queries_gatehouse_cannot_answer_are_400(api, query):
    """Every parameter is checked, used or not: a bad one is never silently ignored."""
    base = f"/api/plugins/telemetry/DEVICE/{device_id(make_device(api))}/values/timeseries"
    expect_error(api.get(f"{base}?{query}"), 400)
    expect_error(api.get(f"{base}/history?{query}"), 400)


def test_history_on_thingsboard_4s_path_needs_its_range(api):
    base = f"/api/plugins/telemetry/DEVICE/{device_id(make_device(api))}/values/timeseries/history"
    expect_error(api.get(f"{base}?keys=temp"), 400, "startTs and endTs must both be given (ms since the epoch)")
    expect_error(api.get(f"{base}?keys=temp&startTs=0&endTs=1&agg=AVG"), 400,
                 "agg 'AVG' is not supported: Gatehouse answers raw points only (agg=NONE)")


def test_telemetry_is_read_with_an_administrators_access_token_only(gh, api):
    """Gatehouse's one role, the tenant administrator, reads every device's telemetry; there is
    no customer user to refuse with 403. Without a token, or with a refresh token, 401."""
    pair = api.ok("POST", "/api/auth/login", {"username": ADMIN, "password": ADMIN_PASSWORD}, token=None)
    base = f"/api/plugins/telemetry/DEVICE/{device_id(make_device(api))}/values/timeseries"
    for path in (f"{base}?keys=temp&startTs=0&endTs=1", f"{base}/history?keys=temp&startTs=0&endTs=1"):
        assert api.ok("GET", path, token=pair["token"]) == {}
        for token in (None, pair["refreshToken"], forged(signing_key(gh), scopes=["CUSTOMER_USER"])):
            expect_error(api.get(path, token=token), 401)


# --- hostile input -------------------------------------------------------------------------------

BODIES = {
    "empty": b"", "truncated": b'{"name": ', "array": b"[1]", "null": b"null", "string": b'"device"',
    "not utf-8": b"\xff\xfe{", "deeply nested": b"[" * 30_000 + b"]" * 30_000,
    "lone surrogate": b'{"name": "\\ud800", "device": {"name": "\\udfff"}, "credentials": {}, "file": "\\ud800"}',
}
POSTS = ["/api/deviceProfile", "/api/device", "/api/device-with-credentials", "/api/device/credentials",
         "/api/device/bulk_import", "/api/auth/token"]


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize("path", POSTS)
def test_bodies_that_are_not_the_expected_json_are_400(gh, api, path, body):
    before = device_count(gh)
    expect_error(api.post(path, raw=body), 400)
    assert device_count(gh) == before


@pytest.mark.parametrize("path, body", [
    ("/api/device", {"name": 5}),
    ("/api/device", {"name": "ok", "label": ["x"]}),
    ("/api/device", {"name": "ok", "type": {"name": "x"}}),
    ("/api/device", {"name": "ok", "additionalInfo": "gateway"}),
    ("/api/device", {"name": "ok", "deviceProfileId": "not-an-object"}),
    ("/api/device", {"name": "ok", "deviceProfileId": {"id": "not-a-uuid"}}),
    ("/api/device", {"name": "ok", "deviceProfileId": {"id": 42}}),
    ("/api/device", {"name": "ok", "deviceProfileId": {"id": NO_SUCH_ID, "entityType": "DEVICE"}}),
    ("/api/device", {"name": "ok", "id": {"id": NO_SUCH_ID, "entityType": "DEVICE_PROFILE"}}),
    ("/api/device", {"name": "x" * 256}),
    ("/api/device", {"name": "   "}),
    ("/api/deviceProfile", {"name": "ok", "description": 1}),
    ("/api/deviceProfile", {"name": "ok", "default": "yes"}),
    ("/api/deviceProfile", {"name": "ok", "profileData": []}),
    ("/api/deviceProfile", {"name": "ok", "profileData": {"provisionConfiguration": "x"}}),
    ("/api/deviceProfile", {"name": "ok", "profileData": {"provisionConfiguration": {
        "allowCreateNewDevicesByX509Certificate": "true"}}}),
    ("/api/device-with-credentials", {"device": "x", "credentials": {}}),
    ("/api/device-with-credentials", {"device": {"name": "ok"}}),
    ("/api/device/credentials", {"credentialsType": "ACCESS_TOKEN", "credentialsId": "t"}),
    ("/api/device/credentials", {"deviceId": {"id": NO_SUCH_ID}, "id": "flat", "credentialsType": "ACCESS_TOKEN"}),
], ids=lambda value: value if isinstance(value, str) else None)
def test_fields_of_the_wrong_type_are_400_and_store_nothing(gh, api, path, body):
    with gh.registry() as registry:
        before = (registry.count_devices(), registry.count_profiles())
    expect_error(api.post(path, body), 400)
    with gh.registry() as registry:
        assert (registry.count_devices(), registry.count_profiles()) == before


def test_ids_that_are_not_uuids_are_400_and_unknown_ones_404(api):
    for bad in ("not-a-uuid", "1", "' OR 1=1 --", NO_SUCH_ID + "0", NO_SUCH_ID.replace("-", ""), "%00"):
        for method, path in (("GET", "/api/device/{}"), ("DELETE", "/api/device/{}"),
                             ("GET", "/api/device/{}/credentials"), ("GET", "/api/deviceProfile/{}"),
                             ("DELETE", "/api/deviceProfile/{}"), ("POST", "/api/deviceProfile/{}/default"),
                             ("GET", "/api/plugins/telemetry/DEVICE/{}/values/attributes"),
                             ("GET", "/api/plugins/telemetry/DEVICE/{}/values/timeseries"),
                             ("GET", "/api/plugins/telemetry/DEVICE/{}/values/timeseries/history?keys=a&startTs=0&endTs=1"),
                             ("POST", "/api/plugins/telemetry/{}/SERVER_SCOPE")):
            answer = api.call(method, path.format(urllib.request.quote(bad)), {"a": 1})
            expect_error(answer, 400)
            assert answer.message.startswith("Invalid UUID string")
    for method, path in (("GET", "/api/device/{}"), ("GET", "/api/deviceProfile/{}"),
                         ("GET", "/api/plugins/telemetry/DEVICE/{}/values/attributes/SHARED_SCOPE"),
                         ("GET", "/api/plugins/telemetry/DEVICE/{}/values/timeseries?keys=a&startTs=0&endTs=1"),
                         ("GET", "/api/plugins/telemetry/DEVICE/{}/values/timeseries/history?keys=a&startTs=0&endTs=1"),
                         ("POST", "/api/plugins/telemetry/DEVICE/{}/attributes/SHARED_SCOPE"),
                         ("DELETE", "/api/plugins/telemetry/DEVICE/{}/SHARED_SCOPE?keys=a")):
        expect_error(api.call(method, path.format(NO_SUCH_ID), {"a": 1}), 404, error_code=32)


@pytest.mark.parametrize("name", ["温度计 🌡️ Zählер", "x'; DROP TABLE device; --", "100%_off", 'quote"back\\slash',
                                  "<script>alert(1)</script>", "tab\tand\nnewline"])
def test_names_with_unicode_and_sql_metacharacters_are_stored_literally(gh, api, name):
    name = f"{name} {unique('n')}"
    device = make_device(api, name=name, label=name, type=name)
    assert (device["name"], device["label"], device["type"]) == (name, name, name)
    found = api.ok("GET", "/api/tenant/devices?" + urllib.parse.urlencode({"deviceName": name}))
    assert found["id"] == device["id"]
    page = api.ok("GET", "/api/tenant/devices?" + urllib.parse.urlencode(
        {"pageSize": 10, "page": 0, "textSearch": name}))
    assert [d["id"] for d in page["data"]] == [device["id"]]
    with gh.registry() as registry:
        assert registry.get_device(device_id(device), by_id=True).name == name


def test_text_search_takes_like_wildcards_literally(api):
    tag = unique("wild")
    make_device(api, name=f"{tag}-plain")
    literal = make_device(api, name=f"{tag}-50%_off")
    for search in (f"{tag}-50%", f"{tag}-50%_", "-50%_off"):
        page = api.ok("GET", "/api/tenant/devices?" + urllib.parse.urlencode(
            {"pageSize": 10, "page": 0, "textSearch": search}))
        assert [d["id"] for d in page["data"]] == [literal["id"]], search


def test_oversized_bodies_are_413_before_they_are_parsed(api):
    padding = "x" * 70_000
    answer = api.post("/api/auth/login", {"username": ADMIN, "password": ADMIN_PASSWORD, "pad": padding}, token=None)
    expect_error(answer, 413, "Payload size exceeds the limit")
    expect_error(api.post("/api/auth/token", {"refreshToken": padding}, token=None), 413)
    base = f"/api/plugins/telemetry/DEVICE/{device_id(make_device(api))}"
    expect_error(api.post(f"{base}/SHARED_SCOPE", {"big": padding}), 413)  # more than one MQTT message carries
    assert api.ok("POST", f"{base}/SERVER_SCOPE", {"fits": padding[:60_000]}) is None


def test_unknown_routes_and_methods_are_json_errors(api):
    expect_error(api.get("/api/nothing-here"), 404)
    answer = api.call("PUT", "/api/device", {"name": "x"})
    expect_error(answer, 405)
    assert "POST" in answer.headers["Allow"]
    for path in ("/api/device/credentials", "/api/device/bulk_import"):  # not taken for a device id
        answer = api.get(path)
        expect_error(answer, 405)
        assert set(answer.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


def test_secrets_never_reach_the_sidecar_log(gh, api):
    client_id, password = unique("cid"), "logged-Never-77"
    api.ok("POST", "/api/device-with-credentials", {"device": {"name": unique("quiet")}, "credentials": {
        "credentialsType": "MQTT_BASIC", "credentialsValue": json.dumps({"clientId": client_id, "userName": "u",
                                                                        "password": password})}})
    api.post("/api/auth/login", {"username": ADMIN, "password": "typo-" + ADMIN_PASSWORD}, token=None)
    log = gh.sidecar.log()
    for secret in (ADMIN_PASSWORD, password, api.token, api.token.split(".")[2]):
        assert secret not in log


# --- the OpenAPI document --------------------------------------------------------------------------

def test_the_openapi_document_is_valid_public_and_describes_every_route(gh, api, document):
    assert api.ok("GET", "/api/openapi.json", token=None) == document
    validate_openapi(document)
    app = create_app(SidecarSettings(data_dir=gh.data_dir))
    routes = {(re.sub(r"<(?:\w+:)?([^>]+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint.startswith("admin_api.")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert routes == documented
    schemes = document["components"]["securitySchemes"]
    assert schemes["X-Authorization"] == {"type": "apiKey", "in": "header", "name": "X-Authorization",
                                          "description": schemes["X-Authorization"]["description"]}
    assert {op["operationId"] for ops in document["paths"].values() for op in ops.values() if op.get("security") == []} \
        == {"login", "refreshToken", "getOpenApiDocument"}

