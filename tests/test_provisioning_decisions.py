"""Provisioning decisions (gatehouse.provisioning), as pure functions with no registry: ThingsBoard's
strategy table for key/secret requests (SPEC §3.4), X.509 certificate-chain provisioning (§1.4.2)
and the answers a device gets (§3.3). What the registry does with a decision (store, audit) is in
test_provisioning.py."""
from __future__ import annotations

import pytest

from gatehouse.credentials import AccessToken, MqttBasic, X509Certificate
from gatehouse.models import CredentialsType, DeviceProfile, ProvisionType
from gatehouse.provisioning import (
    CreateDevice,
    ExistingDevice,
    Failure,
    MarkProvisioned,
    NotFound,
    ProvisionRequest,
    ProvisionRequestError,
    ProvisionResult,
    ProvisionStatus,
    UseExisting,
    decide_provision,
    decide_x509_chain,
    device_name_from_common_name,
)

from .provisioning_answers import FAILURE_JSON, NOT_FOUND_JSON

ALLOW = ProvisionType.ALLOW_CREATE_NEW_DEVICES
CHECK = ProvisionType.CHECK_PRE_PROVISIONED_DEVICES
CHAIN = ProvisionType.X509_CERTIFICATE_CHAIN
DISABLED = ProvisionType.DISABLED
SUCCESS, NOT_FOUND, FAILURE = ProvisionStatus.SUCCESS, ProvisionStatus.NOT_FOUND, ProvisionStatus.FAILURE
# The answer the registry gives for each kind of decision (SPEC §3.3); a raised
# ProvisionRequestError gets none: the transport's error path.
STATUS = {NotFound: NOT_FOUND, Failure: FAILURE, CreateDevice: SUCCESS, MarkProvisioned: SUCCESS, UseExisting: SUCCESS}
RAISES = "Invalid provision strategy type!"

KEY, SECRET, NAME = "provisionKey", "provision-Secret", "sensor-1"
PROFILE_ID, OTHER_PROFILE_ID, DEVICE_ID = "profile-1", "profile-2", "device-1"
TOKEN = AccessToken("device-token")
NOT_SECRET_MATCH = NotFound("provision secret does not match")
NAME_TAKEN = Failure("a device with this name already exists", DEVICE_ID)
NOT_PRE_PROVISIONED = Failure("no pre-provisioned device with this name in the profile")


def profile(strategy: ProvisionType, *, secret: str | None = SECRET, regex: str | None = None,
            allow_create: bool | None = None) -> DeviceProfile:
    return DeviceProfile(id=PROFILE_ID, created_time=0, name="profile", description=None, is_default=False,
                         provision_type=strategy, provision_device_key=KEY, provision_device_secret=secret,
                         certificate_regex=regex, allow_create_by_x509=allow_create)


def device(profile_id: str = PROFILE_ID, state: str | None = None,
           credentials_type: CredentialsType = CredentialsType.ACCESS_TOKEN) -> ExistingDevice:
    return ExistingDevice(id=DEVICE_ID, name=NAME, profile_id=profile_id, credentials_type=credentials_type,
                          provision_state=state)


def request(secret: str = SECRET, *, key: str = KEY, name: str = NAME, **fields) -> ProvisionRequest:
    return ProvisionRequest(provision_device_key=key, provision_device_secret=secret, device_name=name, **fields)


def decided(request: ProvisionRequest, profile: DeviceProfile | None, existing: ExistingDevice | None):
    """(decision, status); (RAISES, None) when ThingsBoard's answer is an exception, no status."""
    try:
        decision = decide_provision(request, profile, existing)
    except ProvisionRequestError as e:
        assert str(e) == RAISES
        return RAISES, None
    return decision, STATUS[type(decision)]


# --- §3.4 the strategy table ------------------------------------------------------------------
# Every strategy × device absent or present (in the profile, not provisioned yet) × secret right
# or wrong × credentials in the request or not.

WRONG = "wrong-Secret"
WITH_TOKEN = {"token": TOKEN.token}
# (decision, ThingsBoard's status)
CREATED = CreateDevice(NAME, None), SUCCESS  # with a generated token
CREATED_WITH_TOKEN = CreateDevice(NAME, TOKEN), SUCCESS
MARKED = MarkProvisioned(DEVICE_ID), SUCCESS
SECRET_REFUSED = NOT_SECRET_MATCH, NOT_FOUND
TAKEN = NAME_TAKEN, FAILURE
NOT_THERE = NOT_PRE_PROVISIONED, FAILURE
ERROR = RAISES, None


@pytest.mark.parametrize("strategy, existing, secret, fields, expected", [
    pytest.param(ALLOW, None, SECRET, {}, CREATED, id="allow, absent, right secret, no credentials"),
    pytest.param(ALLOW, None, SECRET, WITH_TOKEN, CREATED_WITH_TOKEN, id="allow, absent, right secret, token"),
    pytest.param(ALLOW, None, WRONG, {}, SECRET_REFUSED, id="allow, absent, wrong secret, no credentials"),
    pytest.param(ALLOW, None, WRONG, WITH_TOKEN, SECRET_REFUSED, id="allow, absent, wrong secret, token"),
    pytest.param(ALLOW, device(), SECRET, {}, TAKEN, id="allow, present, right secret, no credentials"),
    pytest.param(ALLOW, device(), SECRET, WITH_TOKEN, TAKEN, id="allow, present, right secret, token"),
    pytest.param(ALLOW, device(), WRONG, {}, SECRET_REFUSED, id="allow, present, wrong secret, no credentials"),
    pytest.param(ALLOW, device(), WRONG, WITH_TOKEN, SECRET_REFUSED, id="allow, present, wrong secret, token"),

    pytest.param(CHECK, None, SECRET, {}, NOT_THERE, id="check, absent, right secret, no credentials"),
    pytest.param(CHECK, None, SECRET, WITH_TOKEN, NOT_THERE, id="check, absent, right secret, token"),
    pytest.param(CHECK, None, WRONG, {}, SECRET_REFUSED, id="check, absent, wrong secret, no credentials"),
    pytest.param(CHECK, None, WRONG, WITH_TOKEN, SECRET_REFUSED, id="check, absent, wrong secret, token"),
    pytest.param(CHECK, device(), SECRET, {}, MARKED,
                 id="check, present, right secret, no credentials"),
    pytest.param(CHECK, device(), SECRET, WITH_TOKEN, MARKED,  # the request's are ignored
                 id="check, present, right secret, token"),
    pytest.param(CHECK, device(), WRONG, {}, SECRET_REFUSED, id="check, present, wrong secret, no credentials"),
    pytest.param(CHECK, device(), WRONG, WITH_TOKEN, SECRET_REFUSED, id="check, present, wrong secret, token"),

    pytest.param(DISABLED, None, SECRET, {}, SECRET_REFUSED, id="disabled, absent, right secret, no credentials"),
    pytest.param(DISABLED, None, SECRET, WITH_TOKEN, SECRET_REFUSED, id="disabled, absent, right secret, token"),
    pytest.param(DISABLED, None, WRONG, {}, SECRET_REFUSED, id="disabled, absent, wrong secret, no credentials"),
    pytest.param(DISABLED, None, WRONG, WITH_TOKEN, SECRET_REFUSED, id="disabled, absent, wrong secret, token"),
    pytest.param(DISABLED, device(), SECRET, {}, SECRET_REFUSED, id="disabled, present, right secret, no credentials"),
    pytest.param(DISABLED, device(), SECRET, WITH_TOKEN, SECRET_REFUSED, id="disabled, present, right secret, token"),
    pytest.param(DISABLED, device(), WRONG, {}, SECRET_REFUSED, id="disabled, present, wrong secret, no credentials"),
    pytest.param(DISABLED, device(), WRONG, WITH_TOKEN, SECRET_REFUSED, id="disabled, present, wrong secret, token"),

    pytest.param(CHAIN, None, SECRET, {}, ERROR, id="x509 chain, absent, right secret, no credentials"),
    pytest.param(CHAIN, None, SECRET, WITH_TOKEN, ERROR, id="x509 chain, absent, right secret, token"),
    pytest.param(CHAIN, None, WRONG, {}, ERROR, id="x509 chain, absent, wrong secret, no credentials"),
    pytest.param(CHAIN, None, WRONG, WITH_TOKEN, ERROR, id="x509 chain, absent, wrong secret, token"),
    pytest.param(CHAIN, device(), SECRET, {}, ERROR, id="x509 chain, present, right secret, no credentials"),
    pytest.param(CHAIN, device(), SECRET, WITH_TOKEN, ERROR, id="x509 chain, present, right secret, token"),
    pytest.param(CHAIN, device(), WRONG, {}, ERROR, id="x509 chain, present, wrong secret, no credentials"),
    pytest.param(CHAIN, device(), WRONG, WITH_TOKEN, ERROR, id="x509 chain, present, wrong secret, token"),
])
def test_each_strategy_decides_by_device_secret_and_credentials(strategy, existing, secret, fields, expected):
    assert decided(request(secret, **fields), profile(strategy), existing) == expected


@pytest.mark.parametrize("strategy, existing, expected, status", [
    pytest.param(ALLOW, device(OTHER_PROFILE_ID), NAME_TAKEN, FAILURE, id="allow, the name is taken in another profile"),
    pytest.param(CHECK, device(state="provisioned"), Failure("device provision state is 'provisioned'", DEVICE_ID),
                 FAILURE, id="check, provisioned already"),
    pytest.param(CHECK, device(state="non-valid"), Failure("device provision state is 'non-valid'", DEVICE_ID),
                 FAILURE, id="check, any other provision state"),
    pytest.param(CHECK, device(OTHER_PROFILE_ID), NOT_PRE_PROVISIONED, FAILURE, id="check, in another profile"),
])
def test_a_taken_name_or_a_provision_state_fails_with_the_right_secret(strategy, existing, expected, status):
    assert decided(request(), profile(strategy), existing) == (expected, status)


@pytest.mark.parametrize("given, chosen_profile, expected", [
    pytest.param(request(key="", name="  "), None, Failure("device name is blank"),
                 id="a blank name fails before an empty key is looked at"),
    pytest.param(request(name=" \t"), profile(ALLOW), Failure("device name is blank"), id="blank name"),
    pytest.param(request(key=""), profile(ALLOW), NotFound("provision key or secret is empty"), id="empty key"),
    pytest.param(request(""), profile(ALLOW), NotFound("provision key or secret is empty"), id="empty secret"),
    pytest.param(request(), None, NotFound("no profile has this provision key"), id="unknown key"),
    pytest.param(request(), profile(ALLOW, secret=None), NotFound("no profile has this provision key"),
                 id="profile without a secret"),
    pytest.param(request(key="", name="  "), profile(CHAIN), Failure("device name is blank"),
                 id="x509 chain profile, blank name"),
    pytest.param(request(""), profile(CHAIN), NotFound("provision key or secret is empty"),
                 id="x509 chain profile, empty secret"),
])
def test_the_pre_checks_come_first_in_thingsboards_order(given, chosen_profile, expected):
    assert decided(given, chosen_profile, None) == (expected, FAILURE if isinstance(expected, Failure) else NOT_FOUND)


# --- what ALLOW_CREATE_NEW_DEVICES creates ---------------------------------------------------------

CERT_BODY = "MIIBszCCAVmgAwIBAgIUQ"  # provisioning stores what the device sent, unparsed


@pytest.mark.parametrize("fields, expected", [
    pytest.param({"name": "  padded  "}, CreateDevice("padded", None), id="the name trimmed"),
    pytest.param({"name": ""}, CreateDevice(None, None), id="no name: a generated one"),
    pytest.param({"gateway": True}, CreateDevice(NAME, None, gateway=True), id="a gateway"),
    pytest.param({"token": "tok"}, CreateDevice(NAME, AccessToken("tok")), id="a token"),
    pytest.param({"credentials_type": CredentialsType.MQTT_BASIC, "client_id": "c", "username": "u", "password": "p"},
                 CreateDevice(NAME, MqttBasic("c", "u", "p")), id="mqtt basic triple"),
    pytest.param({"credentials_type": CredentialsType.MQTT_BASIC, "username": "u"},
                 CreateDevice(NAME, MqttBasic("", "u", "")), id="mqtt basic user name only"),
    pytest.param({"credentials_type": CredentialsType.MQTT_BASIC}, CreateDevice(NAME, None),
                 id="mqtt basic without its fields: a generated token"),
    pytest.param({"credentials_type": CredentialsType.X509_CERTIFICATE, "hash": "testHash"},
                 CreateDevice(NAME, X509Certificate("testHash")), id="x509 hash as thingsboard's test sends it"),
    pytest.param({"credentials_type": CredentialsType.X509_CERTIFICATE,
                  "hash": f"-----BEGIN CERTIFICATE-----\n{CERT_BODY}\n-----END CERTIFICATE-----\n"},
                 CreateDevice(NAME, X509Certificate(CERT_BODY)), id="x509 pem: its body"),
    pytest.param({"credentials_type": CredentialsType.ACCESS_TOKEN, "password": "p"},
                 Failure("invalid credentials: Device credentials id should be specified!"),
                 id="token type with only a password: no token"),
    pytest.param({"credentials_type": CredentialsType.MQTT_BASIC, "client_id": "c", "password": "p"},
                 Failure("invalid credentials: Password cannot be specified along with client id"),
                 id="mqtt basic client id and password without a user name"),
    pytest.param({"credentials_type": CredentialsType.MQTT_BASIC, "password": "p"},
                 Failure("invalid credentials: Both mqtt client id and user name are empty!"),
                 id="mqtt basic password only"),
    pytest.param({"token": "tok\nen"},
                 Failure("invalid credentials: Device credentials id should not contain control characters!"),
                 id="a token with a control character"),
    pytest.param({"credentials_type": CredentialsType.X509_CERTIFICATE, "hash": "  "},
                 Failure("invalid credentials: Device credentials value should be specified!"),
                 id="x509 blank hash"),
])
def test_allow_create_builds_the_device_from_the_request(fields, expected):
    assert decided(request(**fields), profile(ALLOW), None) == (expected, FAILURE if isinstance(expected, Failure)
                                                                 else SUCCESS)


def test_check_pre_provisioned_ignores_even_invalid_credentials_in_the_request():
    invalid = request(credentials_type=CredentialsType.MQTT_BASIC, client_id="c", password="p")
    assert decide_provision(invalid, profile(CHECK), device()) == MarkProvisioned(DEVICE_ID)


# --- §1.4.2 X.509 certificate-chain provisioning -----------------------------------------------------

LEAF = X509Certificate("leaf-certificate-body")


@pytest.mark.parametrize("common_name, pattern, expected", [
    ("DeviceA.company.com", r"(.*)\.company.com", "DeviceA"),
    ("region.DeviceA.220423@company.com", r"\D+\.(.*)\.\d+@company.com", "DeviceA"),
    ("deviceCertificate@X509ProvisionStrategy", r"([^@]+)", "deviceCertificate"),
    ("prefix-DeviceA.company.com-suffix", r"(\w+)\.company", "DeviceA"),
    ("DeviceA.other.org", r"(.*)\.company.com", None),
    ("DeviceA", r"Device", None),
    ("DeviceA", r"(Device", None),
    ("DeviceA", r"()DeviceA", None),
    (None, r"(.*)", None),
    ("", r"(.*)", None),
], ids=["thingsboard example 1", "thingsboard example 2", "thingsboard example 3", "a search, not a full match",
        "no match", "no group 1", "bad regex", "empty group 1", "no cn", "empty cn"])
def test_the_device_name_is_group_1_of_the_cn_regex(common_name, pattern, expected):
    assert device_name_from_common_name(common_name, pattern) == expected


def chain(allow_create: bool, regex: str = r"(.*)\.example") -> DeviceProfile:
    return profile(CHAIN, secret="-----BEGIN CERTIFICATE-----", regex=regex, allow_create=allow_create)


X509_IN_PROFILE = device(credentials_type=CredentialsType.X509_CERTIFICATE)
TOKEN_IN_PROFILE = device()
IN_OTHER_PROFILE = device(OTHER_PROFILE_ID, credentials_type=CredentialsType.X509_CERTIFICATE)


@pytest.mark.parametrize("allow_create, existing, expected", [
    pytest.param(True, None, CreateDevice(NAME, LEAF), id="create allowed, no such device"),
    pytest.param(False, None, Failure("creating devices by certificate is not allowed by the profile"),
                 id="create not allowed, no such device"),
    pytest.param(True, X509_IN_PROFILE, UseExisting(DEVICE_ID, LEAF), id="x509 device in the profile: rotated"),
    pytest.param(False, X509_IN_PROFILE, UseExisting(DEVICE_ID, LEAF),
                 id="x509 device in the profile, create not allowed: rotated"),
    pytest.param(True, TOKEN_IN_PROFILE, UseExisting(DEVICE_ID, None), id="token device in the profile: kept"),
    pytest.param(True, IN_OTHER_PROFILE, Failure("a device with this name exists in another profile", DEVICE_ID),
                 id="create allowed, the name is taken in another profile"),
    pytest.param(False, IN_OTHER_PROFILE, Failure("creating devices by certificate is not allowed by the profile"),
                 id="create not allowed, the name is taken in another profile"),
])
def test_chain_provisioning_decides_by_the_device_of_the_cn(allow_create, existing, expected):
    looked_up = []

    def existing_by_name(name):
        looked_up.append(name)
        return existing

    decision = decide_x509_chain(chain(allow_create), f"{NAME}.example", LEAF, existing_by_name)
    assert (decision, STATUS[type(decision)]) == (expected, FAILURE if isinstance(expected, Failure) else SUCCESS)
    assert looked_up == [NAME]


@pytest.mark.parametrize("common_name, regex", [
    ("sensor-1.other.org", r"(.*)\.example"), (None, r"(.*)"), ("sensor-1.example", "("), ("sensor-1.example", ""),
], ids=["cn does not match", "no cn", "bad regex", "no regex"])
def test_chain_provisioning_fails_without_a_device_name_and_looks_nothing_up(common_name, regex):
    looked_up = []
    decision = decide_x509_chain(chain(True, regex), common_name, LEAF, looked_up.append)
    assert decision == Failure("certificate CN does not match the profile's regex")
    assert looked_up == []


# --- §3.3 the answers --------------------------------------------------------------------------------

@pytest.mark.parametrize("result, answer", [
    pytest.param(ProvisionResult(NOT_FOUND, reason="no profile has this provision key"), NOT_FOUND_JSON,
                 id="not found: no reason given"),
    pytest.param(ProvisionResult(FAILURE, device_id=DEVICE_ID, reason="a device with this name already exists"),
                 FAILURE_JSON, id="failure: neither reason nor device given"),
    pytest.param(ProvisionResult(SUCCESS, CredentialsType.ACCESS_TOKEN, "tok", DEVICE_ID, NAME),
                 {"credentialsValue": "tok", "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS",
                  "deviceId": DEVICE_ID, "deviceName": NAME}, id="success with a token"),
    pytest.param(ProvisionResult(SUCCESS, CredentialsType.MQTT_BASIC,
                                 {"clientId": "c", "userName": "u", "password": "p"}, DEVICE_ID, NAME),
                 {"credentialsValue": {"clientId": "c", "userName": "u", "password": "p"},
                  "credentialsType": "MQTT_BASIC", "status": "SUCCESS", "deviceId": DEVICE_ID, "deviceName": NAME},
                 id="success with mqtt basic: an object"),
    pytest.param(ProvisionResult(SUCCESS, CredentialsType.X509_CERTIFICATE, CERT_BODY, DEVICE_ID, NAME),
                 {"credentialsValue": CERT_BODY, "credentialsType": "X509_CERTIFICATE", "status": "SUCCESS",
                  "deviceId": DEVICE_ID, "deviceName": NAME}, id="success with a certificate"),
])
def test_answers_are_thingsboards_json_in_its_key_order(result, answer):
    assert list(result.to_json().items()) == list(answer.items())
