"""Credentials: ThingsBoard's SHA3 hash, save-time rules and the MQTT connect-time lookup
order (SPEC §1.1–§1.4, §2.1, §9.2), through the registry on a real SQLite file."""
import base64
import datetime
import json

import pytest

from gatehouse import pki
from gatehouse.certificates import der_bytes
from gatehouse.credentials import (
    AccessToken,
    CredentialsError,
    MqttBasic,
    X509Certificate,
    certificate_body,
    certificate_thumbprint,
    credentials_from_json,
    generate_secret,
    sha3_hash,
)
from gatehouse.errors import ValidationError
from gatehouse.login import LoginOutcome
from gatehouse.models import CredentialsType

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.both_stores

ACCEPTED = LoginOutcome.ACCEPTED
BAD = LoginOutcome.BAD_USERNAME_OR_PASSWORD


# --- §1.1 hash ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, digest", [
    ("ThingsBoard", "281c7ba06d0ac2ff651fa968572f26a38c96225ea54644522837b54b9c6144f7"),
    ("test_clientId|test_username", "b9f1b0bf238dddae689babba0a210fe42bc97ddb07620b5a07d7208dd5528db2"),
    ("ClientId", "7eeb497805e40e2589d0841d6762851808e6da62de19642eb7a733ac555359a9"),
])
def test_sha3_hash_matches_thingsboard_vectors(text, digest):
    assert sha3_hash(text) == digest


def test_sha3_hash_joins_parts_and_skips_empty_ones():
    assert sha3_hash("test_clientId", "test_username") == sha3_hash("test_clientId|test_username")
    assert sha3_hash("", "user") == sha3_hash("user")
    assert sha3_hash(None, "user") == sha3_hash("user")


def test_sha3_hash_strips_certificate_armour_and_line_breaks_only():
    assert sha3_hash("-----BEGIN CERTIFICATE-----\nAB\r\nCD\n-----END CERTIFICATE-----") == sha3_hash("ABCD")
    assert sha3_hash("AB CD") != sha3_hash("ABCD")  # other whitespace is kept, as in ThingsBoard


def test_certificate_thumbprint_of_der_equals_hash_of_pem_text():
    cert, _ = pki.create_self_signed("thumb")
    assert certificate_thumbprint(der_bytes(cert)) == sha3_hash(pki.certificate_pem(cert))


# --- §1.2–§1.4 save-time rules -------------------------------------------------------------

def test_mqtt_basic_needs_a_client_id_or_a_user_name():
    with pytest.raises(CredentialsError, match="Both mqtt client id and user name are empty!"):
        MqttBasic("", None, "pw")


def test_mqtt_basic_refuses_a_password_with_only_a_client_id():
    with pytest.raises(CredentialsError, match="Password cannot be specified along with client id"):
        MqttBasic("client", None, "pw")


@pytest.mark.parametrize("client_id, user_name, expected", [
    (None, "user", "user"),
    ("client", None, sha3_hash("client")),
    ("client", "user", sha3_hash("client|user")),
])
def test_mqtt_basic_credentials_id_derivation(client_id, user_name, expected):
    assert MqttBasic(client_id, user_name, None).credentials_id == expected


def test_mqtt_basic_value_is_thingsboard_json_with_nulls():
    value = json.loads(MqttBasic("c", "u", None).credentials_value)
    assert value == {"clientId": "c", "userName": "u", "password": None}


@pytest.mark.parametrize("make", [
    lambda: AccessToken("tok\nen"),
    lambda: MqttBasic("cl\x00ient", "u", None),
    lambda: MqttBasic(None, "u", "pass\x07word"),
    lambda: AccessToken(""),
])
def test_control_characters_and_empty_ids_are_refused(make):
    with pytest.raises(CredentialsError):
        make()


def test_x509_credentials_keep_the_base64_body_and_hash_it():
    cert, _ = pki.create_self_signed("x509-body")
    pem = pki.certificate_pem(cert)
    creds = X509Certificate.from_text(pem)
    assert creds.body == certificate_body(pem).strip()
    assert base64.b64decode(creds.body) == der_bytes(cert)
    assert creds.credentials_id == sha3_hash(pem)


def test_credentials_from_rest_json():
    basic = credentials_from_json("MQTT_BASIC", "ignored", '{"clientId":"c","userName":"u","password":"p"}')
    assert basic == MqttBasic("c", "u", "p")
    assert credentials_from_json("ACCESS_TOKEN", "tok", None) == AccessToken("tok")
    for bad in [("MQTT_BASIC", None, "not json"), ("MQTT_BASIC", None, '{"clientId": 5}'), ("LWM2M", "x", None)]:
        with pytest.raises(CredentialsError):
            credentials_from_json(*bad)


@pytest.mark.parametrize("credentials_type, credentials_id, value, expected", [
    pytest.param("ACCESS_TOKEN", "tok", "a value", AccessToken("tok"), id="token: the id, any value ignored"),
    pytest.param("MQTT_BASIC", None, {"clientId": None, "userName": "u", "password": "p"}, MqttBasic(None, "u", "p"),
                 id="mqtt basic as an object"),
    pytest.param("MQTT_BASIC", "ignored", '{"userName": "u"}', MqttBasic(None, "u", None),
                 id="mqtt basic, missing parts are null"),
    pytest.param("X509_CERTIFICATE", "ignored", "-----BEGIN CERTIFICATE-----\nAB\r\nCD\n-----END CERTIFICATE-----\n",
                 X509Certificate("ABCD"), id="x509: the body, the id ignored"),
])
def test_credentials_from_thingsboards_json_shape(credentials_type, credentials_id, value, expected):
    assert credentials_from_json(credentials_type, credentials_id, value) == expected


@pytest.mark.parametrize("credentials_type, credentials_id, value, message", [
    pytest.param("ACCESS_TOKEN", None, None, "Device credentials id should be specified!", id="token without an id"),
    pytest.param("ACCESS_TOKEN", "to\tken", None, "Device credentials id should not contain control characters!",
                 id="token with a control character"),
    pytest.param("MQTT_BASIC", None, None, "Invalid credentials body for simple mqtt credentials!",
                 id="mqtt basic without a value"),
    pytest.param("MQTT_BASIC", None, '["c", "u"]', "Invalid credentials body for simple mqtt credentials!",
                 id="mqtt basic as a list"),
    pytest.param("MQTT_BASIC", None, {"userName": ["u"]}, "Invalid credentials body for simple mqtt credentials!",
                 id="mqtt basic part not text"),
    pytest.param("MQTT_BASIC", None, "{}", "Both mqtt client id and user name are empty!", id="mqtt basic empty"),
    pytest.param("MQTT_BASIC", None, '{"clientId": "c", "password": "p"}',
                 "Password cannot be specified along with client id", id="mqtt basic client id and password"),
    pytest.param("X509_CERTIFICATE", "id", None, "Device credentials value should be specified!",
                 id="x509 without a value"),
    pytest.param("X509_CERTIFICATE", None, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----",
                 "Device credentials value should be specified!", id="x509 armour only"),
    pytest.param("access_token", "tok", None, "Unsupported credentials type: 'access_token'", id="type in lower case"),
    pytest.param("LWM2M_CREDENTIALS", "x", None, "Unsupported credentials type: 'LWM2M_CREDENTIALS'", id="lwm2m"),
])
def test_credentials_thingsboard_refuses_to_save(credentials_type, credentials_id, value, message):
    with pytest.raises(CredentialsError) as refused:
        credentials_from_json(credentials_type, credentials_id, value)
    assert str(refused.value) == message


def test_generated_secrets_are_20_alphanumerics():
    values = {generate_secret() for _ in range(50)}
    assert len(values) == 50
    assert all(len(v) == 20 and v.isalnum() and v.isascii() for v in values)


def test_credentials_id_is_unique_across_types(registry):
    registry.create_device("token-device", credentials=AccessToken("abc"))
    with pytest.raises(ValidationError, match="already assigned to another device"):
        registry.create_device("basic-device", credentials=MqttBasic(None, "abc", "pw"))
    assert registry.find_device("basic-device") is None
    assert registry.count_devices() == 1


def test_replacing_credentials_with_a_taken_id_changes_nothing(registry):
    registry.create_device("a", credentials=AccessToken("token-a"))
    registry.create_device("b", credentials=AccessToken("token-b"))
    with pytest.raises(ValidationError):
        registry.set_credentials("b", AccessToken("token-a"))
    assert registry.get_credentials("b").credentials_id == "token-b"


def test_credentials_are_revealed_in_thingsboard_shape(registry):
    registry.create_device("basic", credentials=MqttBasic("c1", "u1", "p1"))
    creds = registry.get_credentials("basic")
    assert creds.credentials_type is CredentialsType.MQTT_BASIC
    assert creds.credentials_id == sha3_hash("c1|u1")
    assert json.loads(creds.credentials_value) == {"clientId": "c1", "userName": "u1", "password": "p1"}
    registry.create_device("user-only", credentials=MqttBasic(None, "u2", None))
    assert registry.get_credentials("user-only").credentials_id == "u2"


def test_credentials_update_needs_the_id_of_the_current_record(registry):
    device = registry.create_device("updated", credentials=AccessToken("token-before"))
    current = registry.get_credentials(device.id, by_id=True)
    for wrong in (None, "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(ValidationError, match="^Unable to update non-existent device credentials!$"):
            registry.update_credentials(device.id, wrong, AccessToken("token-after"))
    assert registry.get_credentials(device.id, by_id=True).credentials_id == "token-before"
    version = registry.credentials_versions([device.id])[device.id]

    updated = registry.update_credentials(device.id, current.id, MqttBasic("cid", "user", "pw"))
    assert (updated.id, updated.credentials_type) == (current.id, CredentialsType.MQTT_BASIC)
    assert registry.credentials_versions([device.id])[device.id] != version  # logins with the old ones end
    assert registry.mqtt_login("c", "token-before").outcome is BAD
    assert registry.mqtt_login("cid", "user", "pw").outcome is ACCEPTED


def test_rotation_issues_a_new_token_and_retires_the_old(registry):
    registry.create_device("rotating", credentials=AccessToken("old-token"))
    new = registry.set_credentials("rotating")
    assert new.credentials_type is CredentialsType.ACCESS_TOKEN and new.credentials_id != "old-token"
    assert registry.mqtt_login("c", "old-token").outcome is BAD
    assert registry.mqtt_login("c", new.credentials_id).outcome is ACCEPTED


# --- §1.3 connect-time lookup ------------------------------------------------------------

def login(registry, client_id, username=None, password=None):
    result = registry.mqtt_login(client_id, username, password)
    return result.outcome, result.device.name if result.device else None


def test_access_token_as_username_ignores_client_id_and_password(registry):
    registry.create_device("token-device", credentials=AccessToken("TOKEN1"))
    assert login(registry, "random-client", "TOKEN1", "random-password") == (ACCEPTED, "token-device")
    assert login(registry, "", "TOKEN1") == (ACCEPTED, "token-device")


def test_client_id_only_credentials(registry):
    registry.create_device("cid-device", credentials=MqttBasic("only-client", None, None))
    assert login(registry, "only-client") == (ACCEPTED, "cid-device")
    # Sending a username takes the username branch, which cannot find this credential.
    assert login(registry, "only-client", "someone")[0] is BAD


def test_client_id_and_username_win_over_an_equal_access_token(registry):
    registry.create_device("token-device", credentials=AccessToken("shared-name"))
    registry.create_device("basic-device", credentials=MqttBasic("client-x", "shared-name", None))
    assert login(registry, "client-x", "shared-name") == (ACCEPTED, "basic-device")
    assert login(registry, "other-client", "shared-name") == (ACCEPTED, "token-device")


def test_full_triple_and_no_fallback_on_password_mismatch(registry):
    registry.create_device("token-device", credentials=AccessToken("user-t"))
    registry.create_device("basic-device", credentials=MqttBasic("client-t", "user-t", "secret-t"))
    assert login(registry, "client-t", "user-t", "secret-t") == (ACCEPTED, "basic-device")
    # The right identity with a wrong password must not fall back to the token "user-t".
    assert login(registry, "client-t", "user-t", "wrong") == (BAD, None)
    assert login(registry, "client-t", "user-t") == (BAD, None)


def test_username_only_credentials_accept_any_client_id(registry):
    registry.create_device("user-device", credentials=MqttBasic(None, "user-u", "secret-u"))
    assert login(registry, "anything", "user-u", "secret-u") == (ACCEPTED, "user-device")
    assert login(registry, "", "user-u", "secret-u") == (ACCEPTED, "user-device")
    assert login(registry, "anything", "user-u", "wrong")[0] is BAD


def test_extra_password_is_ignored_when_none_is_stored(registry):
    registry.create_device("nopass", credentials=MqttBasic("client-n", "user-n", None))
    assert login(registry, "client-n", "user-n", "whatever") == (ACCEPTED, "nopass")


def test_hash_mismatch_falls_back_to_the_username(registry):
    registry.create_device("basic-device", credentials=MqttBasic("client-h", "user-h", None))
    # Wrong client id: sha3(client|user) misses, fallback finds nothing named "user-h".
    assert login(registry, "other", "user-h")[0] is BAD


@pytest.mark.parametrize("client_id, username, password, outcome", [
    ("client", "wrong-token", "pw", LoginOutcome.BAD_USERNAME_OR_PASSWORD),
    ("client", "wrong-token", None, LoginOutcome.BAD_USERNAME_OR_PASSWORD),
    ("client", None, "pw", LoginOutcome.BAD_USERNAME_OR_PASSWORD),
    ("unknown-client", None, None, LoginOutcome.CLIENT_ID_NOT_VALID),
    ("", None, None, LoginOutcome.NOT_AUTHORIZED),
    ("   ", None, None, LoginOutcome.NOT_AUTHORIZED),
])
def test_refusal_reasons_follow_what_was_supplied(registry, client_id, username, password, outcome):
    assert registry.mqtt_login(client_id, username, password).outcome is outcome


@pytest.mark.parametrize("client_id, username", [("provision", None), ("x", "provision"), ("provision", "provision")])
def test_provision_as_username_or_client_id_opens_a_provisioning_session(registry, client_id, username):
    assert registry.mqtt_login(client_id, username, "ignored").outcome is LoginOutcome.PROVISION_SESSION


def test_http_and_coap_tokens_must_be_access_tokens(registry):
    registry.create_device("token-device", credentials=AccessToken("HTTP-TOKEN"))
    registry.create_device("user-device", credentials=MqttBasic(None, "looks-like-token", None))
    assert registry.token_login("HTTP-TOKEN").name == "token-device"
    assert registry.token_login("looks-like-token") is None
    assert registry.token_login("") is None


def test_internal_error_is_server_unavailable(registry):
    registry.store.close()
    assert registry.mqtt_login("c", "u", "p").outcome is LoginOutcome.SERVER_UNAVAILABLE


# --- X.509 logins ---------------------------------------------------------------------

def test_certificate_login_ignores_username_and_password(registry):
    cert, _ = pki.create_self_signed("sensor-cert")
    registry.create_device("x509-device", credentials=X509Certificate.from_text(pki.certificate_pem(cert)))
    result = registry.mqtt_login("any", "TOKEN-IGNORED", "ignored", cert_der=der_bytes(cert))
    assert (result.outcome, result.device.name) == (ACCEPTED, "x509-device")


def test_unknown_expired_or_garbage_certificates_are_not_authorized(registry):
    unknown, _ = pki.create_self_signed("stranger")
    ca, ca_key = pki.create_ca("Expiring CA")
    expired, _ = pki.issue_certificate(ca, ca_key, "old", days=1,
                                       not_before=datetime.datetime.now(datetime.timezone.utc)
                                       - datetime.timedelta(days=10))
    registry.create_device("old-device", credentials=X509Certificate.from_text(pki.certificate_pem(expired)))
    for der in (der_bytes(unknown), der_bytes(expired), b"not a certificate"):
        assert registry.mqtt_login("c", None, None, cert_der=der).outcome is LoginOutcome.NOT_AUTHORIZED


def test_a_token_device_cannot_log_in_with_a_certificate_whose_hash_is_its_token(registry):
    cert, _ = pki.create_self_signed("clash")
    registry.create_device("token-device", credentials=AccessToken(certificate_thumbprint(der_bytes(cert))))
    assert registry.mqtt_login("c", cert_der=der_bytes(cert)).outcome is LoginOutcome.NOT_AUTHORIZED


# --- application accounts -----------------------------------------------------------------

def test_application_accounts_log_in_with_their_generated_password(registry):
    username, password = registry.create_application("dashboard")
    assert username == "gatehouse-app:dashboard" and len(password) == 20
    result = registry.mqtt_login("any-client", username, password)
    assert (result.outcome, result.application, result.device) == (LoginOutcome.APPLICATION, "dashboard", None)
    assert registry.mqtt_login("any-client", username, "wrong").outcome is BAD
    assert registry.list_applications() == ["dashboard"]
    registry.delete_application("dashboard")
    assert registry.mqtt_login("any-client", username, password).outcome is BAD


def test_device_credentials_cannot_impersonate_an_application(registry):
    with pytest.raises(ValidationError):
        registry.create_device("sneaky", credentials=MqttBasic(None, "gatehouse-app:dashboard", "pw"))
    with pytest.raises(ValidationError):
        registry.create_application("bad name")
    registry.create_application("dashboard")
    with pytest.raises(ValidationError, match="already exists"):
        registry.create_application("dashboard")
